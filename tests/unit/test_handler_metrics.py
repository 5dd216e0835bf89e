"""Per-model handler metrics through TorchServe's own metrics cache: the lines its frontend
parses into the Prometheus series of `/metrics`."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl

from modelserver.serving.batch import BatchTimes
from modelserver.serving.handler_metrics import PHASE_METRICS, STATUSES_FROM_START, report_batch, report_start
from tests.helpers import FakeContext, crystal_handler
from tests.unit.test_crystal_handler import GOOD

METRIC_LINE = re.compile(
    r"\[METRICS\](?P<name>\w+)\.(?P<unit>\w+):(?P<value>[\d.e-]+)\|#(?P<dims>[^|]*)\|#type:(?P<type>\w+)"
)


def metrics_cache(model_name: str) -> MetricsCacheYamlImpl:
    """The cache a TorchServe 0.12 worker hands its handler as `context.metrics`."""
    import ts  # pylint: disable=import-outside-toplevel

    cache = MetricsCacheYamlImpl(config_file_path=str(Path(ts.__file__).parent / "configs" / "metrics.yaml"))
    cache.initialize_cache()
    cache.model_name = model_name
    cache.set_request_ids({0: "r0"})
    return cache


def sent(caplog: pytest.LogCaptureFixture) -> list[dict[str, str]]:
    """Every metric line the worker would have logged for the frontend (which reads its
    stdout line by line), and only one record, so one write, for all of them."""
    records = [r.getMessage() for r in caplog.records if "[METRICS]" in r.getMessage()]
    assert len(records) == 1, records
    lines = [m.groupdict() for line in records[0].splitlines() if (m := METRIC_LINE.match(line))]
    for line in lines:
        line["labels"] = dict(pair.split(":", 1) for pair in line.pop("dims").split(","))  # type: ignore[assignment]
    return lines


def test_a_batch_reports_statuses_sizes_and_phase_times(
    crystal_model_dirs: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    handler, context = crystal_handler(crystal_model_dirs["sklearn"], "sklearn")
    context.metrics = metrics_cache(context.model_name)  # type: ignore[attr-defined]
    batch = [{"body": GOOD}, {"body": b"{}"}, {"body": GOOD}, {"body": b"not json"}, {"body": GOOD}]
    with caplog.at_level(logging.INFO):
        handler.handle(batch, context)
    lines = sent(caplog)
    model = {"ModelName": "crystal_sklearn", "Level": "Model"}
    requests = {
        line["labels"]["Status"]: float(line["value"]) for line in lines if line["name"] == "ModelRequests"
    }
    assert requests == {"200": 3.0, "422": 2.0}
    counters = {line["name"]: float(line["value"]) for line in lines if line["type"] == "COUNTER"}
    assert counters["HandlerBatches"] == 1.0 and counters["HandlerBatchRequests"] == 5.0
    phases = {line["name"]: line for line in lines if line["type"] == "HISTOGRAM"}
    assert set(phases) == set(PHASE_METRICS.values())
    for line in [*phases.values(), *(x for x in lines if x["name"] == "ModelRequests")]:
        assert model.items() <= line["labels"].items()
    assert all(line["unit"] == "Seconds" and 0 < float(line["value"]) < 5 for line in phases.values())


def test_phase_times_add_up_within_one_batch_only() -> None:
    times = BatchTimes()
    with times.phase("inference"):
        pass
    with times.phase("inference"):
        pass
    assert times.inference > 0 and times.preprocess == 0 and times.postprocess == 0
    assert BatchTimes().inference == 0  # a new batch starts from zero: nothing is kept


def test_no_metrics_cache_sends_nothing(crystal_model_dirs: dict[str, Path]) -> None:
    handler, context = crystal_handler(crystal_model_dirs["pytorch"], "pytorch")
    assert not hasattr(context, "metrics") and isinstance(context, FakeContext)
    assert len(handler.handle([{"body": GOOD}], context)) == 1
    report_batch(None, [200], BatchTimes())  # a worker without a cache (tests, other servers)


class BrokenMetrics:
    """A metrics cache that fails on every call."""

    def add_counter(self, *_args: object, **_kwargs: object) -> None:
        """Fails."""
        raise ValueError("metrics cache is broken")

    add_time = add_counter


def test_a_failing_metrics_cache_never_fails_the_batch(
    crystal_model_dirs: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    handler, context = crystal_handler(crystal_model_dirs["pytorch"], "pytorch")
    context.metrics = BrokenMetrics()  # type: ignore[attr-defined]
    [answer] = handler.handle([{"body": GOOD}], context)
    assert json.loads(answer)["prediction"]
    assert "could not record the batch's metrics" in caplog.text


def test_the_request_counters_exist_at_zero_from_the_workers_start(caplog: pytest.LogCaptureFixture) -> None:
    """An alert on the rate of 5xx answers sees the first ones: the series is there before them."""
    with caplog.at_level(logging.INFO):
        report_start(metrics_cache("crystal_sklearn"))
    lines = sent(caplog)
    requests = {
        line["labels"]["Status"]: float(line["value"]) for line in lines if line["name"] == "ModelRequests"
    }
    assert requests == {str(status): 0.0 for status in STATUSES_FROM_START}
    assert {line["name"] for line in lines} == {"ModelRequests", "HandlerBatches", "HandlerBatchRequests"}
    assert all(float(line["value"]) == 0 and line["type"] == "COUNTER" for line in lines)

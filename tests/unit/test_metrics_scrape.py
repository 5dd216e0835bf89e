"""The /metrics merge and the management CLI, without a running stack."""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelserver.launcher import manage
from modelserver.launcher.pages import metrics
from modelserver.launcher.pages.metrics import MetricsScraper, http_source

TORCHSERVE_TEXT = (
    "# HELP ts_inference_requests_total Torchserve prometheus counter metric with unit: Count\n"
    "# TYPE ts_inference_requests_total counter\n"
    'ts_inference_requests_total{model_name="crystal_sklearn",model_version="default",hostname="vm",} 6.0\n'
)


def families(text: bytes) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Parsed as Prometheus parses it: name -> [(labels, value)]."""
    return {
        family.name: [(sample.labels, sample.value) for sample in family.samples]
        for family in text_string_to_metric_families(text.decode())
    }


def unreachable() -> str:
    """A source whose server is down."""
    raise OSError("connection refused")


def test_every_source_is_merged_with_readiness() -> None:
    scraper = MetricsScraper(
        sources={"torchserve": lambda: TORCHSERVE_TEXT, "envoy": lambda: "envoy_up 1"},
        model_statuses=lambda: {"crystal_sklearn": "ready", "fill_mask": "no ready worker (UNLOADING)"},
    )
    parsed = families(scraper.scrape())
    assert parsed["ts_inference_requests"] == [
        ({"model_name": "crystal_sklearn", "model_version": "default", "hostname": "vm"}, 6.0)
    ]
    assert parsed["envoy_up"] == [({}, 1.0)]  # a source without a final newline is still whole
    assert sorted(parsed["modelserver_model_ready"], key=str) == [
        ({"model_name": "crystal_sklearn"}, 1.0),
        ({"model_name": "fill_mask"}, 0.0),
    ]
    assert {s[0]["source"]: s[1] for s in parsed["modelserver_scrape_up"]} == {"torchserve": 1, "envoy": 1}


def test_a_source_that_is_down_is_reported_not_fatal() -> None:
    scraper = MetricsScraper(
        sources={"torchserve": unreachable, "envoy": http_source("http://127.0.0.1:9/none", timeout_s=1)},
        model_statuses=lambda: {"crystal_sklearn": "TorchServe is not reachable (URLError)"},
    )
    parsed = families(scraper.scrape())
    assert {s[0]["source"]: s[1] for s in parsed["modelserver_scrape_up"]} == {"torchserve": 0, "envoy": 0}
    assert parsed["modelserver_model_ready"] == [({"model_name": "crystal_sklearn"}, 0.0)]


def test_a_hanging_source_is_left_out_at_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "SCRAPE_DEADLINE_S", 0.3)
    release = threading.Event()

    def hanging() -> str:
        release.wait(30)
        return TORCHSERVE_TEXT

    scraper = MetricsScraper(
        sources={"torchserve": hanging, "envoy": lambda: "envoy_up 1"},
        model_statuses=lambda: {"crystal_sklearn": "ready"},
    )
    try:
        started = time.monotonic()
        parsed = families(scraper.scrape())
        took = time.monotonic() - started
    finally:
        release.set()
    assert took < 5.0  # within Envoy's route timeout, not after the hanging source
    assert {s[0]["source"]: s[1] for s in parsed["modelserver_scrape_up"]} == {"torchserve": 0, "envoy": 1}
    assert parsed["envoy_up"] == [({}, 1.0)]
    assert parsed["modelserver_model_ready"] == [({"model_name": "crystal_sklearn"}, 1.0)]


def test_label_values_are_escaped() -> None:
    scraper = MetricsScraper(sources={}, model_statuses=lambda: {'we"ird\\name': "ready"})
    assert families(scraper.scrape())["modelserver_model_ready"] == [({"model_name": 'we"ird\\name'}, 1.0)]


def test_manage_without_a_running_stack_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert manage.main(["--runtime-dir", str(tmp_path), "list"]) == 1
    assert "no running stack" in capsys.readouterr().err


@pytest.mark.parametrize("workers", ["-1", "65", "two"])
def test_manage_refuses_a_worker_count_out_of_range_in_a_few_words(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], workers: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        manage.main(["--runtime-dir", str(tmp_path), "scale", "crystal_sklearn", workers])
    assert exit_info.value.code == 2
    last_line = capsys.readouterr().err.splitlines()[-1]
    assert last_line.endswith(f"{workers!r} is not a number of workers from 0 to 64") and len(last_line) < 160


def test_manage_reports_an_unreachable_api(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "torchserve"
    folder.mkdir()
    (folder / "config.properties").write_text("management_address=http://127.0.0.1:9\n", encoding="utf-8")
    keys = {"management": {"key": "k"}, "inference": {"key": "i"}}  # the keys manage needs
    (folder / "key_file.json").write_text(json.dumps(keys), encoding="utf-8")
    assert manage.main(["--runtime-dir", str(tmp_path), "describe", "crystal_sklearn"]) == 1
    assert "not reachable" in capsys.readouterr().err


def torchserve_counters(queued_us: float, answered: float) -> str:
    """TorchServe's two cumulative counters the queue gauge reads, over two models."""
    return "".join(
        f'{name}{{model_name="{model}",model_version="default",hostname="vm",}} {value / 2}\n'
        for model in ("crystal_sklearn", "crystal_pytorch")
        for name, value in (
            ("ts_queue_latency_microseconds", queued_us),
            ("ts_inference_requests_total", answered),
        )
    )


def test_load_gauges_follow_in_flight_requests_and_recent_queue_time() -> None:
    clock = [100.0]
    load = metrics.LoadGauges(window_s=30, clock=lambda: clock[0])
    envoy = (
        'envoy_http_downstream_rq_active{envoy_http_conn_manager_prefix="public"} 7\n'
        'envoy_http_downstream_rq_active{envoy_http_conn_manager_prefix="admin"} 99\n'
    )

    def read(queued_us: float, answered: float) -> dict[str, float]:
        text = load.exposition(envoy, torchserve_counters(queued_us, answered)).encode()
        return {name: samples[0][1] for name, samples in families(text).items()}

    assert read(0, 0) == {metrics.IN_FLIGHT: 7, metrics.QUEUE_SECONDS: 0}
    clock[0] += 10
    # 100 requests answered, 2 s of queueing among them: 20 ms each.
    assert read(2_000_000, 100)[metrics.QUEUE_SECONDS] == pytest.approx(0.02)
    clock[0] += 25
    # The base is the newest reading at least 30 s old (here still the first): 52 s over 200.
    assert read(52_000_000, 200)[metrics.QUEUE_SECONDS] == pytest.approx(0.26)
    clock[0] += 10
    # Now the second reading is 35 s old and becomes the base: 60 s over the 200 answered since.
    assert read(62_000_000, 300)[metrics.QUEUE_SECONDS] == pytest.approx(0.3)
    clock[0] += 60
    assert read(62_000_000, 300)[metrics.QUEUE_SECONDS] == 0, "nothing answered lately: no wait"
    clock[0] += 1
    assert read(1_000_000, 10)[metrics.QUEUE_SECONDS] == 0, "counters went back (restart): a new window"
    assert metrics.QUEUE_SECONDS not in families(load.exposition(envoy, None).encode())
    assert metrics.IN_FLIGHT not in families(load.exposition(None, TORCHSERVE_TEXT).encode())


def test_the_scrape_carries_the_load_gauges() -> None:
    scraper = MetricsScraper(
        sources={"torchserve": lambda: torchserve_counters(0, 0), "envoy": lambda: "envoy_up 1\n"},
        model_statuses=dict,
    )
    found = families(scraper.scrape())
    assert found[metrics.QUEUE_SECONDS] == [({}, 0.0)]


def test_envoys_watched_series_join_the_used_ones_without_a_duplicate() -> None:
    """The samples only the watched reading has (a counter never used yet) join their family."""
    used = '# TYPE envoy_a counter\nenvoy_a{c="x"} 3\n# TYPE envoy_t histogram\nenvoy_t_bucket{le="1"} 2\n'
    watched = (
        '# TYPE envoy_a counter\nenvoy_a{c="x"} 0\nenvoy_a{c="y"} 0\n'
        '# TYPE envoy_o counter\nenvoy_o{c="m"} 0\n'
    )
    merged = metrics.with_missing_samples(used, watched)
    assert merged.splitlines() == [
        "# TYPE envoy_a counter",
        'envoy_a{c="x"} 3',
        'envoy_a{c="y"} 0',
        "# TYPE envoy_t histogram",
        'envoy_t_bucket{le="1"} 2',
        "# TYPE envoy_o counter",
        'envoy_o{c="m"} 0',
    ]
    assert "pending_overflow" in urllib.parse.unquote(metrics.ENVOY_WATCHED_STATS)

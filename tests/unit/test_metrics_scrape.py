"""The /metrics merge and the management CLI, without a running stack."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelserver.launcher import manage, metrics
from modelserver.launcher.metrics import MetricsScraper, http_source

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


def test_manage_refuses_a_negative_worker_count(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        manage.main(["--runtime-dir", str(tmp_path), "scale", "crystal_sklearn", "-1"])
    assert exit_info.value.code == 2


def test_manage_reports_an_unreachable_api(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "torchserve"
    folder.mkdir()
    (folder / "config.properties").write_text("management_address=http://127.0.0.1:9\n", encoding="utf-8")
    keys = {"management": {"key": "k"}, "inference": {"key": "i"}}  # the keys manage needs
    (folder / "key_file.json").write_text(json.dumps(keys), encoding="utf-8")
    assert manage.main(["--runtime-dir", str(tmp_path), "describe", "crystal_sklearn"]) == 1
    assert "not reachable" in capsys.readouterr().err

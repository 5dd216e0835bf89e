"""`/metrics` after real traffic, and `make scale` while requests flow."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from load_tests.kit.routes import BRIEF_ROWS
from load_tests.kit.stack import Launcher
from tests.helpers import answers_close, make_scale

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(stack: Launcher) -> Series:
    """Every sample of /metrics on the Prometheus port, parsed as Prometheus does (a malformed
    line fails)."""
    response = requests.get(stack.metrics_url, timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(series: Series, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels` (0 if none)."""
    wanted = set(labels.items())
    return sum(v for (n, have), v in series.items() if n == name and wanted <= have)


def wait_for(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    """TorchServe's frontend reads the workers' metric lines asynchronously: poll."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.2)


def test_metrics_count_each_models_requests_by_status(stack: Launcher) -> None:
    before = scrape(stack)
    sends = [("/sklearn", {"crystalData": BRIEF_ROWS}, 200)] * 3 + [
        ("/sklearn", {"crystalData": [[1, 2]]}, 422)
    ]
    sends += [("/inference", {"text": "the [MASK] sat."}, 200), ("/inference", {"text": "no mask"}, 422)] * 2
    for path, body, status in sends:
        assert requests.post(f"{stack.url}{path}", json=body, timeout=30).status_code == status

    expected = {
        ("crystal_sklearn", "200"): 3,
        ("crystal_sklearn", "422"): 1,
        ("fill_mask", "200"): 2,
        ("fill_mask", "422"): 2,
    }

    def delta(series: Series, name: str, **labels: str) -> float:
        return value(series, name, **labels) - value(before, name, **labels)

    def counted() -> bool:
        series = scrape(stack)
        return all(
            delta(series, "ModelRequests_total", ModelName=model, Status=status) == count
            for (model, status), count in expected.items()
        )

    wait_for(counted)
    after = scrape(stack)
    for model, requests_sent in (("crystal_sklearn", 4), ("fill_mask", 4)):
        assert delta(after, "HandlerBatchRequests_total", ModelName=model) == requests_sent
        assert 1 <= delta(after, "HandlerBatches_total", ModelName=model) <= requests_sent
        for phase in ("Preprocess", "Inference", "Postprocess"):
            name = f"Handler{phase}Seconds"
            assert delta(after, f"{name}_count", ModelName=model) == delta(
                after, "HandlerBatches_total", ModelName=model
            )
            assert delta(after, f"{name}_sum", ModelName=model) > 0
        assert delta(after, "ts_inference_requests_total", model_name=model) == requests_sent
    # Envoy's own statistics, by status class, on the public listener (counters get _total
    # from the parser, as in Prometheus).
    public = {"envoy_http_conn_manager_prefix": "public"}
    assert delta(after, "envoy_http_downstream_rq_xx_total", envoy_response_code_class="4", **public) >= 3
    assert value(after, "modelserver_scrape_up", source="torchserve") == 1
    assert value(after, "modelserver_scrape_up", source="envoy") == 1
    for model in ("crystal_sklearn", "crystal_pytorch", "fill_mask", "sentiment"):
        assert value(after, "modelserver_model_ready", model_name=model) == 1


def test_metrics_only_answer_get(stack: Launcher) -> None:
    response = requests.post(stack.metrics_url, timeout=10)
    assert response.status_code == 405 and response.headers["allow"] == "GET"
    assert "error" in response.json()


def test_metrics_have_a_port_of_their_own(stack: Launcher) -> None:
    """The API's port answers /metrics with a JSON 404; the operations port serves nothing but
    /metrics and the probes' /healthcheck (JSON 404 elsewhere), with Envoy's protections and the
    API's error shape."""
    public = requests.get(f"{stack.url}/metrics", timeout=10)
    assert public.status_code == 404 and public.json()["code"] == 404, public.text
    base = stack.metrics_url.removesuffix("/metrics")
    for path in ("/sklearn", "/", "/metrics/", "/healthcheck/", "/openapi.json"):
        other = requests.get(f"{base}{path}", timeout=10)
        assert other.status_code == 404 and "GET /metrics" in other.json()["error"], (path, other.text)
    assert requests.get(stack.metrics_url, timeout=10).text.startswith("# HELP")
    health = requests.get(stack.health_url, timeout=10)
    assert (
        health.status_code == 200
        and health.json() == requests.get(f"{stack.url}/healthcheck", timeout=10).json()
    )
    wrong = requests.post(stack.health_url, timeout=10)
    assert wrong.status_code == 405 and wrong.headers["allow"] == "GET", wrong.text


@pytest.fixture(name="traffic")
def traffic_fixture(stack: Launcher) -> Iterator[Counter[str]]:
    """Two clients sending /sklearn requests until the test ends: the outcome of each is
    counted ('ok', or what went wrong)."""
    outcomes: Counter[str] = Counter()
    stop = threading.Event()
    expected = requests.post(f"{stack.url}/sklearn", json={"crystalData": BRIEF_ROWS}, timeout=10).json()

    def client() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                try:
                    reply = session.post(f"{stack.url}/sklearn", json={"crystalData": BRIEF_ROWS}, timeout=30)
                    ok = reply.status_code == 200 and answers_close(reply.json(), expected)
                    outcomes["ok" if ok else f"HTTP {reply.status_code}: {reply.text[:200]}"] += 1
                except requests.RequestException as error:
                    outcomes[type(error).__name__] += 1

    clients = [threading.Thread(target=client) for _ in range(2)]
    for thread in clients:
        thread.start()
    try:
        yield outcomes
    finally:
        stop.set()
        for thread in clients:
            thread.join(timeout=60)


def test_scaling_up_and_down_while_requests_flow_fails_none(stack: Launcher, traffic: Counter[str]) -> None:
    try:
        time.sleep(1)
        up = make_scale(stack, "crystal_sklearn", 3)
        assert [w["status"] for w in up["workers"]] == ["READY"] * 3  # type: ignore[union-attr]
        served_while_up = traffic["ok"]
        time.sleep(2)
        assert traffic["ok"] > served_while_up  # traffic kept flowing on three workers
        down = make_scale(stack, "crystal_sklearn", 1)
        assert [w["status"] for w in down["workers"]] == ["READY"]  # type: ignore[union-attr]
        time.sleep(1)
    finally:
        make_scale(stack, "crystal_sklearn", 1)
    assert traffic["ok"] > 50
    assert set(traffic) == {"ok"}, dict(traffic)

"""Readiness read in the background, the bounded loopback server and the shared /metrics
reading, without a running stack."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from modelserver.catalogue import Catalogue
from modelserver.launcher.envoy.config import (
    HEALTH_CLUSTER,
    METRICS_CLUSTER,
    METRICS_LIMITS,
    METRICS_READERS,
    PROMETHEUS_LISTENER,
    PUBLIC_LISTENER,
    envoy_config,
)
from modelserver.launcher.envoy.routes import RouteTable
from modelserver.launcher.pages import health
from modelserver.launcher.pages.health import (
    HANDLER_THREADS,
    HealthServer,
    PageBusy,
    ReaderLimit,
    Readiness,
    ReadingTiming,
    limited,
    public_reason,
)
from modelserver.launcher.pages.metrics import CachedScrape
from modelserver.launcher.settings import LaunchSettings


class FakeClock:
    """Monotonic seconds that move only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Poll `condition` until it holds."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_health_is_answered_from_the_latest_reading_without_asking_torchserve() -> None:
    asked: list[str] = []

    def status(name: str) -> str:
        asked.append(name)
        return "ready"

    readiness = Readiness(["a", "b"], status)
    assert readiness.report()[0] == 503  # nothing read yet: never healthy by default
    readiness.refresh()
    for _ in range(100):
        assert readiness.report() == (200, {"status": "Healthy", "models": {"a": "ready", "b": "ready"}})
    assert sorted(asked) == ["a", "b"]


def test_the_loop_reads_in_the_background_and_at_once_when_the_phase_changes() -> None:
    statuses = {"a": "no ready worker (LOADING)"}
    readiness = Readiness(["a"], statuses.__getitem__, timing=ReadingTiming(read_every_s=60.0))
    readiness.start()
    try:
        wait_for(lambda: "LOADING" in readiness.report()[1].get("error", ""))
        statuses["a"] = "ready"
        started = time.monotonic()
        readiness.set_phase("serving")
        wait_for(lambda: readiness.report()[0] == 200)
        assert time.monotonic() - started < 2.0  # not after read_every_s
    finally:
        readiness.stop()


def test_a_stale_reading_counts_as_not_ready() -> None:
    clock = FakeClock()
    readiness = Readiness(["a"], lambda _name: "ready", timing=ReadingTiming(stale_after_s=3.0, clock=clock))
    readiness.refresh()
    clock.now += 2.5
    assert readiness.report()[0] == 200
    clock.now += 1.0
    code, body = readiness.report()
    assert code == 503 and body["status"] == "Unhealthy"
    assert body["models"] == {"a": "no fresh reading (the last is 4 s old)"}
    assert body["error"] == "not ready: a: no fresh reading (the last is 4 s old)"
    assert readiness.statuses() == {"a": "no fresh reading (the last is 4 s old)"}


def test_a_hung_torchserve_is_not_ready_in_time_and_never_asked_twice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(health, "STATUS_WAIT_S", 0.2)
    release = threading.Event()
    asked: list[str] = []

    def hanging(name: str) -> str:
        asked.append(name)
        release.wait(10)
        return "ready"

    readiness = Readiness(["a"], hanging)
    try:
        started = time.monotonic()
        readiness.refresh()
        readiness.refresh()
        assert time.monotonic() - started < 2.0
        code, body = readiness.report()
        assert code == 503 and body["models"] == {"a": "TorchServe did not answer in time"}
        assert asked == ["a"]
    finally:
        release.set()
        readiness.stop()


def test_a_failing_status_source_is_a_reason_not_a_dead_loop() -> None:
    def broken(_name: str) -> str:
        raise KeyError("surprise")

    readiness = Readiness(["a"], broken)
    readiness.refresh()
    assert readiness.report()[1]["models"] == {"a": "its state could not be read (KeyError)"}


def test_stopping_is_unhealthy_at_once_and_for_good() -> None:
    readiness = Readiness(["a"], lambda _name: "ready")
    readiness.refresh()
    readiness.set_phase("serving")
    assert readiness.report()[0] == 200
    readiness.set_phase("stopping")
    readiness.set_phase("serving")
    assert readiness.phase == "stopping"
    assert readiness.report() == (
        503,
        {"error": "the server is shutting down", "type": "unavailable", "code": 503, "status": "Unhealthy"},
    )


def test_clients_see_file_names_never_paths() -> None:
    skipped = {
        "topics": "no train data (../shared/seed_data/topics/train.jsonl.gz); set TOPICS_TRAIN",
        "fill_mask": "cannot fetch bert-base-uncased: the Hub (huggingface.co) is not reachable",
    }
    readiness = Readiness(["a"], lambda _name: "archive /srv/store/a.mar failed to load", skipped)
    readiness.refresh()
    code, body = readiness.report()
    assert code == 503
    assert body["models"] == {
        "a": "archive a.mar failed to load",
        "topics": "skipped: no train data (train.jsonl.gz); set TOPICS_TRAIN",
        "fill_mask": "skipped: cannot fetch bert-base-uncased: the Hub (huggingface.co) is not reachable",
    }
    assert body["skipped"] == ["fill_mask", "topics"]
    assert body["error"] == "not ready: a: archive a.mar failed to load"


@pytest.mark.parametrize(
    ("reason", "seen"),
    [
        ("TOPICS_TRAIN=/data/x/train.jsonl is not a file", "TOPICS_TRAIN=train.jsonl is not a file"),
        ("in ~/models/sklearn.model and ./a.txt", "in sklearn.model and a.txt"),
        ("from file:///work/model_store/x.mar", "from x.mar"),
        ("seed_data/topics/test.jsonl.gz is empty", "test.jsonl.gz is empty"),
        # A Hub id, a URL and a ratio name no file here: kept.
        (
            "cannot fetch distilbert/distilbert-base-uncased",
            "cannot fetch distilbert/distilbert-base-uncased",
        ),
        (
            "404 for url: https://huggingface.co/api/models/a/b",
            "404 for url: https://huggingface.co/api/models/a/b",
        ),
        ("HTTP 404/405 (--models)", "HTTP 404/405 (--models)"),
    ],
)
def test_public_reasons_cut_paths_to_file_names(reason: str, seen: str) -> None:
    assert public_reason(reason) == seen


def test_a_shared_reading_is_read_once_by_concurrent_scrapes() -> None:
    clock = FakeClock()
    reads: list[int] = []
    gate = threading.Event()

    def scrape() -> bytes:
        reads.append(1)
        gate.wait(5)
        return f"reading {len(reads)}\n".encode()

    shared = CachedScrape(scrape, shared_for_s=1.0, clock=clock)
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = [pool.submit(shared) for _ in range(16)]
        wait_for(lambda: len(reads) == 1)
        gate.set()
        assert {answer.result(timeout=5) for answer in answers} == {b"reading 1\n"}
    assert len(reads) == 1
    clock.now += 0.9
    assert shared() == b"reading 1\n" and len(reads) == 1
    clock.now += 0.2
    assert shared() == b"reading 2\n" and len(reads) == 2


def test_while_one_scrape_reads_anew_the_others_get_the_previous_reading() -> None:
    clock = FakeClock()
    gate = threading.Event()
    count = iter(range(1, 100))

    def scrape() -> bytes:
        number = next(count)
        if number == 2:
            gate.wait(5)
        return f"reading {number}\n".encode()

    shared = CachedScrape(scrape, shared_for_s=1.0, clock=clock)
    assert shared() == b"reading 1\n"
    clock.now += 5.0
    with ThreadPoolExecutor(max_workers=1) as pool:
        refreshing = pool.submit(shared)
        time.sleep(0.05)
        started = time.monotonic()
        assert shared() == b"reading 1\n"  # at once, not behind the slow read
        assert time.monotonic() - started < 0.5
        gate.set()
        assert refreshing.result(timeout=5) == b"reading 2\n"
    assert shared() == b"reading 2\n"


def test_a_failed_read_lets_the_next_scrape_try_again() -> None:
    failures = [OSError("down")]

    def scrape() -> bytes:
        if failures:
            raise failures.pop()
        return b"ok\n"

    shared = CachedScrape(scrape)
    with pytest.raises(OSError):
        shared()
    assert shared() == b"ok\n"


def test_a_limited_page_refuses_readers_beyond_its_limit_at_once() -> None:
    gate = threading.Event()
    inside: list[int] = []

    def slow() -> tuple[str, bytes]:
        inside.append(1)
        gate.wait(5)
        return "text/plain", b"x"

    page = limited("/metrics", slow, 2)
    with ThreadPoolExecutor(max_workers=2) as pool:
        held = [pool.submit(page) for _ in range(2)]
        wait_for(lambda: len(inside) == 2)
        with pytest.raises(PageBusy, match="/metrics is being read by 2 other requests"):
            page()
        gate.set()
        assert [answer.result(timeout=5) for answer in held] == [("text/plain", b"x")] * 2
    assert page() == ("text/plain", b"x")


@pytest.fixture(name="server_with_slow_metrics")
def server_with_slow_metrics_fixture() -> Iterator[tuple[HealthServer, threading.Event]]:
    """A health server on a free port whose /metrics hangs until released."""
    gate = threading.Event()

    def slow_metrics() -> tuple[str, bytes]:
        gate.wait(10)
        return "text/plain; version=0.0.4", b"up 1\n"

    readiness = Readiness(["a"], lambda _name: "ready")
    pages = {"/metrics": limited("/metrics", slow_metrics, 2)}
    server = HealthServer(0, readiness, pages, threads=4, waiting=8)
    server.start()
    try:
        yield server, gate
    finally:
        gate.set()
        server.stop()


def test_health_answers_at_once_while_metrics_scrapes_hang(
    server_with_slow_metrics: tuple[HealthServer, threading.Event],
) -> None:
    server, gate = server_with_slow_metrics
    url = f"http://127.0.0.1:{server.port}"
    wait_for(lambda: requests.get(f"{url}/healthcheck", timeout=2).status_code == 200)
    threads_before = threading.active_count()
    with ThreadPoolExecutor(max_workers=12) as pool:
        scrapes = [pool.submit(requests.get, f"{url}/metrics", timeout=10) for _ in range(12)]
        time.sleep(0.3)
        for _ in range(10):
            started = time.monotonic()
            probe = requests.get(f"{url}/healthcheck", timeout=2)
            assert probe.status_code == 200 and time.monotonic() - started < 0.5
        refused = [s.result(timeout=5) for s in scrapes if s.done()]
        assert len(refused) == 10  # all but the two readers were answered at once
        for answer in refused:
            assert answer.status_code == 503 and answer.headers["Retry-After"] == "1"
            assert "is being read by 2 other requests" in answer.json()["error"]
        assert threading.active_count() <= threads_before + 12  # the client pool, no server threads
        gate.set()
        answers = [s.result(timeout=10) for s in scrapes]
    assert sum(a.status_code == 200 and a.text == "up 1\n" for a in answers) == 2
    assert requests.get(f"{url}/nowhere", timeout=2).json()["error"] == "no such route"


def test_metrics_has_its_own_envoy_cluster_with_a_circuit_breaker() -> None:
    built = envoy_config(LaunchSettings(), "t", RouteTable(Catalogue.load(), {}))
    clusters = {cluster["name"]: cluster for cluster in built["static_resources"]["clusters"]}
    [thresholds] = clusters[METRICS_CLUSTER]["circuit_breakers"]["thresholds"]
    assert {key: thresholds[key] for key in METRICS_LIMITS} == METRICS_LIMITS
    assert METRICS_LIMITS["max_connections"] == METRICS_READERS
    assert "circuit_breakers" not in clusters[HEALTH_CLUSTER]
    assert clusters[METRICS_CLUSTER]["load_assignment"] == {
        **clusters[HEALTH_CLUSTER]["load_assignment"],
        "cluster_name": METRICS_CLUSTER,
    }
    listeners = {listener["name"]: listener for listener in built["static_resources"]["listeners"]}

    def routes_of(name: str) -> list[dict[str, Any]]:
        manager = listeners[name]["filter_chains"][0]["filters"][-1]["typed_config"]
        return manager["route_config"]["virtual_hosts"][0]["routes"]

    # /metrics lives on the Prometheus listener alone; no public route reaches the cluster.
    first_for_metrics = next(
        r for r in routes_of(PROMETHEUS_LISTENER) if r["match"].get("path") == "/metrics"
    )
    assert first_for_metrics["route"]["cluster"] == METRICS_CLUSTER
    assert listeners[PROMETHEUS_LISTENER]["address"]["socket_address"]["port_value"] == 3001
    assert METRICS_CLUSTER not in str(routes_of(PUBLIC_LISTENER))


def test_only_healthcheck_reaches_the_unlimited_cluster() -> None:
    """The documents and the v2 pages have clusters of their own, each with a circuit breaker;
    the health cluster serves /healthcheck alone, so no crowd on a page queues a probe."""
    from modelserver.launcher.envoy import config  # pylint: disable=import-outside-toplevel

    built = envoy_config(LaunchSettings(), "t", RouteTable(Catalogue.load(), {}))
    clusters = {cluster["name"]: cluster for cluster in built["static_resources"]["clusters"]}
    for name, limits in config.PAGE_CLUSTERS.items():
        [thresholds] = clusters[name]["circuit_breakers"]["thresholds"]
        assert {key: thresholds[key] for key in limits} == limits, name
    [public] = [found for found in built["static_resources"]["listeners"] if found["name"] == PUBLIC_LISTENER]
    routes = public["filter_chains"][0]["filters"][-1]["typed_config"]["route_config"]["virtual_hosts"][0][
        "routes"
    ]
    to_health = [r["match"] for r in routes if r.get("route", {}).get("cluster") == HEALTH_CLUSTER]
    assert to_health == [
        {"path": "/healthcheck", "headers": [{"name": ":method", "string_match": {"exact": "GET"}}]}
    ]
    clusters_of = {
        r["route"]["cluster"]
        for r in routes
        if "safe_regex" in r["match"] and "cluster" in r.get("route", {})
    }
    assert {config.DOCUMENTS_CLUSTER, config.OPEN_INFERENCE_PAGES_CLUSTER} <= clusters_of
    threads_for_pages = sum(limits["max_connections"] for limits in config.PAGE_CLUSTERS.values())
    assert HANDLER_THREADS - threads_for_pages >= 2, "threads left for /healthcheck whatever the crowds"


def test_a_reader_limit_is_shared_by_its_pages() -> None:
    limit = ReaderLimit("the documents", 1)
    gate = threading.Event()
    pages = limit.pages(
        {"/a": lambda: (gate.wait(5), ("text/plain", b"a"))[1], "/b": lambda: ("text/plain", b"b")}
    )
    reader = threading.Thread(target=pages["/a"])
    reader.start()
    time.sleep(0.2)
    with pytest.raises(PageBusy, match="the documents is being read by 1 other requests"):
        pages["/b"]()
    gate.set()
    reader.join(timeout=5)
    assert pages["/b"]() == ("text/plain", b"b")
    json_pages = limit.json_pages(lambda path: (200, {"path": path}))
    assert json_pages("/v2") == (200, {"path": "/v2"})

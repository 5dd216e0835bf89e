"""Overload on a live stack of its own: a model whose admission limits are far below the offered
load refuses the excess at once (JSON 503 + Retry-After), serves what it accepts correctly, keeps
/healthcheck answering, and is back to normal as soon as the load drops."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from load_tests.kit.routes import BRIEF_ROWS
from load_tests.kit.stack import Launcher, running, write_catalogue
from tests.helpers import answers_close

CONCURRENCY, QUEUE = 2, 2
CLIENTS = 24
# Far beyond any answer or refusal here, far below a timeout (Envoy's route idle timeout is 15 s).
PROMPT_S = 5.0


@pytest.fixture(name="small_stack", scope="module")
def small_stack_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launcher]:
    """crystal_sklearn admitting 2 requests at TorchServe and 2 waiting: 24 clients overload it."""
    workdir = tmp_path_factory.mktemp("overload")
    limits = {"crystal_sklearn": {"concurrency": CONCURRENCY, "queue": QUEUE}}
    catalogue = write_catalogue(workdir / "models.yaml", admission=limits)
    with running(Launcher(workdir, catalogue=catalogue, models=("crystal_sklearn",))) as live:
        yield live


@dataclass
class Outcomes:
    """What the clients saw: answers, refusals, and anything else (which fails the test)."""

    answered: list[float] = field(default_factory=list)
    refused: list[float] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def drive(url: str, expected: object, seconds: float) -> Outcomes:
    """CLIENTS closed-loop clients on /sklearn for `seconds`, each reply checked."""
    outcomes = Outcomes()
    stop = threading.Event()

    def client() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                start = time.monotonic()
                reply = session.post(f"{url}/sklearn", json={"crystalData": BRIEF_ROWS}, timeout=30)
                took = time.monotonic() - start
                with outcomes.lock:
                    if reply.status_code == 200 and answers_close(reply.json(), expected):
                        outcomes.answered.append(took)
                    elif (
                        reply.status_code == 503
                        and reply.headers.get("retry-after") == "1"
                        and "capacity" in reply.json()["error"]
                    ):
                        outcomes.refused.append(took)
                    else:
                        outcomes.unexpected.append(f"{reply.status_code} {reply.text[:200]}")

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
    return outcomes


def overflowed(launcher: Launcher) -> float:
    """Requests Envoy refused for crystal_sklearn's full queue, from /metrics."""
    text = requests.get(launcher.metrics_url, timeout=10).text
    for family in text_string_to_metric_families(text):
        if family.name == "envoy_cluster_upstream_rq_pending_overflow":
            for sample in family.samples:
                if sample.labels.get("envoy_cluster_name") == "model_crystal_sklearn":
                    return sample.value
    return 0.0


def test_excess_load_is_refused_at_once_and_the_rest_served(small_stack: Launcher) -> None:
    url = small_stack.url
    expected = requests.post(f"{url}/sklearn", json={"crystalData": BRIEF_ROWS}, timeout=10).json()
    health: list[tuple[int, float]] = []
    polling = threading.Event()

    def poll_health() -> None:
        while not polling.is_set():
            start = time.monotonic()
            status = requests.get(f"{url}/healthcheck", timeout=30).status_code
            health.append((status, time.monotonic() - start))
            time.sleep(0.5)

    poller = threading.Thread(target=poll_health)
    poller.start()
    try:
        outcomes = drive(url, expected, seconds=6)
    finally:
        polling.set()
        poller.join(timeout=60)

    assert not outcomes.unexpected, outcomes.unexpected[:5]
    assert outcomes.answered and outcomes.refused, (len(outcomes.answered), len(outcomes.refused))
    # Refused at once, not after a wait for a timeout; accepted ones waited behind at most
    # CONCURRENCY + QUEUE others.
    assert max(outcomes.refused) < PROMPT_S, sorted(outcomes.refused)[-5:]
    assert max(outcomes.answered) < PROMPT_S, sorted(outcomes.answered)[-5:]
    assert health and all(status == 200 and took < PROMPT_S for status, took in health), health
    assert overflowed(small_stack) >= len(outcomes.refused)

    # The load is gone: every request is answered again.
    for _ in range(CONCURRENCY + QUEUE + 5):
        reply = requests.post(f"{url}/sklearn", json={"crystalData": BRIEF_ROWS}, timeout=10)
        assert reply.status_code == 200 and answers_close(reply.json(), expected), reply.text

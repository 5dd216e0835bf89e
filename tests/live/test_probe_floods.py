"""/healthcheck keeps answering while a crowd polls /metrics.

The flood runs in a child process, so its many client threads never hold the probe's GIL:
the probe's timings are the server's, not the test's.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.queues
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import requests

from load_tests.kit.stack import Launcher, running

FLOOD_CLIENTS = 128
FLOOD_S = 10.0
PROBE_EVERY_S = 0.25
PROBE_DEADLINE_S = 1.0


@pytest.fixture(name="crystal_stack", scope="module")
def crystal_stack_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launcher]:
    """The two crystal models only (they load in seconds)."""
    with running(
        Launcher(tmp_path_factory.mktemp("floods"), models=("crystal_sklearn", "crystal_pytorch"))
    ) as live:
        yield live


@dataclass
class FloodOutcome:
    """What the /metrics clients saw."""

    statuses: Counter[int] = field(default_factory=Counter)
    prometheus_answers: int = 0
    refusals_as_json_with_retry_after: int = 0
    failures: list[str] = field(default_factory=list)


def _poll_metrics(url: str, until: float, outcome: FloodOutcome, lock: threading.Lock) -> None:
    """One client: GET /metrics on one keep-alive connection, again and again."""
    with requests.Session() as session:
        while time.monotonic() < until:
            try:
                response = session.get(f"{url}/metrics", timeout=10)
            except requests.RequestException as error:
                with lock:
                    outcome.failures.append(type(error).__name__)
                continue
            text = response.text
            with lock:
                outcome.statuses[response.status_code] += 1
                if response.status_code == 200 and "# TYPE modelserver_model_ready gauge" in text:
                    outcome.prometheus_answers += 1
                elif response.status_code == 503:
                    try:
                        is_error = "error" in response.json()
                    except ValueError:
                        is_error = False
                    if is_error and response.headers.get("retry-after"):
                        outcome.refusals_as_json_with_retry_after += 1
                    else:
                        outcome.failures.append(f"503 without JSON or Retry-After: {text[:80]!r}")
                elif response.status_code != 200:
                    outcome.failures.append(f"HTTP {response.status_code}: {text[:80]!r}")


def flood(
    url: str, clients: int, seconds: float, results: multiprocessing.queues.Queue[FloodOutcome]
) -> None:
    """`clients` threads polling /metrics for `seconds`; the outcome goes to `results`."""
    outcome = FloodOutcome()
    lock = threading.Lock()
    until = time.monotonic() + seconds
    threads = [
        threading.Thread(target=_poll_metrics, args=(url, until, outcome, lock), daemon=True)
        for _ in range(clients)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=seconds + 30)
    results.put(outcome)


@dataclass(frozen=True)
class Probe:
    """One /healthcheck: when it was sent (s into the probing), its status (0: no answer in
    time) and how long it took."""

    at_s: float
    status: int
    took_s: float


def probe_during(process: multiprocessing.process.BaseProcess, url: str) -> list[Probe]:
    """One fresh-connection /healthcheck every PROBE_EVERY_S while `process` runs, as a kubelet
    probes."""
    probes = []
    first = time.monotonic()
    while process.is_alive():
        started = time.monotonic()
        try:
            status = requests.get(f"{url}/healthcheck", timeout=PROBE_DEADLINE_S).status_code
        except requests.RequestException:
            status = 0
        probes.append(Probe(round(started - first, 2), status, round(time.monotonic() - started, 3)))
        time.sleep(max(0.0, PROBE_EVERY_S - (time.monotonic() - started)))
    return probes


def test_health_probes_answer_in_time_while_metrics_is_flooded(crystal_stack: Launcher) -> None:
    context = multiprocessing.get_context("fork")
    results: multiprocessing.queues.Queue[FloodOutcome] = context.Queue()
    process = context.Process(target=flood, args=(crystal_stack.url, FLOOD_CLIENTS, FLOOD_S, results))
    process.start()
    try:
        time.sleep(1.0)  # let the crowd arrive
        probes = probe_during(process, crystal_stack.url)
        outcome = results.get(timeout=60)
    finally:
        process.join(timeout=60)
    in_time = [probe for probe in probes if probe.status == 200 and probe.took_s <= PROBE_DEADLINE_S]
    print(
        f"/healthcheck: {len(in_time)} of {len(probes)} probes answered 200 within {PROBE_DEADLINE_S} s; "
        f"/metrics: {dict(outcome.statuses)}, {outcome.prometheus_answers} Prometheus answers"
    )
    assert len(probes) >= 20
    assert len(in_time) == len(probes), [probe for probe in probes if probe not in in_time]
    assert not outcome.failures, Counter(outcome.failures).most_common(5)
    assert outcome.prometheus_answers > 0
    assert outcome.refusals_as_json_with_retry_after == outcome.statuses[503]
    assert requests.get(f"{crystal_stack.url}/healthcheck", timeout=5).status_code == 200

"""Faults on a live stack of its own: TorchServe or Envoy killed, and the launcher brings the
service back without anyone acting. Bounded: each test waits at most a minute."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable

import psutil
import requests

from load_tests.kit.routes import BRIEF_ROWS
from load_tests.kit.stack import Launcher
from tests.helpers import access_log, answers_close, logged_requests, make_scale

ROUTES = {
    "/sklearn": {"crystalData": BRIEF_ROWS},
    "/pytorch": {"crystalData": BRIEF_ROWS},
    "/astromech": {"crystalData": BRIEF_ROWS, "model": "sklearn"},
    "/predictions/crystal_pytorch": {"crystalData": BRIEF_ROWS},
}


def children(launcher: Launcher, word: str) -> list[psutil.Process]:
    """The launcher's running descendants whose command line mentions `word`, oldest first."""
    assert launcher.process is not None
    found = []
    for process in psutil.Process(launcher.process.pid).children(recursive=True):
        try:
            if word in " ".join(process.cmdline()):
                found.append(process)
        except psutil.Error:  # gone, or a zombie about to be reaped by its parent
            continue
    return sorted(found, key=lambda p: p.create_time())


REAP_WINDOW_S = 2.0


def zombies(launcher: Launcher) -> list[int]:
    """The launcher's own children that exited and were never reaped (its grandchildren are
    TorchServe's and Envoy's to reap)."""
    assert launcher.process is not None
    mine = psutil.Process(launcher.process.pid).children()
    return [p.pid for p in mine if p.status() == psutil.STATUS_ZOMBIE]


def wait_until(condition: Callable[[], bool], timeout_s: float) -> float:
    """Poll `condition` until it holds; the seconds it took."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout_s:
            raise TimeoutError(f"not within {timeout_s} s")
        time.sleep(0.1)
    return time.monotonic() - start


def health_status(launcher: Launcher) -> int:
    """The public /healthcheck's status, or 0 if nothing answers."""
    try:
        return requests.get(f"{launcher.url}/healthcheck", timeout=5).status_code
    except requests.RequestException:
        return 0


def post(launcher: Launcher, path: str) -> requests.Response:
    """One request to a model route, with a bounded wait: nothing may hang."""
    return requests.post(f"{launcher.url}{path}", json=ROUTES[path], timeout=20)


def check_refusal(reply: requests.Response) -> None:
    """While the model server is down: a JSON 503 that says when to retry."""
    assert reply.status_code == 503, reply.text
    assert reply.headers.get("retry-after"), dict(reply.headers)
    assert reply.json()["error"]


def test_torchserve_killed_answers_503_then_recovers_by_itself(crystal_stack: Launcher) -> None:
    expected = post(crystal_stack, "/sklearn").json()
    [java] = children(crystal_stack, "org.pytorch.serve.ModelServer")
    workers = children(crystal_stack, "model_service_worker")
    java.kill()
    killed = time.monotonic()

    assert wait_until(lambda: health_status(crystal_stack) == 503, timeout_s=5) < 5
    for path in ROUTES:
        check_refusal(post(crystal_stack, path))

    # Until it is back: every answer is the right one or a JSON 503; none hangs or is a 400/500.
    seen: Counter[int] = Counter()

    def recovered() -> bool:
        reply = post(crystal_stack, "/sklearn")
        seen[reply.status_code] += 1
        if reply.status_code != 200:
            check_refusal(reply)
        return (
            reply.status_code == 200
            and answers_close(reply.json(), expected)
            and health_status(crystal_stack) == 200
        )

    wait_until(recovered, timeout_s=60 - (time.monotonic() - killed))
    assert set(seen) <= {200, 503}, seen
    for path in ROUTES:
        assert post(crystal_stack, path).status_code == 200
    # The old workers went with their TorchServe; the new one has a worker per model.
    assert not any(worker.is_running() for worker in workers)
    assert len(children(crystal_stack, "model_service_worker")) == 2
    # The old Envoy epoch exits once the new one has taken over; the serving loop reaps exited
    # children every 0.5 s, so one may be seen for that long, never longer.
    assert wait_until(lambda: not zombies(crystal_stack), timeout_s=REAP_WINDOW_S) < REAP_WINDOW_S


def test_envoy_killed_is_restarted(crystal_stack: Launcher) -> None:
    envoy = children(crystal_stack, "envoy")[-1]
    envoy.kill()
    wait_until(lambda: not envoy.is_running() or envoy.status() == psutil.STATUS_ZOMBIE, timeout_s=5)
    took = wait_until(lambda: health_status(crystal_stack) == 200, timeout_s=30)
    assert took < 30
    assert post(crystal_stack, "/pytorch").status_code == 200
    assert children(crystal_stack, "envoy")[-1].pid != envoy.pid
    assert wait_until(lambda: not zombies(crystal_stack), timeout_s=REAP_WINDOW_S) < REAP_WINDOW_S


def test_a_worker_killed_under_load_costs_at_most_its_batch(crystal_stack: Launcher) -> None:
    """TorchServe replaces a SIGKILLed worker; only the requests in its batch may fail, each
    with a JSON 503 and Retry-After, and none hangs (every request has a 20 s bound)."""
    expected = post(crystal_stack, "/sklearn").json()
    outcomes: Counter[str] = Counter()
    stop = threading.Event()

    def client() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                reply = session.post(f"{crystal_stack.url}/sklearn", json=ROUTES["/sklearn"], timeout=20)
                if reply.status_code == 200 and answers_close(reply.json(), expected):
                    outcomes["ok"] += 1
                else:
                    assert reply.status_code == 503 and reply.headers["retry-after"], reply.text
                    assert reply.json()["error"]
                    outcomes[str(reply.status_code)] += 1

    clients = [threading.Thread(target=client) for _ in range(2)]
    for thread in clients:
        thread.start()
    try:
        time.sleep(3)
        [version] = crystal_stack.management("GET", "/models/crystal_sklearn").json()
        [worker] = version["workers"]
        psutil.Process(worker["pid"]).kill()
        wait_until(lambda: len(children(crystal_stack, "model_service_worker")) == 2, timeout_s=30)
        wait_until(lambda: health_status(crystal_stack) == 200, timeout_s=30)
        served_before = outcomes["ok"]
        # Serving again on the new worker. The batch of the killed worker got TorchServe's own
        # "Worker died." and was tried once more on the new one.
        wait_until(lambda: outcomes["ok"] > served_before + 10, timeout_s=30)
    finally:
        stop.set()
        for thread in clients:
            thread.join(timeout=30)
    failed = sum(count for key, count in outcomes.items() if key != "ok")
    assert failed <= max(2, 0.001 * sum(outcomes.values())), dict(outcomes)


def test_a_reply_torchserve_makes_itself_is_tried_once_more(crystal_stack: Launcher) -> None:
    """With no worker TorchServe refuses the job itself (503, no handler's mark): Envoy tries
    once more, then answers that refusal as JSON. A model's own 500 is never retried
    (test_crystal_api)."""
    scale = "/models/crystal_pytorch?min_worker={0}&max_worker={0}&synchronous=true"
    since = len(access_log(crystal_stack))
    try:
        assert crystal_stack.management("PUT", scale.format(0)).status_code == 200
        reply = post(crystal_stack, "/pytorch")
        # Our sentence, naming the model and how to scale it; never TorchServe's own.
        assert reply.status_code == 503 and reply.headers["retry-after"], reply.text
        assert "make scale MODEL=crystal_pytorch WORKERS=1" in reply.json()["error"], reply.text
        assert reply.json()["type"] == "unavailable" and reply.json()["code"] == 503, reply.text
        [line] = logged_requests(crystal_stack, "/pytorch", since)
        assert line["attempts"] == 2 and line["status"] == 503, line
    finally:
        crystal_stack.management("PUT", scale.format(1))
        wait_until(lambda: health_status(crystal_stack) == 200, timeout_s=60)
    assert post(crystal_stack, "/pytorch").status_code == 200


def test_a_scaled_model_keeps_its_workers_when_torchserve_is_restarted(crystal_stack: Launcher) -> None:
    """`make scale` is an operator's choice: the launcher sets it again on the new TorchServe."""
    try:
        make_scale(crystal_stack, "crystal_pytorch", 2)
        [java] = children(crystal_stack, "org.pytorch.serve.ModelServer")
        java.kill()
        wait_until(lambda: health_status(crystal_stack) == 503, timeout_s=5)

        def scaled_back() -> bool:
            if health_status(crystal_stack) != 200:
                return False
            [version] = crystal_stack.management("GET", "/models/crystal_pytorch").json()
            return [w["status"] for w in version["workers"]] == ["READY", "READY"]

        wait_until(scaled_back, timeout_s=90)
        assert post(crystal_stack, "/pytorch").status_code == 200
    finally:
        make_scale(crystal_stack, "crystal_pytorch", 1)

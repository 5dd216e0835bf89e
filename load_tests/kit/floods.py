"""Hostile clients, shared by the live tests and `make overload`: one that holds idle
connections (reopening each one the server closes), a crowd polling one page (/metrics, the
documents, the v2 health page), and the probes
other clients keep sending meanwhile, each on a new connection as a kubelet or a load balancer
does."""

from __future__ import annotations

import contextlib
import multiprocessing
import selectors
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import requests


@dataclass
class IdleFlood:
    """What the idle-connection client managed: connections it held at most, and how many
    the server closed on it (each reopened at once)."""

    held_at_most: int = 0
    closed_by_server: int = 0
    refused: int = 0  # connects that failed or were reset at once


def _connect(port: int) -> socket.socket | None:
    try:
        connection = socket.create_connection(("127.0.0.1", port), timeout=2)
    except OSError:
        return None
    connection.setblocking(False)
    return connection


@contextlib.contextmanager
def idle_connections(port: int, count: int) -> Iterator[IdleFlood]:
    """While the block runs, hold `count` connections to `port` that never send a byte,
    reopening each one the server closes."""
    flood = IdleFlood()
    stop = threading.Event()

    def hold() -> None:
        selector = selectors.DefaultSelector()
        open_now = 0
        try:
            while not stop.is_set():
                while open_now < count and not stop.is_set():
                    connection = _connect(port)
                    if connection is None:
                        flood.refused += 1
                        break
                    selector.register(connection, selectors.EVENT_READ)
                    open_now += 1
                flood.held_at_most = max(flood.held_at_most, open_now)
                for key, _ in selector.select(timeout=0.05):
                    connection = key.fileobj
                    assert isinstance(connection, socket.socket)
                    with contextlib.suppress(OSError):
                        if connection.recv(1 << 16):
                            continue  # an answer to nothing: keep holding
                    selector.unregister(connection)
                    connection.close()
                    open_now -= 1
                    flood.closed_by_server += 1
        finally:
            for key in list(selector.get_map().values()):
                key.fileobj.close()  # type: ignore[union-attr]
            selector.close()

    thread = threading.Thread(target=hold, name="idle-flood", daemon=True)
    thread.start()
    try:
        yield flood
    finally:
        stop.set()
        thread.join(timeout=30)


@dataclass
class Probes:
    """Each probe's outcome: answered right within the deadline, or why not."""

    latencies_s: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def answered(self) -> int:
        """Probes answered right within the deadline."""
        return len(self.latencies_s)

    @property
    def total(self) -> int:
        """Probes sent."""
        return len(self.latencies_s) + len(self.failures)


def probe_for(
    seconds: float,
    every_s: float,
    send: Callable[[], requests.Response],
    right: Callable[[requests.Response], bool],
    deadline_s: float = 1.0,
) -> Probes:
    """Send a probe every `every_s` for `seconds`, each on a new connection; a probe counts as
    answered when `right(response)` holds within `deadline_s`."""
    probes = Probes()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.monotonic()
        try:
            response = send()
        except requests.RequestException as error:
            probes.failures.append(type(error).__name__)
        else:
            took = time.monotonic() - started
            if took > deadline_s:
                probes.failures.append(f"took {took:.2f} s")
            elif not right(response):
                probes.failures.append(f"HTTP {response.status_code}")
            else:
                probes.latencies_s.append(took)
        time.sleep(max(0.0, every_s - (time.monotonic() - started)))
    return probes


# What a right answer of each polled page holds (a crowd's 200 without it is a failure).
PAGE_MARKS = {
    "/metrics": "# TYPE modelserver_model_ready gauge",
    "/openapi.json": '"openapi"',
    "/docs": "swagger-ui",
    "/v2/health/ready": '"ready"',
}


@dataclass
class PageFlood:
    """What a crowd polling one page saw."""

    statuses: Counter[int] = field(default_factory=Counter)
    right_answers: int = 0
    refusals_as_json_with_retry_after: int = 0
    failures: list[str] = field(default_factory=list)


def _poll_page(url: str, mark: str, until: float, outcome: PageFlood, lock: threading.Lock) -> None:
    """One client: GET the page on one keep-alive connection, again and again."""
    with requests.Session() as session:
        while time.monotonic() < until:
            try:
                response = session.get(url, timeout=10)
            except requests.RequestException as error:
                with lock:
                    outcome.failures.append(type(error).__name__)
                continue
            with lock:
                _count(response, mark, outcome)


def _count(response: requests.Response, mark: str, outcome: PageFlood) -> None:
    """The page's answer, a JSON 503 with Retry-After (a refusal), or a failure."""
    outcome.statuses[response.status_code] += 1
    if response.status_code == 200 and mark in response.text:
        outcome.right_answers += 1
        return
    if response.status_code == 503:
        try:
            is_error = "error" in response.json()
        except ValueError:
            is_error = False
        if is_error and response.headers.get("retry-after"):
            outcome.refusals_as_json_with_retry_after += 1
            return
    outcome.failures.append(f"HTTP {response.status_code}: {response.text[:80]!r}")


def _flood_page(url: str, mark: str, clients: int, seconds: float, results: Any) -> None:
    outcome = PageFlood()
    lock = threading.Lock()
    until = time.monotonic() + seconds
    threads = [
        threading.Thread(target=_poll_page, args=(url, mark, until, outcome, lock), daemon=True)
        for _ in range(clients)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=seconds + 30)
    results.put(outcome)


@contextlib.contextmanager
def page_crowd(url: str, clients: int, seconds: float) -> Iterator[PageFlood]:
    """`clients` keep-alive clients polling `url` (one of PAGE_MARKS's pages) for `seconds`, in
    a child process (so their threads never hold the prober's interpreter lock: the probes time
    the server). The outcome is filled in when the block ends, after the crowd has left."""
    mark = next(mark for page, mark in PAGE_MARKS.items() if url.endswith(page))
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    process = context.Process(target=_flood_page, args=(url, mark, clients, seconds, results), daemon=True)
    process.start()
    outcome = PageFlood()
    try:
        yield outcome
        found = results.get(timeout=seconds + 60)
        outcome.statuses, outcome.failures = found.statuses, found.failures
        outcome.right_answers = found.right_answers
        outcome.refusals_as_json_with_retry_after = found.refusals_as_json_with_retry_after
    finally:
        process.join(timeout=60)
        if process.is_alive():
            process.kill()

"""Hostile clients, shared by the live tests and `make overload`: one that holds idle
connections (reopening each one the server closes), one whose connections send slowly (headers
a line at a time, or bodies that never end), a crowd polling one page (/metrics, the documents,
the v2 health page), and the probes other clients keep sending meanwhile, each on a new
connection as a kubelet or a load balancer does."""

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

from modelserver.launcher.processes import raise_open_files_limit


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
class SlowFlood:
    """What a slow sender managed: connections it held at most, how many the server closed on
    it (each reopened at once), the answers it got before a close, and connects that failed."""

    held_at_most: int = 0
    closed_by_server: int = 0
    refused: int = 0
    answers: Counter[str] = field(default_factory=Counter)


# The crowd's own address (any 127/8 address reaches a loopback listener on Linux): one client,
# apart from the probes' 127.0.0.1, as a remote attacker is apart from a kubelet.
CROWD_SOURCE = "127.0.0.2"


class _SlowSenders:
    """`count` connections from CROWD_SOURCE that each send `opening` as fast as the server
    reads it, then `drip` every `drip_every_s` (nothing if empty), each reopened when the server
    closes it. One selector loop; what is left to send is a view, never a copy."""

    def __init__(self, port: int, count: int, opening: bytes, drip: bytes, drip_every_s: float) -> None:
        self.port, self.count, self.opening = port, count, memoryview(opening)
        self.drip, self.drip_every_s = memoryview(drip), drip_every_s
        self.flood = SlowFlood()
        self.selector = selectors.DefaultSelector()
        self.pending: dict[socket.socket, memoryview] = {}
        self.next_drip: dict[socket.socket, float] = {}
        self.answers: dict[socket.socket, bytes] = {}

    def open_up_to_count(self, until: float) -> None:
        """Open connections until `count` are held (or one fails)."""
        while len(self.pending) < self.count and time.monotonic() < until:
            try:
                connection = socket.create_connection(
                    ("127.0.0.1", self.port), timeout=2, source_address=(CROWD_SOURCE, 0)
                )
            except OSError:
                self.flood.refused += 1
                return
            connection.setblocking(False)
            self.pending[connection] = self.opening
            self.next_drip[connection] = time.monotonic() + self.drip_every_s
            self.answers[connection] = b""
            self.selector.register(connection, selectors.EVENT_READ | selectors.EVENT_WRITE)
        self.flood.held_at_most = max(self.flood.held_at_most, len(self.pending))

    def close(self, connection: socket.socket) -> None:
        """The server closed it: note its answer, if any."""
        answer = self.answers.pop(connection)
        if answer:
            self.flood.answers[answer.split(b"\r\n", 1)[0].decode("latin-1")[:40]] += 1
        del self.pending[connection], self.next_drip[connection]
        self.selector.unregister(connection)
        connection.close()
        self.flood.closed_by_server += 1

    def send(self, connection: socket.socket) -> None:
        """Send what may be sent now; wait for writability while some is left."""
        try:
            sent = connection.send(self.pending[connection])
        except BlockingIOError:
            sent = 0
        except OSError:
            self.close(connection)
            return
        left = self.pending[connection][sent:]
        self.pending[connection] = left
        wanted = selectors.EVENT_READ | (selectors.EVENT_WRITE if left else 0)
        if self.selector.get_key(connection).events != wanted:
            self.selector.modify(connection, wanted)

    def serve_events(self) -> None:
        """Read what the server says (a close reopens), write what is waiting."""
        for key, events in self.selector.select(timeout=0.05):
            connection = key.fileobj
            assert isinstance(connection, socket.socket)
            if events & selectors.EVENT_READ:
                try:
                    data = connection.recv(1 << 16)
                except OSError:
                    data = b""
                if not data:
                    self.close(connection)
                    continue
                self.answers[connection] += data[:200]
            if events & selectors.EVENT_WRITE:
                self.send(connection)

    def drip_due(self) -> None:
        """Connections that have sent everything send their next drip when it is due."""
        now = time.monotonic()
        for connection, due in list(self.next_drip.items()):
            if due <= now and connection in self.pending and not self.pending[connection]:
                self.pending[connection], self.next_drip[connection] = self.drip, now + self.drip_every_s
                self.send(connection)

    def run(self, seconds: float) -> SlowFlood:
        """Hold the crowd for `seconds`."""
        until = time.monotonic() + seconds
        try:
            while time.monotonic() < until:
                self.open_up_to_count(until)
                self.serve_events()
                if self.drip:
                    self.drip_due()
        finally:
            for connection in self.pending:
                connection.close()
            self.selector.close()
        return self.flood


@contextlib.contextmanager
def _in_child(
    target: Callable[..., None], arguments: tuple[Any, ...], outcome: Any, seconds: float
) -> Iterator[Any]:
    """Run a crowd, `target(*arguments, results)`, in a forked child for about `seconds`, so its
    threads and loops never hold the prober's interpreter lock (the probes time the server).
    `outcome` is filled in from what the child puts in `results` when the block ends."""
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    process = context.Process(target=target, args=(*arguments, results), daemon=True)
    process.start()
    try:
        yield outcome
        vars(outcome).update(vars(results.get(timeout=seconds + 60)))
    finally:
        process.join(timeout=60)
        if process.is_alive():
            process.kill()


def _slow_senders(arguments: tuple[int, int, bytes, bytes, float], seconds: float, results: Any) -> None:
    """The crowd, in its own process."""
    raise_open_files_limit(arguments[1] + 256)
    results.put(_SlowSenders(*arguments).run(seconds))


@contextlib.contextmanager
def slow_senders(
    port: int, count: int, opening: bytes, seconds: float, drip: bytes = b"", drip_every_s: float = 2.0
) -> Iterator[SlowFlood]:
    """While the block runs (at most `seconds`), one client (CROWD_SOURCE) holds `count`
    connections that each send `opening`, then `drip` every `drip_every_s`, reopening each one
    the server closes. In a child process, so its loop never holds the prober's interpreter
    lock; the outcome is filled in when the block ends."""
    arguments = ((port, count, opening, drip, drip_every_s), seconds)
    with _in_child(_slow_senders, arguments, SlowFlood(), seconds) as outcome:
        yield outcome


def slow_headers_opening(path: str) -> bytes:
    """A POST's request line and first header: the rest of its headers drip in."""
    return f"POST {path} HTTP/1.1\r\nHost: modelserver\r\n".encode()


SLOW_HEADER_DRIP = b"X-Slow: 1\r\n"
# The crowds of the hostile-client audit, as the tests and `make overload` send them: 8,300
# connections dripping a header line every 2 s, and 560 connections each holding all of a
# 1 MiB body but its last byte.
SLOW_HEADER_CONNECTIONS = 8300
UNFINISHED_BODIES = 560
UNFINISHED_BODY_BYTES = 1 << 20


def unfinished_body_opening(path: str, body_bytes: int) -> bytes:
    """A POST's headers announcing `body_bytes` and all of its body but the last byte."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: modelserver\r\nContent-Type: application/json\r\n"
        f"Content-Length: {body_bytes}\r\n\r\n"
    )
    return head.encode() + b" " * (body_bytes - 1)


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
    [mark] = [mark for page, mark in PAGE_MARKS.items() if url.endswith(page)]
    with _in_child(_flood_page, (url, mark, clients, seconds), PageFlood(), seconds) as outcome:
        yield outcome

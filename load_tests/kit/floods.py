"""Hostile clients, shared by the live tests and `make overload`: one that holds idle
connections (reopening each one the server closes), and the probes other clients keep sending
meanwhile, each on a new connection as a kubelet or a load balancer does."""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

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

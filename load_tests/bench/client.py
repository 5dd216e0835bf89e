"""A light closed-loop HTTP/1.1 load generator (asyncio + uvloop), for rates locust cannot reach.

locust's FastHttpUser tops out near 2,000 requests/s in one process on these 2-core machines
(measured against an Envoy direct response: the client used a whole core, the server little),
so it would measure itself, not the servers, on the crystal routes. This client spends a few
tens of microseconds per request: keep-alive connections, requests encoded ahead of time, a
minimal response parser (Content-Length or chunked). Every answer is still checked: status 200
and a well-formed JSON body, else it counts as an error.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import uvloop

from load_tests.bench.scenarios import Scenario

TIMEOUT_S = 60.0
Record = Callable[[float, str], None]  # (latency in ms, failure reason or "")


def encode_requests(scenario: Scenario, host: str, count: int = 64) -> list[bytes]:
    """`count` ready-to-send requests with bodies drawn from the scenario."""
    requests = []
    for _ in range(count):
        body = json.dumps(scenario.body()).encode()
        head = (
            f"POST {scenario.path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        requests.append(head.encode() + body)
    return requests


class ResponseParser:
    """Incremental HTTP/1.1 response parser: status line, headers, then the body."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.closes = False  # the last response said `Connection: close`
        self.headers: dict[str, str] = {}  # the last response's headers, names in lower case

    def feed(self, data: bytes) -> tuple[int, bytes] | None:
        """Add bytes; return (status, body) once a whole response is in, else None."""
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
        status = int(head[0].split(" ", 2)[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:])}
        start = end + 4
        self.headers = headers
        self.closes = headers.get("connection", "").lower() == "close"
        if headers.get("transfer-encoding", "").lower() == "chunked":
            return self._chunked(status, start)
        length = int(headers.get("content-length", "0"))
        if len(self.buffer) < start + length:
            return None
        body = bytes(self.buffer[start : start + length])
        del self.buffer[: start + length]
        return status, body

    def _chunked(self, status: int, start: int) -> tuple[int, bytes] | None:
        body = bytearray()
        position = start
        while True:
            line_end = self.buffer.find(b"\r\n", position)
            if line_end < 0:
                return None
            size = int(bytes(self.buffer[position:line_end]).split(b";")[0], 16)
            chunk_start = line_end + 2
            if len(self.buffer) < chunk_start + size + 2:
                return None
            if size == 0:
                del self.buffer[: chunk_start + 2]
                return status, bytes(body)
            body += self.buffer[chunk_start : chunk_start + size]
            position = chunk_start + size + 2


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes, bool]:
    """Read one whole answer from a stream: (status, headers, body, whether the server closes)."""
    parser = ResponseParser()
    while True:
        data = await reader.read(65536)
        if not data:
            raise ConnectionResetError("the server closed the connection before the answer")
        answer = parser.feed(data)
        if answer is not None:
            return answer[0], parser.headers, answer[1], parser.closes


class Connection(asyncio.Protocol):
    """One keep-alive connection that sends the next request as soon as an answer is in."""

    def __init__(self, requests: list[bytes], scenario: Scenario, record: Record) -> None:
        self._requests = requests
        self._scenario = scenario
        self._record = record
        self._parser = ResponseParser()
        self._transport: asyncio.Transport | None = None
        self._sent = 0.0
        self._waiting = False
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.stopping = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._send()

    def _send(self) -> None:
        if self.stopping or self._transport is None:
            return
        self._sent = time.perf_counter()
        self._waiting = True
        self._transport.write(random.choice(self._requests))

    def data_received(self, data: bytes) -> None:
        answer = self._parser.feed(data)
        if answer is None:
            return
        latency_ms = (time.perf_counter() - self._sent) * 1000
        self._waiting = False
        status, body = answer
        self._record(latency_ms, self._check(status, body))
        if self._parser.closes and self._transport is not None:
            self._transport.close()  # the client loop reconnects
        else:
            self._send()

    def _check(self, status: int, body: bytes) -> str:
        if status != 200:
            return f"HTTP {status}"
        try:
            return "" if self._scenario.answer_ok(json.loads(body)) else "malformed answer"
        except ValueError:
            return "answer is not JSON"

    def close(self, timeout_s: float) -> None:
        """Stop sending; a request still unanswered after `timeout_s` counts as timed out."""
        self.stopping = True
        waited = time.perf_counter() - self._sent
        if self._waiting and waited > timeout_s:
            self._record(waited * 1000, "timeout")
        if self._transport is not None:
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        # A server may close after an answer (gunicorn's sync workers do): reconnect, no error.
        if self._waiting and not self.stopping:
            self._record((time.perf_counter() - self._sent) * 1000, "connection closed")
        if not self.closed.done():
            self.closed.set_result(None)


async def _client(url: str, scenario: Scenario, record: Record, stop: asyncio.Event) -> None:
    """One client: (re)connect and keep sending until `stop` is set."""
    parts = urlsplit(url)
    requests = encode_requests(scenario, parts.netloc)
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        try:
            _, protocol = await loop.create_connection(
                lambda: Connection(requests, scenario, record), parts.hostname, parts.port
            )
        except OSError as error:
            record(0.0, f"connect failed: {type(error).__name__}")
            await asyncio.sleep(0.1)
            continue
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait([protocol.closed, stopped], return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set():
            protocol.close(TIMEOUT_S)
        stopped.cancel()


async def _run(url: str, scenario: Scenario, users: int, record: Record, timeline: Any) -> None:
    stop = asyncio.Event()
    clients = [asyncio.ensure_future(_client(url, scenario, record, stop)) for _ in range(users)]
    await timeline(asyncio.sleep)
    stop.set()
    await asyncio.wait(clients, timeout=5)


def run_clients(url: str, scenario: Scenario, users: int, record: Record, timeline: Any) -> None:
    """Run `users` clients until the awaitable `timeline(sleep)` finishes."""
    uvloop.run(_run(url, scenario, users, record, timeline))

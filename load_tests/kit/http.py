"""The one keep-alive HTTP/1.1 client of the load tools (asyncio; uvloop where the caller runs it).

locust's FastHttpUser tops out near 2,000 requests/s in one process on these 2-core machines, so
it would measure itself, not the servers, on the crystal routes. This client spends a few tens
of microseconds per request: requests encoded ahead of time, one connection kept open until the
server closes it, a minimal response parser (Content-Length or chunked), and the moment the
answer was whole taken inside the parser's callback, so scheduling never counts as latency.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import urlsplit


@dataclass(frozen=True)
class PreparedRequest:
    """A request ready to send, and the JSON body in it (the answer check needs it)."""

    body: dict[str, Any]
    wire: bytes


def encode_post(path: str, body: dict[str, Any], host: str) -> bytes:
    """An HTTP/1.1 POST of `body` as JSON, with its length."""
    payload = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


def prepare_requests(
    path: str, make_body: Callable[[], dict[str, Any]], host: str, count: int = 64
) -> list[PreparedRequest]:
    """`count` ready-to-send POSTs to `path`, with bodies drawn from `make_body`."""
    bodies = [make_body() for _ in range(count)]
    return [PreparedRequest(body, encode_post(path, body, host)) for body in bodies]


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


class Reply(NamedTuple):
    """One whole answer, and when it was whole (`time.perf_counter()`); a tuple, the cheapest
    object to make once per request."""

    status: int
    headers: dict[str, str]
    body: bytes
    received_s: float


class _Connection(asyncio.Protocol):
    """One open connection: a request goes out, its answer resolves the waiting future."""

    def __init__(self) -> None:
        self._parser = ResponseParser()
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[Reply] | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def send(self, request: bytes) -> asyncio.Future[Reply]:
        """Write one request; the future is its answer."""
        assert self._transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        self._transport.write(request)
        return self._waiter

    def data_received(self, data: bytes) -> None:
        answer = self._parser.feed(data)
        if answer is None or self._waiter is None or self._waiter.done():
            return
        received_s = time.perf_counter()
        self._waiter.set_result(Reply(answer[0], self._parser.headers, answer[1], received_s))
        if self._parser.closes:
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self._waiter is not None and not self._waiter.done():
            error = exc or ConnectionResetError("the server closed the connection before the answer")
            self._waiter.set_exception(error)

    def close(self) -> None:
        """Close the connection; a request still waiting fails with ConnectionResetError."""
        self.lost = True
        if self._transport is not None:
            self._transport.close()


class KeepAliveClient:
    """One client's connection to one server, reused for request after request, opened again
    when the server closed it (some servers close after every answer) or a request failed."""

    def __init__(self, host: str, port: int) -> None:
        self._host, self._port = host, port
        self._connection: _Connection | None = None

    @classmethod
    def for_url(cls, url: str) -> KeepAliveClient:
        """A client of the server at `url` (scheme://host:port)."""
        parts = urlsplit(url)
        return cls(parts.hostname or "127.0.0.1", parts.port or 80)

    @property
    def connected(self) -> bool:
        """Whether a connection is open for the next request."""
        return self._connection is not None and not self._connection.lost

    async def connect(self) -> None:
        """Open the connection unless one is open; an OSError says it could not be."""
        if not self.connected:
            _, self._connection = await asyncio.get_running_loop().create_connection(
                _Connection, self._host, self._port
            )

    async def exchange(self, request: bytes) -> Reply:
        """Send one request and wait for its whole answer. A failure (OSError, or a cancelled
        wait) closes the connection: what is still in it belongs to no later request."""
        if not self.connected:
            await self.connect()
        assert self._connection is not None
        try:
            return await self._connection.send(request)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Close the connection (the next request opens another)."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None


class ClientPool:
    """Keep-alive clients for an open loop, where requests overlap: each takes an idle client,
    or a new one, and hands it back for the next once its answer is whole."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._idle: list[KeepAliveClient] = []

    async def exchange(self, request: bytes) -> Reply:
        """One request on a client of its own; a failed client is not kept."""
        client = self._idle.pop() if self._idle else KeepAliveClient.for_url(self._url)
        reply = await client.exchange(request)
        self._idle.append(client)
        return reply

"""HTTP/1.0 and HTTP/2 on the public port, spoken as such clients speak them (raw sockets and the
`h2` protocol library): both are served, and HTTP/2 advertises the stream and window limits
the config sets, so streams x body limit fits Envoy's heap."""

from __future__ import annotations

import json
import socket
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import pytest

from load_tests.kit.routes import BRIEF_ROWS, crystal_answer_is_right
from load_tests.kit.stack import Launcher
from modelserver.launcher.envoy.config import H2_MAX_CONCURRENT_STREAMS, H2_STREAM_WINDOW_BYTES

BODY = json.dumps({"crystalData": BRIEF_ROWS}).encode()


def http10(port: int, requests: list[bytes], timeout_s: float = 20.0) -> bytes:
    """Send HTTP/1.0 requests on one connection; everything the server sent until it closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as connection:
        for request in requests:
            connection.sendall(request)
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
    return received


def post10(path: str, body: bytes, keep_alive: bool = False) -> bytes:
    """An HTTP/1.0 POST as `ab -p` sends it: no Host header, Content-Length given."""
    connection = b"Connection: keep-alive\r\n" if keep_alive else b""
    head = f"POST {path} HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + connection + b"\r\n" + body


def responses(raw: bytes) -> list[tuple[str, dict[str, str], bytes]]:
    """Split what the server sent into (status line, headers, body) by Content-Length."""
    found = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        status, *lines = head.decode("latin-1").split("\r\n")
        headers = {key.lower(): value.strip() for key, _, value in (line.partition(":") for line in lines)}
        length = int(headers.get("content-length", len(rest)))
        found.append((status, headers, rest[:length]))
        raw = rest[length:]
    return found


def test_an_http10_client_is_served_and_the_connection_closes(stack: Launcher) -> None:
    answered = responses(http10(stack.ports.public, [post10("/sklearn", BODY)]))
    assert len(answered) == 1, answered
    status, headers, body = answered[0]
    assert status.split()[1] == "200", (status, body)
    assert headers["content-type"].startswith("application/json")
    assert crystal_answer_is_right({"crystalData": BRIEF_ROWS}, json.loads(body))
    health = http10(stack.ports.public, [b"GET /healthcheck HTTP/1.0\r\n\r\n"])
    assert len(responses(health)) == 1
    status, _, body = responses(health)[0]
    assert status.split()[1] == "200" and json.loads(body)["status"] == "Healthy"


def read_one(connection: socket.socket) -> tuple[str, dict[str, str], bytes]:
    """One whole response (headers, then Content-Length bytes) from an open connection."""
    received = b""
    while True:
        if b"\r\n\r\n" in received:
            status, headers, body = responses(received)[0]
            if len(body) >= int(headers["content-length"]):
                return status, headers, body
        chunk = connection.recv(65536)
        assert chunk, "the server closed a keep-alive HTTP/1.0 connection"
        received += chunk


def test_an_http10_client_asking_for_keep_alive_gets_it(stack: Launcher) -> None:
    with socket.create_connection(("127.0.0.1", stack.ports.public), timeout=20) as connection:
        answers = []
        for _ in range(2):  # the second request on the same connection: it was kept open
            connection.sendall(post10("/pytorch", BODY, keep_alive=True))
            answers.append(read_one(connection))
    for status, headers, body in answers:
        assert status.split()[1] == "200" and headers.get("connection", "").lower() == "keep-alive"
        assert crystal_answer_is_right({"crystalData": BRIEF_ROWS}, json.loads(body))


class H2Client:
    """HTTP/2 with prior knowledge (cleartext), as gRPC and curl --http2-prior-knowledge speak it."""

    def __init__(self, port: int) -> None:
        self.socket = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.connection.initiate_connection()
        self.socket.sendall(self.connection.data_to_send())
        self.events: list[Any] = []
        self.receive_until(lambda: self.connection.remote_settings.max_concurrent_streams < 2**31)

    def receive_until(self, done: Any) -> None:
        """Read frames until `done()` holds (the server's settings, a stream's end)."""
        while not done():
            data = self.socket.recv(65536)
            assert data, "the server closed the HTTP/2 connection"
            self.events += self.connection.receive_data(data)
            self.socket.sendall(self.connection.data_to_send())

    def post(self, path: str, body: bytes) -> int:
        """Open a stream with a POST; its id."""
        stream = self.connection.get_next_available_stream_id()
        headers = [
            (":method", "POST"),
            (":path", path),
            (":scheme", "http"),
            (":authority", "localhost"),
            ("content-type", "application/json"),
            ("content-length", str(len(body))),
        ]
        self.connection.send_headers(stream, headers)
        self.connection.send_data(stream, body, end_stream=True)
        self.socket.sendall(self.connection.data_to_send())
        return stream

    def answer(self, stream: int) -> tuple[int, bytes]:
        """The status and body of a stream, once it ended."""

        def ended() -> bool:
            return any(isinstance(e, h2.events.StreamEnded) and e.stream_id == stream for e in self.events)

        self.receive_until(ended)
        status = next(
            int(dict(e.headers)[b":status"])
            for e in self.events
            if isinstance(e, h2.events.ResponseReceived) and e.stream_id == stream
        )
        body = b"".join(
            e.data for e in self.events if isinstance(e, h2.events.DataReceived) and e.stream_id == stream
        )
        return status, body


def test_http2_is_served_with_conservative_stream_and_window_limits(stack: Launcher) -> None:
    client = H2Client(stack.ports.public)
    try:
        settings = client.connection.remote_settings
        assert settings.max_concurrent_streams == H2_MAX_CONCURRENT_STREAMS
        assert settings.initial_window_size == H2_STREAM_WINDOW_BYTES
        streams = [client.post("/sklearn", BODY) for _ in range(H2_MAX_CONCURRENT_STREAMS)]
        # The server's limit binds the client: one stream more than it allows cannot be opened.
        with pytest.raises(h2.exceptions.TooManyStreamsError):
            client.post("/sklearn", BODY)
        for stream in streams:
            status, body = client.answer(stream)
            assert status == 200 and crystal_answer_is_right({"crystalData": BRIEF_ROWS}, json.loads(body))
    finally:
        client.socket.close()

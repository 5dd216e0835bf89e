"""The public port at its edges: methods nobody routes, path spellings, headers a client should
not control, and streaming clients that stall or vanish.

Paths are sent byte for byte (http.client and raw sockets: requests would normalise them), and
every answer is checked by its body: the right model answer, Envoy's own JSON error, or no body
at all for HEAD. Nothing here may reach TorchServe's own paths, nor be a 5xx.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import struct
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from load_tests.kit.routes import BRIEF_ROWS, crystal_answer_is_right, fill_mask_answer_is_right
from load_tests.kit.stack import Launcher
from modelserver.catalogue import Catalogue
from tests.helpers import answers_close
from tests.live.test_metrics_and_scaling import scrape, value, wait_for

pytestmark = pytest.mark.timeout(60, func_only=True)

# The stack serves the project's catalogue plus one model that raises (tests/live/conftest.py).
MODELS = sorted([*Catalogue.load().models, "crystal_broken"])
POST_ROUTES = [
    "/sklearn",
    "/pytorch",
    "/astromech",
    "/inference",
    "/predict",
    "/prediction",
    *[f"/predictions/{name}" for name in MODELS],
]
GET_PAGES = ["/healthcheck", "/docs", "/openapi.json"]
UNKNOWN = "/no/such/route"
ALLOWED = {**dict.fromkeys(POST_ROUTES, "POST"), **dict.fromkeys(GET_PAGES, "GET"), UNKNOWN: ""}
NO_ROUTE = "no such route; see the README for the public API"
MALFORMED = "the request is malformed: its path or headers are not valid HTTP"
CRYSTAL = {"crystalData": BRIEF_ROWS}
FILL_MASK = {"text": "the [MASK] sat on the mat.", "top_k": 3}
PROMPT_S = 5.0  # a normal request's answer on the tiny models takes milliseconds


@dataclass(frozen=True)
class Reply:
    """One HTTP answer as it came over the wire."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body)


def send(
    stack: Launcher, method: str, path: str, body: bytes = b"", headers: Mapping[str, str] | None = None
) -> Reply:
    """`method path` exactly as written (no client-side normalisation), on a fresh connection."""
    connection = http.client.HTTPConnection("127.0.0.1", stack.ports.public, timeout=30)
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        sent = {"Content-Type": "application/json", **(headers or {})}
        if body or method == "POST":
            sent["Content-Length"] = str(len(body))
        for key, header_value in sent.items():
            connection.putheader(key, header_value)
        connection.endheaders(body or None)
        response = connection.getresponse()
        data = response.read()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
    finally:
        connection.close()


def check_json_error(reply: Reply, status: int, message: str | None = None) -> str:
    """Envoy's or a handler's refusal: the status, a JSON object with an `error` sentence."""
    assert reply.status == status, (status, reply)
    assert reply.headers["content-type"].startswith("application/json"), reply.headers
    answer = reply.json()
    assert isinstance(answer, dict) and isinstance(answer.get("error"), str) and answer["error"].strip()
    assert answer.get("code", status) == status
    if message is not None:
        assert answer["error"] == message, answer
    return str(answer["error"])


def answer_of(stack: Launcher, path: str, body: Mapping[str, Any]) -> Any:
    """A good request's answer on its canonical route."""
    response = requests.post(f"{stack.url}{path}", json=body, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(name="crystal", scope="module")
def fixture_crystal(stack: Launcher) -> Any:
    """/sklearn's answer to the brief's rows, as every spelling that is served must give it."""
    answer = answer_of(stack, "/sklearn", CRYSTAL)
    assert crystal_answer_is_right(CRYSTAL, answer)
    return answer


# ---------------------------------------------------------------------------------------------
# Methods nobody routes: OPTIONS and HEAD.


@pytest.mark.parametrize("path", [*ALLOWED])
def test_options_is_a_json_405_naming_the_method_or_a_404(stack: Launcher, path: str) -> None:
    reply = send(stack, "OPTIONS", path)
    if ALLOWED[path]:
        check_json_error(reply, 405, f"method not allowed; use {ALLOWED[path]}")
        assert reply.headers["allow"] == ALLOWED[path]
    else:
        check_json_error(reply, 404, NO_ROUTE)
        assert "allow" not in reply.headers


@pytest.mark.parametrize("path", [*ALLOWED])
def test_head_is_answered_like_options_but_without_a_body(stack: Launcher, path: str) -> None:
    """HEAD is not served, even on the GET pages (405, `Allow: GET`, as for every other wrong
    method): the status and headers of the refusal, its length, and not one byte of body. Sent
    on a kept-alive connection followed by a second request: a stray body would be read as the
    start of the second answer."""
    options = send(stack, "OPTIONS", path)
    head = f"HEAD {path} HTTP/1.1\r\nHost: modelserver\r\n\r\n".encode()
    then = b"GET /healthcheck HTTP/1.1\r\nHost: modelserver\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", stack.ports.public), timeout=10) as sock:
        sock.sendall(head)
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(4096)
            assert chunk, received
            received += chunk
        sock.sendall(then)
        while chunk := sock.recv(65536):
            received += chunk
    header_block, _, rest = received.partition(b"\r\n\r\n")
    status_line, *lines = header_block.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    assert int(status_line.split()[1]) == options.status, status_line
    assert headers.get("allow") == options.headers.get("allow")
    assert headers["content-type"] == options.headers["content-type"]
    assert int(headers["content-length"]) == len(options.body)
    # The very next bytes are the second answer: HEAD's own answer had no body.
    assert rest.startswith(b"HTTP/1.1 200 OK\r\n"), rest[:200]
    assert rest.partition(b"\r\n\r\n")[2].startswith(b'{"status": "Healthy"'), rest[:400]


# ---------------------------------------------------------------------------------------------
# Spellings of a path: served exactly like the canonical route, or refused by Envoy itself.

SERVED_SPELLINGS = ["//sklearn", "/sklearn?x=1", "/%73klearn", "/./sklearn", "/nothing/../sklearn"]
NOT_ROUTES = [
    "/sklearn/",
    "/sklearn;x=1",
    "/SKLEARN",
    "/predictions/crystal_sklearn/1.0",
    "/predictions/crystal_sklearn/",
    "/predictions/../ping",
    "/predictions/%2e%2e/ping",
    "/predictions/../models",
    "/predictions/%2E%2E/api-description",
    "/predictions/crystal_sklearn/1.0/explain",
]
MALFORMED_PATHS = ["/sklearn%2F", "/predictions/crystal_sklearn%2F1.0", "/sklearn%5C", "/sklearn#x"]


@pytest.mark.parametrize("path", SERVED_SPELLINGS)
def test_equivalent_spellings_get_the_canonical_answer(stack: Launcher, crystal: Any, path: str) -> None:
    """Merged slashes, dot segments, a query and escaped letters name /sklearn itself."""
    reply = send(stack, "POST", path, json.dumps(CRYSTAL).encode())
    assert reply.status == 200, reply
    assert answers_close(reply.json(), crystal), reply.json()


@pytest.mark.parametrize("method", ["POST", "GET"])
@pytest.mark.parametrize("path", NOT_ROUTES)
def test_other_spellings_are_envoys_own_404(stack: Launcher, path: str, method: str) -> None:
    """Trailing slashes, matrix parameters, other cases, TorchServe's version paths and dot
    segments towards its /ping, /models or /api-description: Envoy's own 404 (TorchServe's
    answers would be its health, its models, or its own message), never a TorchServe path."""
    reply = send(stack, method, path, json.dumps(CRYSTAL).encode() if method == "POST" else b"")
    check_json_error(reply, 404, NO_ROUTE)


@pytest.mark.parametrize("path", MALFORMED_PATHS)
def test_escaped_slashes_backslashes_and_fragments_are_400_with_a_sentence(
    stack: Launcher, path: str
) -> None:
    """An escaped slash could name another path after decoding (`crystal_sklearn%2F1.0` is
    TorchServe's version path): Envoy refuses it before routing, saying why."""
    check_json_error(send(stack, "POST", path, json.dumps(CRYSTAL).encode()), 400, MALFORMED)


# ---------------------------------------------------------------------------------------------
# Headers a client should not control.

SPOOFED: dict[str, dict[str, str]] = {
    "upstream timeout 1 ms": {"x-envoy-upstream-rq-timeout-ms": "1"},
    "per-try timeout 1 ms": {"x-envoy-upstream-rq-per-try-timeout-ms": "1"},
    "timeout alt response": {
        "x-envoy-upstream-rq-timeout-ms": "1",
        "x-envoy-upstream-rq-timeout-alt-response": "204",
    },
    "expected timeout": {"x-envoy-expected-rq-timeout-ms": "1"},
    "retries": {"x-envoy-retry-on": "5xx", "x-envoy-max-retries": "10"},
    "original path": {"x-envoy-original-path": "/ping"},
    "force trace": {"x-envoy-force-trace": "true"},
    "internal": {"x-envoy-internal": "true"},
    "forwarded for": {"x-forwarded-for": "10.0.0.1, 127.0.0.1"},
    "request id": {"x-request-id": "11111111-2222-3333-4444-555555555555"},
    "wrong token": {"authorization": "Bearer wrong"},
    "basic auth": {"authorization": "Basic dXNlcjpwYXNz"},
}
# A client claiming to be a private (internal-looking) address along with every x-envoy-* header.
INTERNAL_LOOKING = {"x-forwarded-for": "10.0.0.1", "x-envoy-internal": "true"}


@pytest.mark.parametrize("internal", [False, True], ids=["external", "claims internal"])
@pytest.mark.parametrize("headers", list(SPOOFED.values()), ids=list(SPOOFED))
def test_spoofed_headers_change_no_answer(
    stack: Launcher, crystal: Any, headers: dict[str, str], internal: bool
) -> None:
    """Each header Envoy would obey from a trusted hop (timeouts, retries, paths) or that
    TorchServe reads (its key) leaves the answer and its timing as they are: a 1 ms timeout
    would be a 504, an original path or a client's token a TorchServe error."""
    sent = {**headers, **(INTERNAL_LOOKING if internal else {})}
    fill_mask = answer_of(stack, "/inference", FILL_MASK)
    for path, body, expected in [("/sklearn", CRYSTAL, crystal), ("/inference", FILL_MASK, fill_mask)]:
        started = time.monotonic()
        reply = send(stack, "POST", path, json.dumps(body).encode(), sent)
        assert reply.status == 200, (path, reply)
        assert answers_close(reply.json(), expected), (path, reply.body[:300])
        assert time.monotonic() - started < PROMPT_S
        assert "x-envoy-upstream-service-time" not in reply.headers


def test_two_authorization_headers_are_both_replaced(stack: Launcher, crystal: Any) -> None:
    """A client's tokens, however many, never reach TorchServe: Envoy's key replaces them all."""
    connection = http.client.HTTPConnection("127.0.0.1", stack.ports.public, timeout=30)
    try:
        body = json.dumps(CRYSTAL).encode()
        connection.putrequest("POST", "/sklearn")
        for key, header_value in [
            ("Authorization", "Bearer wrong"),
            ("Authorization", "Bearer also-wrong"),
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
        ]:
            connection.putheader(key, header_value)
        connection.endheaders(body)
        response = connection.getresponse()
        assert response.status == 200
        assert answers_close(json.loads(response.read()), crystal)
    finally:
        connection.close()


def retries_of(stack: Launcher, model: str) -> float:
    """Envoy's retries towards `model` so far (a fresh reading: /metrics is shared for 1 s;
    the parser names counters `_total`, as Prometheus does)."""
    time.sleep(1.1)
    return value(scrape(stack), "envoy_cluster_upstream_rq_retry_total", envoy_cluster_name=f"model_{model}")


def test_spoofed_retry_headers_do_not_multiply_tries(stack: Launcher) -> None:
    """A model that fails is tried once (its 500 is its answer), whatever the client asks:
    Envoy drops the client's `x-envoy-*` retry headers."""
    body = json.dumps({"crystalData": [[0.1, 0.2, 0.3, 0.4]]}).encode()
    spoofed = {"x-envoy-retry-on": "5xx,retriable-4xx", "x-envoy-max-retries": "10", **INTERNAL_LOOKING}
    tries = []
    for headers in ({}, spoofed):
        before = retries_of(stack, "crystal_broken")
        reply = send(stack, "POST", "/predictions/crystal_broken", body, headers)
        check_json_error(reply, 500, "the crystal_broken model failed: ValueError")
        tries.append(retries_of(stack, "crystal_broken") - before)
    assert tries == [0, 0], tries


# ---------------------------------------------------------------------------------------------
# Streaming clients that stall or vanish.

STREAM_TEXTS = [
    f"the cat number {i} sat on the [MASK] while the weather was cold and grey" for i in range(64)
]
STREAM_BODY = json.dumps({"text": STREAM_TEXTS, "stream": True, "top_k": 31}).encode()


@contextlib.contextmanager
def streaming_client(stack: Launcher) -> Iterator[socket.socket]:
    """A connection that asked /predictions/fill_mask for a long NDJSON stream, with a 1 KiB
    receive buffer; closed with a reset (no orderly goodbye) when the block ends."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    sock.settimeout(20)
    try:
        sock.connect(("127.0.0.1", stack.ports.public))
        head = (
            "POST /predictions/fill_mask HTTP/1.1\r\nHost: modelserver\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(STREAM_BODY)}\r\n\r\n"
        )
        sock.sendall(head.encode() + STREAM_BODY)
        yield sock
    finally:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()


def fill_mask_workers(stack: Launcher) -> tuple[list[int], int]:
    """TorchServe's fill-mask workers (their pids, all READY) and its queued requests."""
    described = stack.management("GET", "/models/fill_mask").json()[0]
    assert all(worker["status"] == "READY" for worker in described["workers"]), described["workers"]
    return sorted(worker["pid"] for worker in described["workers"]), described["jobQueueStatus"][
        "pendingRequests"
    ]


def check_fill_mask_serves(stack: Launcher, expected: Any) -> None:
    """Normal requests get their right answer, each within PROMPT_S."""
    for _ in range(3):
        started = time.monotonic()
        answer = answer_of(stack, "/inference", FILL_MASK)
        assert time.monotonic() - started < PROMPT_S
        assert fill_mask_answer_is_right(FILL_MASK, answer) and answers_close(answer, expected), answer


def check_all_freed(stack: Launcher, pids: list[int]) -> None:
    """No request left at Envoy (the scrape is on the metrics listener) or TorchServe, the same
    workers."""

    def idle() -> bool:
        series = scrape(stack)
        upstream = value(series, "envoy_cluster_upstream_rq_active", envoy_cluster_name="model_fill_mask")
        public = value(series, "envoy_http_downstream_rq_active", envoy_http_conn_manager_prefix="public")
        return upstream == 0 and public == 0 and fill_mask_workers(stack) == (pids, 0)

    wait_for(idle, timeout_s=30)


def test_a_client_that_never_reads_its_stream_holds_no_worker(stack: Launcher) -> None:
    expected = answer_of(stack, "/inference", FILL_MASK)
    pids, _ = fill_mask_workers(stack)
    with streaming_client(stack) as sock:
        time.sleep(2)
        check_fill_mask_serves(stack, expected)  # while the stream is stuck in its buffers
        time.sleep(1)
        assert sock.recv(16).startswith(b"HTTP/1.1 200"), "the stream was not answered"
    check_all_freed(stack, pids)
    check_fill_mask_serves(stack, expected)


def test_a_client_that_leaves_mid_stream_holds_no_worker(stack: Launcher) -> None:
    expected = answer_of(stack, "/inference", FILL_MASK)
    pids, _ = fill_mask_workers(stack)
    with streaming_client(stack) as sock:
        received = b""
        while b'{"index":0,' not in received:
            chunk = sock.recv(1024)
            assert chunk, received
            received += chunk
        assert received.startswith(b"HTTP/1.1 200"), received[:200]
        assert b"application/x-ndjson" in received.partition(b"\r\n\r\n")[0]
    check_all_freed(stack, pids)
    check_fill_mask_serves(stack, expected)


@dataclass
class RawAnswer:
    """A response read off the socket, how long it took, and whether the server then closed."""

    status: int
    headers: dict[str, str]
    body: Any
    answered_s: float
    closed: bool


def raw_exchange(port: int, request: bytes, timeout_s: float = PROMPT_S) -> RawAnswer:
    """Send raw bytes; read one response (its Content-Length body), then wait for the close."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        started = time.monotonic()
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536) or b""
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        while len(body) < int(headers["content-length"]):
            body += sock.recv(65536)
        answered_s = time.monotonic() - started
        try:
            closed = sock.recv(1) == b""
        except OSError:
            closed = True
    return RawAnswer(int(lines[0].split()[1]), headers, json.loads(body), answered_s, closed)


@pytest.mark.parametrize("which", ["public", "prometheus"])
def test_connect_is_a_json_405_before_the_close(stack: Launcher, which: str) -> None:
    """A tunnel request is answered at once, on either port, never left hanging."""
    port = getattr(stack.ports, which)
    request = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
    answer = raw_exchange(port, request)
    assert answer.answered_s < 1.0 and answer.closed
    assert answer.status == 405 and answer.headers["allow"] == "GET, POST"
    assert answer.body == {
        "error": "CONNECT is not served: this is a model server, not a proxy",
        "type": "method_not_allowed",
        "code": 405,
    }


def test_an_upgrade_request_gets_a_sentence(stack: Launcher) -> None:
    response = requests.post(
        f"{stack.url}/sklearn",
        json=CRYSTAL,
        headers={"Upgrade": "websocket", "Connection": "Upgrade"},
        timeout=PROMPT_S,
    )
    assert response.status_code == 403
    assert "does not upgrade connections" in response.json()["error"], response.text
    assert response.json()["type"] == "not_supported", response.text

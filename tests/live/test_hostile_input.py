"""Hostile input on the live stack: what a fuzzer or an attacker sends, route by route.

Huge and endless numbers, deep nesting, bodies at and over the 1 MiB limit, invalid UTF-8, NUL
bytes, duplicate keys, wrong content types and encodings, too many or too large headers, bodies
that stop mid-stream, slow and stalled clients. Every refusal is a JSON object with an `error`
sentence and the documented status (422; 400 on /astromech when the model cannot be read; 405
on /prediction, as its spec says; 413 past 1 MiB; 431 for headers Envoy refuses), and after
every case the stack still gives the same answer to a good request as before it.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from load_tests.kit.routes import BRIEF_ROWS
from load_tests.kit.stack import Launcher
from modelserver.catalogue import Catalogue
from modelserver.errors import ErrorType
from modelserver.launcher.envoy.routes import BODY_LIMIT_BYTES, BUFFER_FILTER, RouteTable
from tests.helpers import answers_close, check_json_error, post
from tests.unit.test_validation_properties import assert_close

# Per test, not counting the session's stack start (a minute or two, under the global timeout).
pytestmark = pytest.mark.timeout(60, func_only=True)

LIMIT = BODY_LIMIT_BYTES  # the largest body limit, 1 MiB
ROW_TAIL = b", 0.12, 0.31, 0.09]]"


@dataclass(frozen=True)
class Route:
    """A public route, its data field, a good body, and how it refuses bad data."""

    path: str
    field: str
    good: dict[str, Any]
    refusal: int = 422
    # /astromech picks the model from the body before anything else: every body sent there
    # names it last, where Envoy finds it even in a body that is not strict JSON.
    selector: bytes = b""
    # A body the model cannot be read from: /astromech answers 400 before looking at the data.
    unreadable: int = 0

    @property
    def crystal(self) -> bool:
        """Whether the data is rows of numbers (else text)."""
        return self.field == "crystalData"

    def body(self, data: bytes) -> bytes:
        """A JSON object (as bytes) with `data` as the value of this route's field."""
        return b'{"' + self.field.encode() + b'": ' + data + self.selector + b"}"

    def value(self, data: bytes) -> bytes:
        """`data` (a JSON number or string) where this route's data goes: first in a crystal
        row, or as the text itself."""
        return b"[[" + data + ROW_TAIL if self.crystal else data

    @property
    def good_bytes(self) -> bytes:
        """The good request as a client sends it."""
        return json.dumps(self.good).encode()

    @property
    def refusal_of_garbage(self) -> int:
        """The status of a body that is no JSON object naming a model."""
        return self.unreadable or self.refusal


ROUTES = {
    route.path: route
    for route in [
        Route("/sklearn", "crystalData", {"crystalData": BRIEF_ROWS}),
        Route("/pytorch", "crystalData", {"crystalData": BRIEF_ROWS}),
        Route(
            "/astromech",
            "crystalData",
            {"crystalData": BRIEF_ROWS, "model": "sklearn"},
            selector=b', "model": "sklearn"',
            unreadable=400,
        ),
        Route("/predictions/crystal_sklearn", "crystalData", {"crystalData": BRIEF_ROWS}),
        # /prediction follows its own spec: 405 "Validation exception" for any invalid input.
        Route("/prediction", "text", {"text": "The goalie stopped the puck and the leafs won"}, refusal=405),
        Route("/predict", "text", {"text": ["I love this movie, it is great.", "terrible and boring"]}),
        Route("/inference", "text", {"text": "Hello I'm a [MASK] model.", "top_k": 2}),
        Route("/predictions/camembert", "text", {"text": "Le camembert est <mask>.", "top_k": 2}),
    ]
}
PATHS = sorted(ROUTES)


@pytest.fixture(scope="module", name="expected")
def fixture_expected(stack: Launcher) -> dict[str, Any]:
    """Each route's answer to its good request before any hostile input, checked: the crystal
    routes agree, the topic is right, the language models answer in their shapes."""
    answers = {}
    for path, route in ROUTES.items():
        response = post(stack, path, route.good_bytes)
        assert response.status_code == 200, (path, response.text)
        answers[path] = response.json()
    check_crystal_answer(answers["/sklearn"], len(BRIEF_ROWS))
    check_crystal_answer(answers["/pytorch"], len(BRIEF_ROWS))
    assert not answers_close(answers["/pytorch"], answers["/sklearn"])
    assert_close(answers["/astromech"], answers["/sklearn"])
    assert_close(answers["/predictions/crystal_sklearn"], answers["/sklearn"])
    assert answers["/prediction"] == {"label": "hockey"}
    assert [set(answer) for answer in answers["/predict"]] == [{"label", "score"}] * 2
    for path in ("/inference", "/predictions/camembert"):
        assert len(answers[path]) == 2 and {"score", "token", "token_str", "sequence"} == set(
            answers[path][0]
        )
    return answers


def still_serves(stack: Launcher, expected: dict[str, Any], *paths: str) -> None:
    """The stack answers good requests on `paths` (all routes if none) exactly as before."""
    for path in paths or PATHS:
        response = post(stack, path, ROUTES[path].good_bytes)
        assert response.status_code == 200, (path, response.text)
        assert_close(response.json(), expected[path])


def check_crystal_answer(answer: Any, rows: int) -> None:
    """The crystal answer's shape: a label and finite scores summing to 1 per row."""
    assert set(answer) == {"prediction", "scores"} and len(answer["prediction"]) == rows
    for label, scores in zip(answer["prediction"], answer["scores"], strict=True):
        assert list(scores) == ["blue", "green", "yellow"] and label in scores
        assert sum(scores.values()) == pytest.approx(1.0, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# Bad data inside an otherwise well-formed body: the route's refusal, never a crash.

HUGE = b"1" + b"0" * 400
REFUSED_DATA: dict[str, Callable[[Route], bytes]] = {
    "1e400": lambda route: route.value(b"1e400"),
    "-1e400": lambda route: route.value(b"-1e400"),
    "10**400 as an integer": lambda route: route.value(HUGE),
    "-10**400 as an integer": lambda route: route.value(b"-" + HUGE),
    "a 4000-digit integer": lambda route: route.value(b"7" * 4000),
    "a 5000-digit integer (past the parser's limit)": lambda route: route.value(b"9" * 5000),
    "an exponent of 1000 digits": lambda route: route.value(b"1e" + b"9" * 1000),
    "NaN": lambda route: route.value(b"NaN"),
    "-Infinity": lambda route: route.value(b"-Infinity"),
    "100k nested lists": lambda route: b"[" * 100_000 + b"]" * 100_000,
    "100k nested objects": lambda route: b'{"a": ' * 100_000 + b"1" + b"}" * 100_000,
    "invalid UTF-8": lambda route: route.value(b'"\xff\xfe\xfd [MASK]"'),
    "overlong UTF-8 for a slash": lambda route: route.value(b'"\xc0\xaf [MASK]"'),
    "a raw NUL byte in a string": lambda route: route.value(b'"a\x00b [MASK]"'),
    "a lone surrogate escape": lambda route: route.value(b'"\\ud800 [MASK]"'),
    "a string just under 1 MiB": lambda route: b'"' + b"word " * ((LIMIT - 200) // 5) + b'"',
    "the bad value last of two duplicate keys": lambda route: (
        json.dumps(route.good[route.field]).encode() + b', "' + route.field.encode() + b'": [[1]]'
    ),
}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", sorted(REFUSED_DATA))
def test_bad_data_is_refused_with_the_routes_status(
    stack: Launcher, expected: dict[str, Any], path: str, case: str
) -> None:
    route = ROUTES[path]
    body = route.body(REFUSED_DATA[case](route))
    assert len(body) < LIMIT
    # A body over the route's own limit (a language model's is what its character caps need)
    # is refused before the model sees it.
    refusal = 413 if len(body) > route_body_limit(stack, path) else route.refusal
    check_json_error(post(stack, path, body), refusal)
    still_serves(stack, expected, path)


def route_body_limit(stack: Launcher, path: str) -> int:
    """The body limit Envoy holds `path` to in this stack (its model's, else the global one)."""
    catalogue = Catalogue.load(stack.catalogue) if stack.catalogue else Catalogue.load()
    for route in RouteTable(catalogue, {}).routes():
        if route["match"].get("path") == path and "dynamic_metadata" not in route["match"]:
            return int(route["typed_per_filter_config"][BUFFER_FILTER]["buffer"]["max_request_bytes"])
    return BODY_LIMIT_BYTES


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("extra", [0, 10, 200_000], ids=["1 MiB + 1", "1 MiB + 10", "1.2 MiB"])
def test_bodies_just_over_the_limit_are_413_json(
    stack: Launcher, expected: dict[str, Any], path: str, extra: int
) -> None:
    route = ROUTES[path]
    filler = b'"' + b"x" * (LIMIT + extra) + b'"'
    body = route.body(filler)
    assert len(body) > LIMIT
    check_json_error(post(stack, path, body), 413)
    still_serves(stack, expected, path)


# ---------------------------------------------------------------------------------------------
# Valid but unusual data: answered, and the answer is right.


@pytest.mark.parametrize("path", [p for p in PATHS if ROUTES[p].crystal])
@pytest.mark.parametrize(
    "number",
    [b"0." + b"0" * 100_000 + b"1", b"1e-400", b"-0.0", b"0e999999", b"-0"],
    ids=["100k-digit fraction", "1e-400", "-0.0", "0e999999", "-0"],
)
def test_numbers_that_are_zero_however_written_are_answered_as_zero(
    stack: Launcher, expected: dict[str, Any], path: str, number: bytes
) -> None:
    route = ROUTES[path]
    reference = post(stack, path, route.body(b"[[0" + ROW_TAIL))
    response = post(stack, path, route.body(b"[[" + number + ROW_TAIL))
    assert response.status_code == reference.status_code == 200, response.text[:300]
    check_crystal_answer(response.json(), 1)
    assert_close(response.json(), reference.json())
    still_serves(stack, expected, path)


@pytest.mark.parametrize("path", [p for p in PATHS if not ROUTES[p].crystal])
def test_escaped_nul_characters_in_a_text_are_just_text(
    stack: Launcher, expected: dict[str, Any], path: str
) -> None:
    body = {**ROUTES[path].good, "text": "\u0000 hello [MASK] \u0000"}
    response = post(stack, path, json.dumps(body).encode())
    assert response.status_code == 200, response.text[:300]
    answer = response.json()
    assert isinstance(answer, (dict, list)) and answer
    if path == "/prediction":
        assert set(answer) == {"label"}
    still_serves(stack, expected, path)


@pytest.mark.parametrize("path", PATHS)
def test_a_duplicate_key_takes_its_last_value_consistently(
    stack: Launcher, expected: dict[str, Any], path: str
) -> None:
    """Python's JSON keeps the last of duplicate keys; a bad first value changes nothing."""
    route = ROUTES[path]
    first = b"[[1]]" if route.crystal else b"5"
    body = b'{"' + route.field.encode() + b'": ' + first + b", " + route.good_bytes[1:]
    response = post(stack, path, body)
    assert response.status_code == 200, response.text[:300]
    assert_close(response.json(), expected[path])


@pytest.mark.parametrize(
    ("body", "answered_as"),
    [
        (b'{"model": "pytorch", "crystalData": %s, "model": "sklearn"}', "/sklearn"),
        (b'{"model": "sklearn", "crystalData": %s, "model": "pytorch"}', "/pytorch"),
    ],
    ids=["pytorch then sklearn", "sklearn then pytorch"],
)
def test_a_duplicate_model_on_astromech_is_answered_by_the_model_the_handler_checked(
    stack: Launcher, expected: dict[str, Any], body: bytes, answered_as: str
) -> None:
    """Envoy routes on one of the two names and the handler re-checks the one JSON keeps (the
    last): the answer is that model's, or a 400 when they disagree; never the other model's."""
    response = post(stack, "/astromech", body % json.dumps(BRIEF_ROWS).encode())
    if response.status_code == 400:
        check_json_error(response, 400, ErrorType.BAD_REQUEST)
    else:
        assert response.status_code == 200, response.text[:300]
        assert_close(response.json(), expected[answered_as])


def test_a_duplicate_model_name_on_predict_is_answered_by_the_model_the_handler_checked(
    stack: Launcher, expected: dict[str, Any]
) -> None:
    camembert = ROUTES["/predictions/camembert"].good
    body = (
        b'{"model_name": "sentiment", "text": %s, "top_k": 2, "model_name": "camembert"}'
        % json.dumps(camembert["text"]).encode()
    )
    response = post(stack, "/predict", body)
    if response.status_code == 400:
        check_json_error(response, 400, ErrorType.BAD_REQUEST)
    else:
        assert response.status_code == 200, response.text[:300]
        assert_close(response.json(), expected["/predictions/camembert"])
    still_serves(stack, expected, "/predict", "/predictions/camembert")


# ---------------------------------------------------------------------------------------------
# Whole bodies that are not a JSON object: the route's refusal (400 on /astromech, which cannot
# read a model from them).

GARBAGE: dict[str, Callable[[Route], tuple[bytes, dict[str, str]]]] = {
    "empty": lambda route: (b"", {}),
    "a NUL byte": lambda route: (b"\x00", {}),
    "NUL bytes": lambda route: (b"\x00" * 1000, {}),
    "invalid UTF-8": lambda route: (b"\xff\xfe\xfd", {}),
    "100k unclosed [": lambda route: (b"[" * 100_000, {}),
    "100k [ then ]": lambda route: (b"[" * 100_000 + b"]" * 100_000, {}),
    "a form": lambda route: (f"{route.field}=0.92&model=sklearn".encode(), {}),
    "a multipart form": lambda route: (
        b'--x\r\nContent-Disposition: form-data; name="f"\r\n\r\n' + route.good_bytes + b"\r\n--x--\r\n",
        {"Content-Type": "multipart/form-data; boundary=x"},
    ),
    "gzip without a decoder": lambda route: (
        gzip.compress(route.good_bytes),
        {"Content-Encoding": "gzip"},
    ),
    "UTF-16": lambda route: (route.good_bytes.decode().encode("utf-16"), {}),
    "cut short": lambda route: (route.good_bytes[: len(route.good_bytes) // 2], {}),
    "a JSON string": lambda route: (json.dumps(route.good_bytes.decode()).encode(), {}),
    "a top-level list": lambda route: (b"[" + route.good_bytes + b"]", {}),
}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", sorted(GARBAGE))
def test_bodies_that_are_not_a_json_object_are_refused(
    stack: Launcher, expected: dict[str, Any], path: str, case: str
) -> None:
    route = ROUTES[path]
    body, headers = GARBAGE[case](route)
    check_json_error(post(stack, path, body, headers), route.refusal_of_garbage)
    still_serves(stack, expected, path)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    "content_type",
    [
        "application/xml",
        "multipart/form-data; boundary=x",
        "application/octet-stream",
        "image/png",
        "application/json; charset=latin-1",
        "text/html; charset=utf-16",
        "",
    ],
)
def test_a_json_body_is_understood_whatever_its_content_type(
    stack: Launcher, expected: dict[str, Any], path: str, content_type: str
) -> None:
    response = post(stack, path, ROUTES[path].good_bytes, {"Content-Type": content_type})
    assert response.status_code == 200, response.text[:300]
    assert_close(response.json(), expected[path])


@pytest.mark.parametrize("path", PATHS)
def test_a_utf8_byte_order_mark_is_refused(stack: Launcher, expected: dict[str, Any], path: str) -> None:
    """Strict JSON has no BOM; /astromech still reads its model (named last), so 422 there too."""
    route = ROUTES[path]
    check_json_error(post(stack, path, b"\xef\xbb\xbf" + route.good_bytes), route.refusal)
    still_serves(stack, expected, path)


# ---------------------------------------------------------------------------------------------
# Headers.


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    "headers",
    [
        {"x-big": "a" * 33 * 1024},
        {f"x-h{i}": "v" for i in range(150)},
        {"x-h": "v" * 20_000, "x-i": "w" * 20_000},
    ],
    ids=["one header of 33 KiB", "150 headers", "two headers of 20 KB"],
)
def test_headers_past_envoys_limits_are_431_json(
    stack: Launcher, expected: dict[str, Any], path: str, headers: dict[str, str]
) -> None:
    check_json_error(post(stack, path, ROUTES[path].good_bytes, headers), 431)
    still_serves(stack, expected, path)


@pytest.mark.parametrize("path", PATHS)
def test_a_header_name_with_an_underscore_is_refused_as_json(
    stack: Launcher, expected: dict[str, Any], path: str
) -> None:
    check_json_error(post(stack, path, ROUTES[path].good_bytes, {"x_forwarded_for": "1.2.3.4"}), 400)
    still_serves(stack, expected, path)


@pytest.mark.parametrize("path", PATHS)
def test_headers_within_envoys_limit_are_served_or_431(
    stack: Launcher, expected: dict[str, Any], path: str
) -> None:
    response = post(stack, path, ROUTES[path].good_bytes, {"x-big": "a" * 12 * 1024})
    if response.status_code == 431:
        check_json_error(response, 431)
    else:
        assert response.status_code == 200, response.text[:300]
        assert_close(response.json(), expected[path])


# ---------------------------------------------------------------------------------------------
# Raw sockets: bodies cut off, slow and stalled clients.


def request_head(path: str, length: int) -> bytes:
    """An HTTP/1.1 POST head announcing `length` body bytes."""
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def connect(stack: Launcher, timeout_s: float) -> socket.socket:
    """A plain TCP connection to the public port."""
    sock = socket.create_connection(("127.0.0.1", stack.ports.public), timeout=timeout_s)
    sock.settimeout(timeout_s)
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one HTTP/1.1 response read until the server closes or the
    announced length has arrived; (0, {}, b"") if the server closed without answering."""
    data = b""
    while True:
        head, end, body = data.partition(b"\r\n\r\n")
        if end:
            lines = head.decode("latin-1").split("\r\n")
            headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
            if len(body) >= int(headers.get("content-length", 1 << 30)):
                return int(lines[0].split()[1]), headers, body
        with contextlib.suppress(ConnectionResetError):
            chunk = sock.recv(65536)
            if chunk:
                data += chunk
                continue
        if not data:
            return 0, {}, b""
        head, end, body = data.partition(b"\r\n\r\n")
        return int(head.split()[1]), {}, body


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("sent", [0, 1, 20], ids=["no body", "1 byte", "20 bytes"])
def test_a_body_that_stops_mid_stream_costs_nothing(
    stack: Launcher, expected: dict[str, Any], path: str, sent: int
) -> None:
    body = ROUTES[path].good_bytes
    with connect(stack, 10) as sock:
        sock.sendall(request_head(path, len(body) + 1000) + body[:sent])
    still_serves(stack, expected, path)


@pytest.mark.parametrize("path", ["/sklearn", "/predict"])
def test_a_body_that_stops_then_half_closes_gets_no_answer_or_a_json_error(
    stack: Launcher, expected: dict[str, Any], path: str
) -> None:
    body = ROUTES[path].good_bytes
    with connect(stack, 20) as sock:
        sock.sendall(request_head(path, len(body) + 1000) + body[:20])
        sock.shutdown(socket.SHUT_WR)
        status, _, answer = read_response(sock)
    if status:  # whatever Envoy says to a truncated request, it is a JSON error
        assert 400 <= status < 500, answer
        assert json.loads(answer)["error"]
    still_serves(stack, expected, path)


@pytest.mark.parametrize("path", ["/astromech", "/predict"])
def test_a_slow_client_sending_byte_by_byte_is_answered(
    stack: Launcher, expected: dict[str, Any], path: str
) -> None:
    """A body trickling in over ~2 s (well inside Envoy's 10 s request timeout) is answered."""
    body = ROUTES[path].good_bytes
    pause = 2.0 / len(body)
    with connect(stack, 40) as sock:
        sock.sendall(request_head(path, len(body)))
        for byte in body:
            sock.sendall(bytes([byte]))
            time.sleep(pause)
        status, _, answer = read_response(sock)
    assert status == 200, answer[:300]
    assert_close(json.loads(answer), expected[path])


Reply = tuple[int, dict[str, str], bytes]


def stall(stack: Launcher, payload: bytes) -> Reply:
    """Send `payload`, then nothing: what the server answers."""
    with connect(stack, 60) as sock:
        sock.sendall(payload)
        return read_response(sock)


@pytest.fixture(scope="module", name="stalled", autouse=True)
def fixture_stalled(stack: Launcher) -> Iterator[dict[str, Future[Reply]]]:
    """A client stalled in its headers and one stalled in its body, both on /sklearn, started
    with the module and read at its end: their timeouts run meanwhile instead of adding up."""
    body = ROUTES["/sklearn"].good_bytes
    with ThreadPoolExecutor(max_workers=2) as pool:
        yield {
            "headers": pool.submit(stall, stack, b"POST /sklearn HTTP/1.1\r\nHost: x\r\n"),
            "body": pool.submit(stall, stack, request_head("/sklearn", len(body)) + body[:20]),
        }


def test_a_client_stalled_in_its_headers_gets_408_json(
    stalled: dict[str, Future[Reply]], expected: dict[str, Any], stack: Launcher
) -> None:
    """Envoy's request_headers_timeout (10 s) cuts it off with a JSON 408."""
    status, headers, body = stalled["headers"].result(timeout=50)
    assert status == 408, body
    assert headers["content-type"].startswith("application/json")
    assert json.loads(body)["error"]
    still_serves(stack, expected, "/sklearn")


def test_a_client_stalled_in_its_body_gets_408_json(
    stalled: dict[str, Future[Reply]], expected: dict[str, Any], stack: Launcher
) -> None:
    status, headers, body = stalled["body"].result(timeout=50)
    still_serves(stack, expected, "/sklearn")
    assert headers["content-type"].startswith("application/json") and json.loads(body)["error"]
    assert status == 408, body


# ---------------------------------------------------------------------------------------------
# Finite numbers too large for the model.


@pytest.mark.parametrize(
    ("path", "row"),
    [
        ("/sklearn", b"[[1e308, 1e308, 1e308, 1e308]]"),
        ("/astromech", b"[[1e308, 1e308, 1e308, 1e308]]"),
        ("/predictions/crystal_sklearn", b"[[1e308, -1e308, 0, 0]]"),
        ("/pytorch", b"[[1e39, 0.12, 0.31, 0.09]]"),
        ("/pytorch", b"[[" + b"1" + b"0" * 300 + ROW_TAIL),
    ],
    ids=["sklearn 1e308", "astromech 1e308", "generic path +-1e308", "pytorch 1e39", "pytorch 10**300"],
)
def test_finite_numbers_too_large_for_the_model_are_422_or_answered(
    stack: Launcher, expected: dict[str, Any], path: str, row: bytes
) -> None:
    response = post(stack, path, ROUTES[path].body(row))
    still_serves(stack, expected, path)
    if response.status_code == 200:
        check_crystal_answer(response.json(), 1)
    else:
        check_json_error(response, 422)


# ---------------------------------------------------------------------------------------------
# Logs never hold what clients sent.

MARKER = "zqxmarker"


def test_logs_never_hold_request_text(stack: Launcher) -> None:
    """Good, bad, failing and streamed requests carrying a marker (in bodies, a query and
    headers), then every log of the stack is read, TorchServe's stdout (`torchserve.out`) and
    Envoy's log included: the marker is in none of them (handlers log types and counts,
    TorchServe and Envoy log no bodies), whether the request was answered, refused or made the
    model fail."""
    sent = [
        ("/predict", {"text": f"a {MARKER} sentence"}),
        ("/inference", {"text": f"[MASK] {MARKER}"}),
        ("/predict", {"text": f"a {MARKER}", "model_name": MARKER}),
        ("/astromech", {"crystalData": [[0.1, 0.2, 0.3, 0.4]], "model": MARKER}),
        ("/sklearn", {"crystalData": [[MARKER, 0.2, 0.3, 0.4]]}),
        ("/pytorch", {"crystalData": [[1e39, 0.2, 0.3, 0.4]], MARKER: 1}),
        ("/predictions/crystal_broken", {"crystalData": [[0.1, 0.2, 0.3, 0.4]]}),
        ("/prediction", {"text": MARKER * 3}),
    ]
    statuses = [post(stack, path, json.dumps(body).encode()).status_code for path, body in sent]
    statuses.append(post(stack, "/sklearn", f'{{"crystalData": [[{MARKER}'.encode()).status_code)
    streamed = {"text": [f"[MASK] {MARKER}", "a [MASK] b"], "stream": True}
    headers = {"x-request-id": MARKER, "x-envoy-original-path": f"/{MARKER}", "x-forwarded-for": "10.0.0.1"}
    with requests.post(
        f"{stack.url}/inference?q={MARKER}", json=streamed, headers=headers, stream=True, timeout=60
    ) as response:
        assert response.status_code == 200 and len(response.content.splitlines()) == 2
    assert 200 in statuses and 422 in statuses and 500 in statuses, statuses
    time.sleep(1)  # TorchServe's log appenders flush asynchronously
    # Rotated copies too (`envoy.log.1`): every file in a logs folder or named as a log.
    logs = [
        path
        for path in stack.workdir.rglob("*")
        if path.is_file() and ("logs" in path.parts or {".log", ".out"} & set(path.suffixes))
    ]
    for wanted in (stack.runtime_dir / "torchserve" / "logs" / "torchserve.out", stack.log_file):
        assert wanted in logs and wanted.stat().st_size > 0, (wanted, logs)
    # Envoy's output (`envoy.log`, written only once Envoy warns) and any log it keeps.
    assert set((stack.runtime_dir / "envoy").glob("*.log*")) <= set(logs), logs
    assert any(path.name == "model_log.log" for path in logs), logs
    leaked = [path for path in logs if MARKER in path.read_text(encoding="utf-8", errors="replace")]
    assert not leaked, leaked

"""The shadow comparer answers Envoy's mirrored requests at once, then sends each to both
versions of its model at a fake TorchServe with the launcher's key, and reports the pair."""

from __future__ import annotations

import json
import logging
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from modelserver.kinds.comparison import AnswersNotComparable, Comparison
from modelserver.launcher.envoy.routes import BODY_LIMIT_BYTES
from modelserver.launcher.envoy.unix_http import UnixHTTPConnection
from modelserver.launcher.traffic.shadow import MAX_BODY_BYTES, PairResult, ShadowComparer, ShadowTarget

WAIT_S = 5.0
MIRRORED_KEY = "the-clients-key"
LAUNCHER_KEY = "the-launchers-key"
BODY = json.dumps({"instances": [{"text": "a secret sentence"}]}).encode()


@dataclass
class FakeTorchServe:
    """What each registration answers, a gate every answer waits for, and what was sent."""

    answers: dict[str, tuple[int, bytes]] = field(
        default_factory=lambda: {
            "/predictions/m": (200, b'{"label": "cat"}'),
            "/predictions/m__candidate": (200, b'{"label": "cat"}'),
        }
    )
    gate: threading.Event = field(default_factory=threading.Event)
    seen: list[tuple[str, str, str, bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    port: int = 0


def wait_for(condition: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    """Poll `condition` until it holds, failing after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.005)


def labels_equal(primary: Any, candidate: Any) -> Comparison:
    """A kind's comparison, reduced to one label per answer."""
    if set(primary) != set(candidate):
        raise AnswersNotComparable("the answers hold other fields")
    return Comparison(items=1, agreeing=int(primary["label"] == candidate["label"]))


def fake_handler(fake: FakeTorchServe) -> type[BaseHTTPRequestHandler]:
    """TorchServe's inference API as `fake` says it answers."""

    class Handler(BaseHTTPRequestHandler):
        """Answers what `fake` says, once its gate is open."""

        def do_POST(self) -> None:  # pylint: disable=invalid-name
            """Note the call, wait for the gate, answer."""
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with fake.lock:
                fake.seen.append(
                    (self.path, self.headers["Authorization"], self.headers["Content-Type"], body)
                )
            fake.gate.wait(WAIT_S)
            status, answer = fake.answers[self.path]
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:  # pylint: disable=redefined-builtin
            pass

    return Handler


@pytest.fixture(name="torchserve")
def fixture_torchserve() -> Iterator[FakeTorchServe]:
    """A fake TorchServe on a free loopback port, answering at once until its gate is closed."""
    fake = FakeTorchServe()
    fake.gate.set()
    server = ThreadingHTTPServer(("127.0.0.1", 0), fake_handler(fake))
    server.daemon_threads = True
    fake.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield fake
    fake.gate.set()
    server.shutdown()
    server.server_close()


@dataclass
class Running:
    """A started comparer and what its callbacks received."""

    comparer: ShadowComparer
    records: list[PairResult]
    skipped: list[str]


@pytest.fixture(name="start")
def fixture_start(tmp_path: Path, torchserve: FakeTorchServe) -> Iterator[Callable[..., Running]]:
    """Start a comparer of model `m` in front of the fake; every one started is stopped."""
    started: list[ShadowComparer] = []

    def start(
        concurrency: int = 2,
        url: str | None = None,
        record: Callable[[PairResult], None] | None = None,
    ) -> Running:
        records: list[PairResult] = []
        skipped: list[str] = []
        target = ShadowTarget(
            primary="m", candidate="m__candidate", compare=labels_equal, concurrency=concurrency
        )
        comparer = ShadowComparer(
            tmp_path / "shadow.sock",
            {"m": target},
            url or f"http://127.0.0.1:{torchserve.port}",
            key=lambda: LAUNCHER_KEY,
            record=record or records.append,
            skipped=skipped.append,
            timeout_s=WAIT_S,
        )
        comparer.start()
        started.append(comparer)
        return Running(comparer, records, skipped)

    yield start
    for comparer in started:
        comparer.stop()


def mirror(
    comparer: ShadowComparer, method: str = "POST", path: str = "/predictions/m", body: bytes = BODY
) -> tuple[int, dict[str, str], bytes]:
    """Send a request as Envoy's mirror does; returns (status, headers, body)."""
    connection = UnixHTTPConnection(comparer.socket_path, WAIT_S)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {MIRRORED_KEY}"}
    try:
        connection.request(method, path, body=body if method == "POST" else None, headers=headers)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def test_answers_at_once_then_records_the_pair(
    start: Callable[..., Running], torchserve: FakeTorchServe
) -> None:
    torchserve.gate.clear()
    running = start()
    status, _, body = mirror(running.comparer)
    assert (status, body) == (204, b"")
    assert not running.records  # the versions have not answered yet
    torchserve.gate.set()
    wait_for(lambda: len(running.records) == 1)
    result = running.records[0]
    assert result.model == "m"
    assert (result.primary_status, result.candidate_status) == (200, 200)
    assert result.primary_seconds > 0 and result.candidate_seconds > 0
    assert result.comparison == Comparison(items=1, agreeing=1)
    assert result.incomparable is None
    assert not result.primary_failed and not result.candidate_failed


def test_calls_both_versions_with_the_launchers_key(
    start: Callable[..., Running], torchserve: FakeTorchServe
) -> None:
    running = start()
    mirror(running.comparer)
    wait_for(lambda: len(running.records) == 1)
    assert sorted(torchserve.seen) == [
        ("/predictions/m", f"Bearer {LAUNCHER_KEY}", "application/json", BODY),
        ("/predictions/m__candidate", f"Bearer {LAUNCHER_KEY}", "application/json", BODY),
    ]


def test_calls_both_versions_at_the_same_time(
    start: Callable[..., Running], torchserve: FakeTorchServe
) -> None:
    torchserve.gate.clear()
    running = start()
    mirror(running.comparer)
    wait_for(lambda: len(torchserve.seen) == 2)  # both wait at the gate: neither waits for the other
    torchserve.gate.set()
    wait_for(lambda: len(running.records) == 1)


def test_a_chunked_mirror_is_read_whole(start: Callable[..., Running], torchserve: FakeTorchServe) -> None:
    running = start()
    connection = UnixHTTPConnection(running.comparer.socket_path, WAIT_S)
    try:
        connection.request("POST", "/predictions/m", body=iter([BODY[:10], BODY[10:]]), encode_chunked=True)
        assert connection.getresponse().status == 204
    finally:
        connection.close()
    wait_for(lambda: len(running.records) == 1)
    assert {seen[3] for seen in torchserve.seen} == {BODY}


def test_skips_a_mirror_beyond_the_models_concurrency(
    start: Callable[..., Running], torchserve: FakeTorchServe
) -> None:
    torchserve.gate.clear()
    running = start(concurrency=1)
    assert mirror(running.comparer)[0] == 204
    wait_for(lambda: len(torchserve.seen) == 2)
    assert mirror(running.comparer)[0] == 204
    wait_for(lambda: running.skipped == ["m"])
    torchserve.gate.set()
    wait_for(lambda: len(running.records) == 1)
    assert len(torchserve.seen) == 2
    mirror(running.comparer)  # the slot is free again
    wait_for(lambda: len(running.records) == 2)
    assert running.skipped == ["m"]


def test_a_failed_candidate_is_recorded_without_comparison(
    start: Callable[..., Running], torchserve: FakeTorchServe
) -> None:
    torchserve.answers["/predictions/m__candidate"] = (
        500,
        b'{"code": 500, "type": "InternalServerException"}',
    )
    running = start()
    mirror(running.comparer)
    wait_for(lambda: len(running.records) == 1)
    result = running.records[0]
    assert (result.primary_status, result.candidate_status) == (200, 500)
    assert (result.comparison, result.incomparable) == (None, None)
    assert result.candidate_failed and not result.primary_failed


@pytest.mark.parametrize(
    ("candidate_answer", "why"),
    [(b'{"label": "cat", "extra": 1}', "the answers hold other fields"), (b"not json", "candidate's")],
)
def test_answers_that_cannot_be_compared_say_why(
    start: Callable[..., Running], torchserve: FakeTorchServe, candidate_answer: bytes, why: str
) -> None:
    torchserve.answers["/predictions/m__candidate"] = (200, candidate_answer)
    running = start()
    mirror(running.comparer)
    wait_for(lambda: len(running.records) == 1)
    result = running.records[0]
    assert (result.primary_status, result.candidate_status, result.comparison) == (200, 200, None)
    assert why in (result.incomparable or "")


def test_a_refused_connection_is_status_zero(start: Callable[..., Running]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    running = start(url=f"http://127.0.0.1:{closed_port}")
    mirror(running.comparer)
    wait_for(lambda: len(running.records) == 1)
    result = running.records[0]
    assert (result.primary_status, result.candidate_status, result.comparison) == (0, 0, None)
    assert result.primary_seconds > 0 and result.candidate_seconds > 0
    assert result.primary_failed and result.candidate_failed


def test_a_failing_callback_is_logged_and_serving_goes_on(
    start: Callable[..., Running], caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[PairResult] = []

    def record(result: PairResult) -> None:
        calls.append(result)
        raise RuntimeError(f"cannot record {BODY!r}")

    running = start(record=record)
    with caplog.at_level(logging.WARNING, logger="modelserver.launcher.traffic.shadow"):
        assert mirror(running.comparer)[0] == 204
        wait_for(lambda: len(calls) == 1)
        assert mirror(running.comparer)[0] == 204
        wait_for(lambda: len(calls) == 2)
        wait_for(lambda: len(caplog.records) == 2)
    assert all("RuntimeError" in line for line in caplog.messages)
    assert not any("secret" in line for line in caplog.messages)


@pytest.mark.parametrize(
    ("method", "path", "status", "error_type"),
    [
        ("POST", "/predictions/other", 404, "not_found"),
        ("POST", "/predictions/m__candidate", 404, "not_found"),
        ("POST", "/models", 404, "not_found"),
        ("GET", "/predictions/m", 405, "method_not_allowed"),
    ],
)
def test_refuses_other_routes_and_methods(
    start: Callable[..., Running], method: str, path: str, status: int, error_type: str
) -> None:
    running = start()
    answer_status, headers, body = mirror(running.comparer, method, path)
    assert answer_status == status
    assert json.loads(body) == {"error": json.loads(body)["error"], "type": error_type, "code": status}
    if status == 405:
        assert headers["allow"] == "POST"
    assert not running.records and not running.skipped


def raw_request(path: Path, request: bytes) -> tuple[bytes, dict[str, Any]]:
    """Send bytes as they are; returns the status line and the JSON body of the answer."""
    with socket.socket(socket.AF_UNIX) as raw:
        raw.settimeout(WAIT_S)
        raw.connect(str(path))
        raw.sendall(request)
        answer = b""
        while chunk := raw.recv(4096):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return head.split(b"\r\n", 1)[0], json.loads(body)


def test_takes_any_body_a_route_admits() -> None:
    assert MAX_BODY_BYTES == BODY_LIMIT_BYTES


@pytest.mark.parametrize(
    ("length", "status_line", "error_type"),
    [
        (b"2097152", b"HTTP/1.1 413 Request Entity Too Large", "too_large"),
        (b"x", b"HTTP/1.1 400 Bad Request", "bad_request"),
    ],
)
def test_refuses_a_body_over_a_mebibyte_or_unframed(
    start: Callable[..., Running],
    torchserve: FakeTorchServe,
    length: bytes,
    status_line: bytes,
    error_type: str,
) -> None:
    running = start()
    request = b"POST /predictions/m HTTP/1.1\r\nHost: x\r\nContent-Length: " + length + b"\r\n\r\n{"
    head, body = raw_request(running.comparer.socket_path, request)
    assert (head, body["type"]) == (status_line, error_type)
    assert not torchserve.seen and not running.skipped


def test_socket_is_private_replaces_a_stale_one_and_is_removed(
    start: Callable[..., Running], tmp_path: Path
) -> None:
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(tmp_path / "shadow.sock"))  # a previous run's socket, never removed
    stale.close()
    running = start()
    path = running.comparer.socket_path
    assert stat.S_ISSOCK(path.stat().st_mode)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert mirror(running.comparer)[0] == 204
    running.comparer.stop()
    assert not path.exists()

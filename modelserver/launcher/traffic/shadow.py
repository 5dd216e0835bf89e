"""The shadow comparer: Envoy mirrors a share of a primary's requests to a unix socket served
here; each mirrored request is answered at once (Envoy discards the answer but holds its stream
until it comes) and then sent again, by the launcher, to both versions of the model at the same
time, so their statuses, latencies and answers are compared on the very same input."""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import socket
import socketserver
import stat
import sys
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

from modelserver.errors import ErrorType, type_of_status
from modelserver.kinds.comparison import AnswersNotComparable, Compare, Comparison

log = logging.getLogger(__name__)

PREDICTIONS = "/predictions/"
# A mirror is a copy of a request a route admitted: the routes' largest body (their
# BODY_LIMIT_BYTES, not imported: the routes import the traffic state) is never refused here.
MAX_BODY_BYTES = 1 << 20
TOO_LARGE = f"body over {MAX_BODY_BYTES} bytes"
SOCKET_MODE = 0o600  # only the launcher's user (and Envoy, run as it): a body is user text
HANDLER_THREADS = 8  # each only reads a body and answers 204: a few keep up with Envoy
# Envoy sends a mirrored request over a local socket at once; a sender this slow is stuck.
CLIENT_TIMEOUT_S = 5.0
CHUNK_LINE_BYTES = 1024  # a chunk's size line, or a trailer line, of a chunked body
STOP_WAIT_S = 2.0  # how long stop() lets in-flight comparisons finish before cutting them
SERVE_POLL_S = 0.1  # how soon the accept loop sees stop(); a wakeup this rare costs nothing


@dataclass(frozen=True)
class ShadowTarget:
    """One model's two registrations in TorchServe, how their answers compare (its kind's
    `compare`), and how many pairs may be compared at once (more are skipped, not queued)."""

    primary: str
    candidate: str
    compare: Compare
    concurrency: int


@dataclass(frozen=True)
class PairResult:
    """One mirrored request answered by both versions; `model` is the primary's registration
    (the key of the comparer's `targets`). A status is 0 when the call failed before an answer
    (refused, reset, timed out), with the seconds it took to fail: a failure of that version.
    A `comparison` only when both answered 200 with comparable JSON; else, when both answered
    200, `incomparable` says why not."""

    model: str
    primary_status: int
    primary_seconds: float
    candidate_status: int
    candidate_seconds: float
    comparison: Comparison | None
    incomparable: str | None

    @property
    def primary_failed(self) -> bool:
        """The primary failed: no answer at all, or a 5xx."""
        return _failed(self.primary_status)

    @property
    def candidate_failed(self) -> bool:
        """The candidate failed: no answer at all, or a 5xx."""
        return _failed(self.candidate_status)


def _failed(status: int) -> bool:
    return status == 0 or status >= HTTPStatus.INTERNAL_SERVER_ERROR


@dataclass(frozen=True)
class _Answer:
    """One version's answer to one call: status (0 without one), seconds, body."""

    status: int
    seconds: float
    body: bytes


class _BodyTooLarge(Exception):
    """The mirrored body is over MAX_BODY_BYTES."""


class _Upstream:
    """TorchServe's inference API, called with the launcher's current key; a call in flight
    can be cut (`abort`) so stopping never waits for a slow model."""

    def __init__(self, inference_url: str, key: Callable[[], str], timeout_s: float) -> None:
        parts = urlsplit(inference_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"the inference URL must be http://host[:port], not {inference_url!r}")
        self._host = parts.hostname
        self._port = parts.port or 80
        self._prefix = parts.path.rstrip("/")
        self._key = key
        self._timeout_s = timeout_s
        self._open: set[http.client.HTTPConnection] = set()
        self._lock = threading.Lock()

    def call(self, name: str, body: bytes) -> _Answer:
        """POST `body` to registration `name`, timed; status 0 if no answer came."""
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {self._key()}"}
        connection = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout_s)
        with self._lock:
            self._open.add(connection)
        started = time.perf_counter()
        try:
            connection.request("POST", f"{self._prefix}{PREDICTIONS}{name}", body=body, headers=headers)
            response = connection.getresponse()
            data = response.read()
            return _Answer(response.status, time.perf_counter() - started, data)
        except (OSError, http.client.HTTPException):
            return _Answer(0, time.perf_counter() - started, b"")
        finally:
            with self._lock:
                self._open.discard(connection)
            connection.close()

    def abort(self) -> None:
        """Cut every call in flight: each returns at once, with status 0."""
        with self._lock:
            sockets = [connection.sock for connection in self._open if connection.sock is not None]
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def _parsed(body: bytes) -> tuple[Any, bool]:
    """The JSON of an answer, and whether it was JSON at all."""
    try:
        return json.loads(body), True
    except ValueError:
        return None, False


def _compared(target: ShadowTarget, primary: bytes, candidate: bytes) -> tuple[Comparison | None, str | None]:
    """The comparison of two 200 answers, or why there is none."""
    primary_json, primary_ok = _parsed(primary)
    candidate_json, candidate_ok = _parsed(candidate)
    if not primary_ok or not candidate_ok:
        which = "primary's" if not primary_ok else "candidate's"
        return None, f"the {which} answer is not JSON"
    try:
        return target.compare(primary_json, candidate_json), None
    except AnswersNotComparable as error:
        return None, str(error) or "the answers are not comparable"
    except Exception as error:  # pylint: disable=broad-exception-caught
        log.warning("shadow: comparing %s's answers failed: %s", target.primary, type(error).__name__)
        return None, f"comparing failed ({type(error).__name__})"


def _pair_result(model: str, target: ShadowTarget, primary: _Answer, candidate: _Answer) -> PairResult:
    comparison, incomparable = None, None
    if primary.status == HTTPStatus.OK and candidate.status == HTTPStatus.OK:
        comparison, incomparable = _compared(target, primary.body, candidate.body)
    return PairResult(
        model=model,
        primary_status=primary.status,
        primary_seconds=primary.seconds,
        candidate_status=candidate.status,
        candidate_seconds=candidate.seconds,
        comparison=comparison,
        incomparable=incomparable,
    )


class _InFlight:
    """The comparisons running, so stopping can give them a moment."""

    def __init__(self) -> None:
        self._futures: set[Future[None]] = set()
        self._lock = threading.Lock()

    def add(self, future: Future[None]) -> None:
        """Hold `future` until it is done."""
        with self._lock:
            self._futures.add(future)
        future.add_done_callback(self._done)

    def _done(self, future: Future[None]) -> None:
        with self._lock:
            self._futures.discard(future)

    def wait(self, timeout_s: float) -> None:
        """Wait up to `timeout_s` for those running now."""
        with self._lock:
            futures = list(self._futures)
        wait(futures, timeout=timeout_s)


class _ShadowServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """A thread per connection, at most `threads` at once: the accept loop waits for a free
    one (the kernel's backlog holds the rest), and closes a connection it waited too long for."""

    daemon_threads = True  # each is bounded by CLIENT_TIMEOUT_S; stop() does not wait for them
    request_queue_size = 64

    def __init__(self, path: Path, comparer: ShadowComparer, threads: int) -> None:
        self.comparer = comparer
        self._threads_free = threading.BoundedSemaphore(threads)
        self._refused = 0
        super().__init__(str(path), _ShadowHandler)

    def server_bind(self) -> None:
        """Bind, and make the socket private before it listens: until then a connect is refused."""
        super().server_bind()
        os.chmod(self.server_address, SOCKET_MODE)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Start a handler thread once one of the `threads` is free."""
        if not self._threads_free.acquire(timeout=CLIENT_TIMEOUT_S):  # pylint: disable=consider-using-with
            self._refused += 1
            if self._refused in (1, 10, 100) or self._refused % 1000 == 0:
                log.warning("shadow comparer busy: %d mirrored connections closed so far", self._refused)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._threads_free.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """Handle the connection, then free its thread's place."""
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._threads_free.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Name the failure only: a traceback could hold a body's text."""
        log.warning("shadow: a mirrored request failed: %s", getattr(sys.exc_info()[0], "__name__", "?"))


class ShadowComparer:
    """Serves Envoy's mirrored requests on a unix socket and compares each model's two versions
    on them. `targets` is keyed by the primary's registration (the name in the mirrored path);
    `record` gets each pair compared, `skipped` the model of each mirror dropped because that
    model already had `concurrency` pairs in flight. Callbacks run on worker threads and may
    raise without harm; the mirrored request's own headers are never forwarded or logged."""

    def __init__(
        self,
        socket_path: Path,
        targets: Mapping[str, ShadowTarget],
        inference_url: str,
        key: Callable[[], str],
        record: Callable[[PairResult], None],
        skipped: Callable[[str], None],
        timeout_s: float = 30.0,
    ) -> None:
        self._socket_path = socket_path
        self._targets = dict(targets)
        self._upstream = _Upstream(inference_url, key, timeout_s)
        self._callbacks = (record, skipped)
        self._slots = {name: threading.BoundedSemaphore(t.concurrency) for name, t in self._targets.items()}
        pairs = max(1, sum(target.concurrency for target in self._targets.values()))
        # A pair calls the candidate on its own thread and the primary on one of `calls`.
        self._pairs = ThreadPoolExecutor(max_workers=pairs, thread_name_prefix="shadow-pair")
        self._calls = ThreadPoolExecutor(max_workers=pairs, thread_name_prefix="shadow-call")
        self._in_flight = _InFlight()
        self._stopping = threading.Event()
        self._server: _ShadowServer | None = None

    @property
    def socket_path(self) -> Path:
        """The unix socket Envoy's shadow cluster sends to."""
        return self._socket_path

    def start(self) -> None:
        """Bind the socket (replacing a stale one) and serve in a background thread."""
        try:
            if not stat.S_ISSOCK(self._socket_path.lstat().st_mode):
                raise FileExistsError(f"{self._socket_path} exists and is not a socket")
            self._socket_path.unlink()
        except FileNotFoundError:
            pass
        self._server = _ShadowServer(self._socket_path, self, HANDLER_THREADS)
        serve = threading.Thread(
            target=self._server.serve_forever, args=(SERVE_POLL_S,), name="shadow", daemon=True
        )
        serve.start()

    def stop(self) -> None:
        """Stop serving, give comparisons in flight a moment, cut the rest (recording nothing
        of them: a cut call is not a version's failure) and remove the socket."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        self._in_flight.wait(STOP_WAIT_S)
        self._stopping.set()
        self._upstream.abort()
        self._pairs.shutdown(wait=False, cancel_futures=True)
        self._calls.shutdown(wait=False, cancel_futures=True)
        if server is not None:
            self._socket_path.unlink(missing_ok=True)

    def known(self, name: str) -> bool:
        """Whether `name` is a primary registration this comparer compares."""
        return name in self._targets

    def mirrored(self, name: str, body: bytes) -> None:
        """Compare both versions on `body` in the background, or skip it if `name`'s model
        already has all its pairs in flight."""
        if self._stopping.is_set():
            return
        slot = self._slots[name]
        if not slot.acquire(blocking=False):
            self._call_back(self._callbacks[1], name)
            return
        try:
            future = self._pairs.submit(self._compare_pair, name, self._targets[name], body)
        except RuntimeError:  # stopped between the check and the submit
            slot.release()
            return
        self._in_flight.add(future)

    def _compare_pair(self, name: str, target: ShadowTarget, body: bytes) -> None:
        try:
            primary_call = self._calls.submit(self._upstream.call, target.primary, body)
            candidate = self._upstream.call(target.candidate, body)
            primary = primary_call.result()
            if not self._stopping.is_set():
                self._call_back(self._callbacks[0], _pair_result(name, target, primary, candidate))
        except Exception as error:  # pylint: disable=broad-exception-caught
            log.warning("shadow: comparing a pair of %s failed: %s", name, type(error).__name__)
        finally:
            self._slots[name].release()

    @staticmethod
    def _call_back(callback: Callable[[Any], None], value: Any) -> None:
        try:
            callback(value)
        except Exception as error:  # pylint: disable=broad-exception-caught
            log.warning("shadow: a callback failed: %s", type(error).__name__)


class _ShadowHandler(BaseHTTPRequestHandler):
    """POST /predictions/<primary>: read the body, hand it to the comparer, answer 204.
    One request per connection, so no idle keep-alive connection holds a thread."""

    protocol_version = "HTTP/1.1"
    timeout = CLIENT_TIMEOUT_S

    def do_POST(self) -> None:  # pylint: disable=invalid-name
        """Take one mirrored request."""
        body = self._read_body()
        if body is None:
            return
        if (name := self._model()) is None:
            self._refuse(HTTPStatus.NOT_FOUND, ErrorType.NOT_FOUND, "no such model")
            return
        self._comparer.mirrored(name, body)
        self.send_response(HTTPStatus.NO_CONTENT)
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

    def _other_method(self) -> None:
        if self._read_body() is None:
            return
        if self._model() is None:
            self._refuse(HTTPStatus.NOT_FOUND, ErrorType.NOT_FOUND, "no such model")
        else:
            self._refuse(HTTPStatus.METHOD_NOT_ALLOWED, ErrorType.METHOD_NOT_ALLOWED, "only POST is served")

    do_GET = do_HEAD = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _other_method

    def _read_body(self) -> bytes | None:
        """The whole body, read before any answer (a sender still writing one it was refused
        would fail); None once refused for it."""
        try:
            return self._body()
        except _BodyTooLarge:
            self._refuse(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, ErrorType.TOO_LARGE, TOO_LARGE)
        except ValueError:
            self._refuse(HTTPStatus.BAD_REQUEST, ErrorType.BAD_REQUEST, "malformed body framing")
        return None

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Malformed requests answer in the server's JSON error shape too."""
        status = HTTPStatus(code)
        self._refuse(status, type_of_status(code), message or status.phrase)

    @property
    def _comparer(self) -> ShadowComparer:
        return cast(_ShadowServer, self.server).comparer

    def _model(self) -> str | None:
        path = self.path.split("?", 1)[0]
        if not path.startswith(PREDICTIONS):
            return None
        name = path[len(PREDICTIONS) :]
        return name if self._comparer.known(name) else None

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._chunked_body()
        length = int(self.headers.get("Content-Length") or 0)
        if length < 0:
            raise ValueError("negative Content-Length")
        if length > MAX_BODY_BYTES:
            raise _BodyTooLarge
        return self._exactly(length)

    def _chunked_body(self) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while size := int(self.rfile.readline(CHUNK_LINE_BYTES).split(b";", 1)[0].strip(), 16):
            if size < 0:
                raise ValueError("negative chunk size")
            total += size
            if total > MAX_BODY_BYTES:
                raise _BodyTooLarge
            chunks.append(self._exactly(size))
            self.rfile.readline(CHUNK_LINE_BYTES)
        while self.rfile.readline(CHUNK_LINE_BYTES) not in (b"\r\n", b"\n", b""):
            pass  # trailers
        return b"".join(chunks)

    def _exactly(self, size: int) -> bytes:
        data = self.rfile.read(size)
        if len(data) < size:
            raise ConnectionError("the mirrored body ended early")
        return data

    def _refuse(self, status: HTTPStatus, kind: ErrorType, message: str) -> None:
        data = json.dumps({"error": message, "type": str(kind), "code": int(status)}).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        if status == HTTPStatus.METHOD_NOT_ALLOWED:
            self.send_header("Allow", "POST")
        self.end_headers()
        self.close_connection = True
        if self.command != "HEAD":
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # pylint: disable=redefined-builtin
        """Nothing per request: its path is known, its headers and body are secrets."""

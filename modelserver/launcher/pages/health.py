"""`/healthcheck`: 200 only when every served model has a ready worker, else 503 naming why.

TorchServe's `/ping` says Healthy while models are still loading, so the launcher serves this
itself (loopback; Envoy routes the public `/healthcheck` here) and asks the management API.
A background loop asks it about once a second and `/healthcheck` answers from that reading, so
a probe never waits on TorchServe and a crowd of probes costs TorchServe nothing; a reading
that is too old (the loop is stuck) counts as not ready.

The loopback server is bounded: a few handler threads take accepted connections from a short
queue (beyond it a connection is closed at once), and a page can be limited to a few
concurrent readers (`limited`) so `/metrics` never takes every thread from `/healthcheck`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import re
import socket
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

from modelserver.errors import ErrorType, ModelUnavailable, NotFound, error_response

# Log lines keep the logger name they have always carried.
log = logging.getLogger("modelserver.launcher.health")

StatusSource = Callable[[str], str]
PHASES = ("starting", "serving", "stopping")
# Readiness is read this often, and a reading older than STALE_AFTER_S is not trusted. One
# reading waits at most STATUS_WAIT_S for TorchServe (`TorchServe.model_status` allows 2 s).
READ_EVERY_S = 1.0
STATUS_WAIT_S = 2.5
STALE_AFTER_S = 5.0
# The loopback server: handler threads, accepted connections waiting for one, and the socket
# timeout that keeps a stalled client from holding a thread. Three groups of pages (/metrics,
# the documents, the Open Inference pages) may hold 2 threads each (`ReaderLimit`), so 2 are
# always left for /healthcheck, whatever crowd polls the others.
HANDLER_THREADS = 8
WAITING_CONNECTIONS = 32
CLIENT_TIMEOUT_S = 5.0
BUSY_RETRY_AFTER_S = 1
UNAVAILABLE_RETRY_AFTER_S = 5

# A file path in a sentence: absolute, home- or dot-relative, or with two or more slashes; URLs
# are kept (the first group) since they name no file of this machine.
_URL_OR_PATH = re.compile(
    r"(\b[a-z][a-z0-9+.-]*://\S+)"
    r"|(?<![\w~.:/-])(?:~|\.{1,2})?/[^\s()\[\]{}'\",;]+"
    r"|\b[\w.-]+(?:/[\w.-]+){2,}/?"
)


def public_reason(text: str) -> str:
    """`text` as clients may see it: every file path cut to its file name. Reasons name the
    files that are missing (`no train data (../seed_data/train.jsonl.gz)`); where they live on
    this machine is for the launcher's log only. `file://` URLs are paths too."""

    def file_name(match: re.Match[str]) -> str:
        url = match.group(1)
        if url is not None and not url.lower().startswith("file:"):
            return url
        name = match.group(0).rstrip("/").rsplit("/", 1)[-1]
        return name or "/"

    return _URL_OR_PATH.sub(file_name, text)


@dataclass(frozen=True)
class Reading:
    """Each served model's state ('ready' or why not), and when it was read (monotonic s)."""

    models: dict[str, str]
    taken_at: float


@dataclass(frozen=True)
class ReadingTiming:
    """How often readiness is read, how old a reading may be, and the clock (tests move it)."""

    read_every_s: float = READ_EVERY_S
    stale_after_s: float = STALE_AFTER_S
    clock: Callable[[], float] = time.monotonic


class _StatusQuestions:
    """Asks TorchServe about models on a few threads, at most one question per model at a time."""

    def __init__(self, models: Sequence[str], model_status: StatusSource) -> None:
        self._model_status = model_status
        self._asking: dict[str, Future[str]] = {}
        self._pool = ThreadPoolExecutor(
            max_workers=max(1, min(8, len(models))), thread_name_prefix="readiness"
        )

    def ask(self, models: Sequence[str]) -> dict[str, str]:
        """Each model's state, or why it is unknown, within STATUS_WAIT_S. A model whose previous
        question is still unanswered is not asked again, so a hung TorchServe never piles them up."""
        for name in models:
            if name not in self._asking or self._asking[name].done():
                self._asking[name] = self._pool.submit(self._model_status, name)
        deadline = time.monotonic() + STATUS_WAIT_S
        answers = {}
        for name in models:
            try:
                answers[name] = self._asking[name].result(timeout=max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                answers[name] = "TorchServe did not answer in time"
            except Exception as error:  # pylint: disable=broad-exception-caught
                log.warning("could not read the state of %s: %s", name, error)
                answers[name] = f"its state could not be read ({type(error).__name__})"
        return answers

    def close(self) -> None:
        """Stop asking; a question in progress is abandoned."""
        self._pool.shutdown(wait=False, cancel_futures=True)


class Readiness:  # pylint: disable=too-many-instance-attributes
    """Decides health from per-model status read in the background; once `stopping`, always
    unhealthy. `report()` and `statuses()` only look at memory."""

    def __init__(
        self,
        models: Sequence[str],
        model_status: StatusSource,
        skipped: dict[str, str] | None = None,
        timing: ReadingTiming = ReadingTiming(),
        trained_on: dict[str, str] | None = None,
        traffic: Callable[[], dict[str, Any]] | None = None,
        optional: Collection[str] = (),
    ) -> None:
        self._models = list(models)
        # Models shown but never holding the server back (candidates: a broken one gets no
        # traffic, and its primary answers as before).
        self._optional = set(optional)
        # Each candidate's traffic shares and how it compares, shown with the models' states.
        self._traffic = traffic
        self._skipped = {name: public_reason(why) for name, why in (skipped or {}).items()}
        # What each model the project trained was trained on: clients can tell which data it is.
        self._trained_on = {
            name: public_reason(note) for name, note in (trained_on or {}).items() if name in self._models
        }
        self._timing = timing
        self._questions = _StatusQuestions(self._models, model_status)
        self._phase = "starting"
        self._lock = threading.Lock()
        self._reading: Reading | None = None
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._loop = threading.Thread(target=self._read_forever, name="readiness", daemon=True)

    @property
    def phase(self) -> str:
        """'starting', 'serving' or 'stopping'."""
        return self._phase

    @property
    def skipped(self) -> dict[str, str]:
        """Models not served (their source could not be had), each with its public reason."""
        return dict(self._skipped)

    def set_phase(self, phase: str) -> None:
        """Move on, and read again at once; nothing moves a stopping server back to serving."""
        if phase not in PHASES:
            raise ValueError(phase)
        with self._lock:
            if self._phase != "stopping":
                self._phase = phase
        self._wake.set()

    def start(self) -> None:
        """Read now, then about every `read_every_s`, in a background thread."""
        if self._loop.ident is None:
            self._loop.start()

    def stop(self) -> None:
        """End the loop (a reading in progress is abandoned)."""
        self._stopped.set()
        self._wake.set()
        if self._loop.is_alive():
            self._loop.join(timeout=STATUS_WAIT_S + 1.0)
        self._questions.close()

    def _read_forever(self) -> None:
        while not self._stopped.is_set():
            self._wake.clear()
            try:
                self.refresh()
            except Exception:  # pylint: disable=broad-exception-caught
                # The loop must outlive any surprise: were it to stop, its last reading would go
                # stale and /healthcheck would stay 503.
                log.exception("could not read the models' readiness")
            self._wake.wait(self._timing.read_every_s)

    def refresh(self) -> Reading:
        """Ask TorchServe about every model now (in parallel, within STATUS_WAIT_S) and keep
        the answers as the reading `/healthcheck` serves."""
        started = self._timing.clock()
        reading = Reading(self._questions.ask(self._models), started)
        self._reading = reading
        return reading

    def statuses(self) -> dict[str, str]:
        """Each served model's state ('ready' or why not) from the latest reading; no model is
        ready when there is none yet or it is stale."""
        reading = self._reading
        if reading is None:
            return {name: "not checked yet" for name in self._models}
        age = self._timing.clock() - reading.taken_at
        if age > self._timing.stale_after_s:
            return {name: f"no fresh reading (the last is {age:.0f} s old)" for name in self._models}
        return {name: public_reason(why) for name, why in reading.models.items()}

    def report(self) -> tuple[int, dict[str, Any]]:
        """(status code, JSON body) for `/healthcheck`."""
        if self._phase == "stopping":
            return error_response(ModelUnavailable("the server is shutting down", status="Unhealthy"))
        models = self.statuses()
        not_ready = {
            name: why for name, why in models.items() if why != "ready" and name not in self._optional
        }
        # A skipped model (its source could not be had) is reported, but it is not being served,
        # so it does not hold back the models that are.
        models.update({name: f"skipped: {why}" for name, why in self._skipped.items()})
        extra: dict[str, Any] = {"skipped": sorted(self._skipped)} if self._skipped else {}
        if self._trained_on:
            extra["trained_on"] = dict(self._trained_on)
        if self._traffic is not None:
            extra["traffic"] = self._traffic()
        if not not_ready:
            return 200, {"status": "Healthy", "models": models, **extra}
        reasons = "; ".join(f"{name}: {why}" for name, why in sorted(not_ready.items()))
        return error_response(
            ModelUnavailable(f"not ready: {reasons}", status="Unhealthy", models=models, **extra)
        )


# (content type, body) or (content type, body, headers such as Cache-Control)
Document = tuple[str, bytes] | tuple[str, bytes, dict[str, str]]
Page = Callable[[], Document]  # made on each GET
Pages = dict[str, Page]
# -> (status, JSON body) for a path it knows (e.g. /v2/models/{name}/ready), else None
JsonPages = Callable[[str], "tuple[int, dict[str, Any]] | None"]


class PageBusy(ModelUnavailable):
    """A page already has as many readers as it allows: refused at once with Retry-After."""

    type = ErrorType.OVERLOADED


def static_pages(documents: dict[str, Document]) -> Pages:
    """Pages that always answer the same (content type, body), made once at start."""
    return {path: (lambda document=document: document) for path, document in documents.items()}


class ReaderLimit:
    """A group of pages made for at most `readers` requests at once; one more is refused
    (PageBusy) at once rather than queued, so the group never holds more than `readers`
    handler threads."""

    def __init__(self, what: str, readers: int) -> None:
        self._what = what
        self._readers = readers
        self._slots = threading.BoundedSemaphore(readers)

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one of the readers' places, or refuse at once."""
        if not self._slots.acquire(blocking=False):  # pylint: disable=consider-using-with  # no wait
            raise PageBusy(f"{self._what} is being read by {self._readers} other requests; retry shortly")
        try:
            yield
        finally:
            self._slots.release()

    def page(self, page: Page) -> Page:
        """`page`, within this limit."""

        def answer() -> Document:
            with self.slot():
                return page()

        return answer

    def pages(self, pages: Pages) -> Pages:
        """Every page of `pages`, within this one limit (shared by all of them)."""
        return {path: self.page(page) for path, page in pages.items()}

    def json_pages(self, pages: JsonPages) -> JsonPages:
        """Paths `pages` answers, within this limit."""

        def answer(path: str) -> tuple[int, dict[str, Any]] | None:
            with self.slot():
                return pages(path)

        return answer


def limited(path: str, page: Page, readers: int) -> Page:
    """`page` made by at most `readers` requests at once (a limit of its own)."""
    return ReaderLimit(path, readers).page(page)


class _BoundedHTTPServer(HTTPServer):
    """Accepts on one thread and hands each connection to a fixed set of handler threads
    through a bounded queue; a connection beyond the queue is closed at once (Envoy answers
    that client with its JSON 503), so no burst grows threads or memory."""

    request_queue_size = 64  # the kernel's accept backlog

    def __init__(self, port: int, handler: type[BaseHTTPRequestHandler], threads: int, waiting: int) -> None:
        # Set before binding: a failed bind closes the server, and the close reads them.
        self._waiting: queue.Queue[tuple[socket.socket, Any] | None] = queue.Queue(maxsize=waiting)
        self._refused = 0
        self._handlers: list[threading.Thread] = []
        super().__init__(("127.0.0.1", port), handler)
        self._handlers = [
            threading.Thread(target=self._handle_forever, name=f"health-{index}", daemon=True)
            for index in range(threads)
        ]
        for thread in self._handlers:
            thread.start()

    def process_request(self, request: Any, client_address: Any) -> None:
        """Queue the connection for a handler thread, or close it if the queue is full."""
        try:
            self._waiting.put_nowait((request, client_address))
        except queue.Full:
            self._refused += 1
            if self._refused in (1, 10, 100) or self._refused % 1000 == 0:
                log.warning("health server busy: %d connections closed unanswered so far", self._refused)
            self.shutdown_request(request)

    def _handle_forever(self) -> None:
        while (waiting := self._waiting.get()) is not None:
            request, client_address = waiting
            try:
                self.finish_request(request, client_address)
            except Exception:  # pylint: disable=broad-exception-caught
                self.handle_error(request, client_address)
            finally:
                self.shutdown_request(request)

    def server_close(self) -> None:
        """Release the port, and end the handler threads once they finish what is queued."""
        super().server_close()
        for _ in self._handlers:
            self._waiting.put(None)
        for thread in self._handlers:
            thread.join(timeout=CLIENT_TIMEOUT_S)


class HealthServer:
    """A small HTTP server on loopback: GET /healthcheck from a `Readiness` (whose loop it runs),
    and other GET pages: the API's documents (/openapi.json, /docs) and /metrics."""

    def __init__(
        self,
        port: int,
        readiness: Readiness,
        pages: Pages | None = None,
        *,
        json_pages: JsonPages | None = None,
        threads: int = HANDLER_THREADS,
        waiting: int = WAITING_CONNECTIONS,
    ) -> None:
        self._readiness = readiness
        handler = _handler_for(readiness, dict(pages or {}), json_pages or (lambda _: None))
        self._server = _BoundedHTTPServer(port, handler, threads, waiting)
        self._thread = threading.Thread(target=self._server.serve_forever, name="health", daemon=True)

    @property
    def port(self) -> int:
        """The port it listens on (useful when started on port 0)."""
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Read readiness and serve, in background threads."""
        self._readiness.start()
        self._thread.start()

    def stop(self) -> None:
        """Stop serving, release the port and stop reading readiness."""
        self._server.shutdown()
        self._server.server_close()
        self._readiness.stop()


def _handler_for(readiness: Readiness, pages: Pages, json_pages: JsonPages) -> type[BaseHTTPRequestHandler]:
    class HealthHandler(BaseHTTPRequestHandler):
        """GET /healthcheck and the other pages; everything else is a JSON 404. One request
        per connection (HTTP/1.0), so an idle keep-alive connection never holds a thread."""

        timeout = CLIENT_TIMEOUT_S

        def do_GET(self) -> None:  # pylint: disable=invalid-name
            """Answer the health check, or a page."""
            path = self.path.split("?", 1)[0]
            if path == "/healthcheck":
                self._send(*readiness.report())
            elif path in pages:
                try:
                    content_type, data, *headers = pages[path]()
                except PageBusy as busy:
                    self._send(*error_response(busy), retry_after_s=BUSY_RETRY_AFTER_S)
                    return
                self._send_bytes(200, content_type, data, headers=headers[0] if headers else None)
            elif (answer := json_pages(path)) is not None:
                self._send(*answer)
            else:
                self._send(*error_response(NotFound("no such route")))

        def _send(
            self, status: int, body: dict[str, Any], retry_after_s: int = UNAVAILABLE_RETRY_AFTER_S
        ) -> None:
            data = json.dumps(body).encode("utf-8")
            self._send_bytes(status, "application/json", data, retry_after_s)

        def _send_bytes(
            self,
            status: int,
            content_type: str,
            data: bytes,
            retry_after_s: int = UNAVAILABLE_RETRY_AFTER_S,
            headers: dict[str, str] | None = None,
        ) -> None:
            self.send_response(status, HTTPStatus(status).phrase)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            if status == HTTPStatus.SERVICE_UNAVAILABLE:
                self.send_header("Retry-After", str(retry_after_s))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # pylint: disable=redefined-builtin
            """Probes arrive every few seconds: keep them out of the log."""

    return HealthHandler

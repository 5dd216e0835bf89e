"""`/healthcheck`: 200 only when every served model has a ready worker, else 503 naming why.

TorchServe's `/ping` says Healthy while models are still loading, so the launcher serves this
itself (loopback; Envoy routes the public `/healthcheck` here) and asks the management API.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from modelserver.errors import ModelUnavailable, NotFound, error_response

log = logging.getLogger(__name__)

StatusSource = Callable[[str], str]
PHASES = ("starting", "serving", "stopping")


class Readiness:
    """Decides health from per-model status; once `stopping`, always unhealthy."""

    def __init__(
        self, models: Sequence[str], model_status: StatusSource, skipped: dict[str, str] | None = None
    ) -> None:
        self._models = list(models)
        self._model_status = model_status
        self._skipped = dict(skipped or {})
        self._phase = "starting"
        self._lock = threading.Lock()

    @property
    def phase(self) -> str:
        """'starting', 'serving' or 'stopping'."""
        return self._phase

    def set_phase(self, phase: str) -> None:
        """Move on; nothing moves a stopping server back to serving."""
        if phase not in PHASES:
            raise ValueError(phase)
        with self._lock:
            if self._phase != "stopping":
                self._phase = phase

    def statuses(self) -> dict[str, str]:
        """Each served model's state ('ready' or why not), asked in parallel."""
        with ThreadPoolExecutor(max_workers=max(1, min(8, len(self._models)))) as pool:
            return dict(zip(self._models, pool.map(self._model_status, self._models), strict=True))

    def report(self) -> tuple[int, dict[str, Any]]:
        """(status code, JSON body) for `/healthcheck`."""
        if self._phase == "stopping":
            return error_response(ModelUnavailable("the server is shutting down", status="Unhealthy"))
        models = self.statuses()
        not_ready = {name: why for name, why in models.items() if why != "ready"}
        # A skipped model (its source could not be had) is reported, but it is not being served,
        # so it does not hold back the models that are.
        models.update({name: f"skipped: {why}" for name, why in self._skipped.items()})
        extra = {"skipped": sorted(self._skipped)} if self._skipped else {}
        if not not_ready:
            return 200, {"status": "Healthy", "models": models, **extra}
        reasons = "; ".join(f"{name}: {why}" for name, why in sorted(not_ready.items()))
        return error_response(
            ModelUnavailable(f"not ready: {reasons}", status="Unhealthy", models=models, **extra)
        )


Page = Callable[[], tuple[str, bytes]]  # -> (content type, body), made on each GET
Pages = dict[str, Page]


def static_pages(documents: dict[str, tuple[str, bytes]]) -> Pages:
    """Pages that always answer the same (content type, body), made once at start."""
    return {path: (lambda document=document: document) for path, document in documents.items()}


class HealthServer:
    """A small HTTP server on loopback: GET /healthcheck from a `Readiness`, and other GET
    pages: the API's documents (/openapi.json, /docs) and /metrics."""

    def __init__(self, port: int, readiness: Readiness, pages: Pages | None = None) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", port), _handler_for(readiness, dict(pages or {})))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="health", daemon=True)

    def start(self) -> None:
        """Serve in a background thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()


def _handler_for(readiness: Readiness, pages: Pages) -> type[BaseHTTPRequestHandler]:
    class HealthHandler(BaseHTTPRequestHandler):
        """GET /healthcheck and the other pages; everything else is a JSON 404."""

        def do_GET(self) -> None:  # pylint: disable=invalid-name
            """Answer the health check, or a page."""
            path = self.path.split("?", 1)[0]
            if path == "/healthcheck":
                self._send(*readiness.report())
            elif path in pages:
                content_type, data = pages[path]()
                self._send_bytes(200, content_type, data)
            else:
                self._send(*error_response(NotFound("no such route")))

        def _send(self, status: int, body: dict[str, Any]) -> None:
            self._send_bytes(status, "application/json", json.dumps(body).encode("utf-8"))

        def _send_bytes(self, status: int, content_type: str, data: bytes) -> None:
            self.send_response(status, HTTPStatus(status).phrase)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            if status == HTTPStatus.SERVICE_UNAVAILABLE:
                self.send_header("Retry-After", "5")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # pylint: disable=redefined-builtin
            """Probes arrive every few seconds: keep them out of the log."""

    return HealthHandler

"""`/healthcheck`: 200 only when every served model has a ready worker, else 503 naming why.

TorchServe's `/ping` says Healthy while models are still loading, so the launcher serves this
itself (loopback; Envoy routes the public `/healthcheck` here) and asks the management API.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)

StatusSource = Callable[[str], str]


class Readiness:
    """Decides health from per-model status; `stopping` overrides it during shutdown."""

    def __init__(
        self, models: Sequence[str], model_status: StatusSource, skipped: dict[str, str] | None = None
    ) -> None:
        self._models = list(models)
        self._model_status = model_status
        self._skipped = dict(skipped or {})
        self._phase = "starting"

    def set_phase(self, phase: str) -> None:
        """'starting', 'serving' or 'stopping'."""
        self._phase = phase

    def report(self) -> tuple[int, dict[str, Any]]:
        """(status code, JSON body) for `/healthcheck`."""
        if self._phase == "stopping":
            return 503, {"status": "Unhealthy", "error": "the server is shutting down"}
        models = {name: self._model_status(name) for name in self._models}
        models.update(self._skipped)
        not_ready = {name: why for name, why in models.items() if why != "ready"}
        if not not_ready:
            return 200, {"status": "Healthy", "models": models}
        reasons = "; ".join(f"{name}: {why}" for name, why in sorted(not_ready.items()))
        return 503, {"status": "Unhealthy", "error": f"not ready: {reasons}", "models": models}


class HealthServer:
    """A small HTTP server on loopback answering GET /healthcheck from a `Readiness`."""

    def __init__(self, port: int, readiness: Readiness) -> None:
        handler = _handler_for(readiness)
        self._server = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="health", daemon=True)

    def start(self) -> None:
        """Serve in a background thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()


def _handler_for(readiness: Readiness) -> type[BaseHTTPRequestHandler]:
    class HealthHandler(BaseHTTPRequestHandler):
        """GET /healthcheck only; everything else is a JSON 404."""

        def do_GET(self) -> None:  # pylint: disable=invalid-name
            """Answer the health check."""
            if self.path.split("?", 1)[0] != "/healthcheck":
                self._send(404, {"error": "no such route", "status": 404})
                return
            status, body = readiness.report()
            self._send(status, body)

        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode("utf-8")
            self.send_response(status, HTTPStatus(status).phrase)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if status == 503:
                self.send_header("Retry-After", "5")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # pylint: disable=redefined-builtin
            """Probes arrive every few seconds: keep them out of the log."""

    return HealthHandler

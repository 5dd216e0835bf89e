"""The Open Inference Protocol's GET endpoints, answered by the launcher from memory.

Server liveness, readiness and metadata, and each model's metadata and readiness, come from the
catalogue's kinds (their tensor codecs) and the readiness loop's latest reading: ready means the
model has a READY worker now; a skipped model is never ready. `infer` goes through Envoy to
TorchServe like every other prediction.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from modelserver.errors import ModelUnavailable, NotFound, ServingError, error_response
from modelserver.launcher.pages.health import Readiness
from modelserver.protocols.open_inference import MODEL_VERSION, TensorCodec

SERVER_NAME = "modelserver"
SERVER_VERSION = "1"
PREFIX = "/v2"
MODEL_PATH = re.compile(r"/v2/models/([A-Za-z0-9_.-]+)(?:/versions/([A-Za-z0-9_.-]+))?(/ready)?")
Answer = tuple[int, dict[str, Any]]


class OpenInferencePages:
    """`GET /v2`, `/v2/health/{live,ready}`, `/v2/models/{name}[/versions/{v}][/ready]`."""

    def __init__(self, codecs: Mapping[str, TensorCodec | None], readiness: Readiness) -> None:
        self._codecs = dict(codecs)
        self._readiness = readiness

    def answer(self, path: str) -> Answer | None:
        """(status, JSON body) for a v2 path; None for any other path."""
        if path != PREFIX and not path.startswith(PREFIX + "/"):
            return None
        try:
            return self._answer(path)
        except ServingError as error:
            return error_response(error)

    def _answer(self, path: str) -> Answer:
        if path == PREFIX:
            return 200, {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": []}
        if path == "/v2/health/live":
            return 200, {"live": True}
        if path == "/v2/health/ready":
            status, body = self._readiness.report()
            if status != 200:
                raise ModelUnavailable(body["error"], ready=False)
            return 200, {"ready": True}
        found = MODEL_PATH.fullmatch(path)
        if found is None:
            raise NotFound("no such route")
        name, version, ready = found.groups()
        codec = self._codecs.get(name)
        if name not in self._codecs or codec is None:
            served = sorted(model for model, codec in self._codecs.items() if codec is not None)
            raise NotFound(f"no model named {name!r} speaks this protocol here; models: {served}")
        if version is not None and version != MODEL_VERSION:
            raise NotFound(f"model {name} has only version {MODEL_VERSION}")
        if ready:
            self._check_ready(name)
            return 200, {"name": name, "ready": True}
        return 200, codec.metadata(name)

    def _check_ready(self, name: str) -> None:
        """Raise ModelUnavailable (a 503 with `ready: false`) unless `name` can answer now."""
        skipped = self._readiness.skipped
        if name in skipped:
            raise ModelUnavailable(f"model {name} is not available: {skipped[name]}", ready=False)
        if self._readiness.phase == "stopping":
            raise ModelUnavailable("the server is shutting down", ready=False)
        state = self._readiness.statuses().get(name, "not served")
        if state != "ready":
            raise ModelUnavailable(f"model {name} is not ready: {state}", ready=False)

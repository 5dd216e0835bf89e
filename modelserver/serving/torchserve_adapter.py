"""The TorchServe side of every handler: context and bytes in, per-request statuses out.

It reads only duck-typed attributes of TorchServe's `Context`, so nothing here imports `ts`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from http import HTTPStatus
from pathlib import Path
from typing import Any, ClassVar

from modelserver.errors import ConfigError, ModelFailure
from modelserver.kinds import ModelFiles
from modelserver.payload import request_body
from modelserver.serving.batch import BatchAnswerer, Outcome, Runtime

log = logging.getLogger(__name__)

RuntimeLoader = Callable[[ModelFiles], Runtime[Any]]
JSON_CONTENT_TYPE = "application/json"


def handler_settings(context: Any) -> dict[str, Any]:
    """The `handler:` section of the archive's model-config.yaml (empty when absent)."""
    config = getattr(context, "model_yaml_config", None) or {}
    settings = config.get("handler") or {}
    if not isinstance(settings, Mapping):
        raise ConfigError("model-config.yaml: 'handler' must be a mapping")
    return dict(settings)


def serialized_file(context: Any) -> str:
    """The model file the archive was built with (`--serialized-file`), or '' for folders."""
    manifest = getattr(context, "manifest", None) or {}
    return str(manifest.get("model", {}).get("serializedFile", ""))


def encode(outcome: Outcome) -> tuple[int, bytes]:
    """Serialise one answer; an answer that is not valid JSON (NaN) becomes a 500 of its own."""
    try:
        return outcome.status, json.dumps(outcome.body, allow_nan=False, separators=(",", ":")).encode()
    except (TypeError, ValueError) as error:
        log.error("an answer could not be serialised: %s", type(error).__name__)
        return encode(Outcome.of_error(ModelFailure("the model produced an answer that is not valid JSON")))


class TorchServeAdapter:
    """Base of every handler: subclasses only name the loader of their model kind."""

    load_runtime: ClassVar[RuntimeLoader]

    def __init__(self) -> None:
        self.initialized = False
        self._answerer: BatchAnswerer[Any] | None = None

    def initialize(self, context: Any) -> None:
        """Load the model once per worker; a bad archive fails the load with its reason."""
        config = getattr(context, "model_yaml_config", None) or {}
        files = ModelFiles(
            model_dir=Path(context.system_properties["model_dir"]),
            model_file=serialized_file(context),
            settings=handler_settings(context),
            names=tuple(dict.fromkeys([context.model_name, *config.get("served_names", [])])),
        )
        runtime = type(self).load_runtime(files)
        self._answerer = BatchAnswerer(runtime, model_name=context.model_name)
        self.initialized = True

    def handle(self, data: list[Any], context: Any) -> list[bytes]:
        """Answer a TorchServe batch: one JSON body per request, each with its own status."""
        if self._answerer is None:
            raise RuntimeError("handle() called before initialize()")
        encoded = [encode(outcome) for outcome in self._answerer.answer([request_body(row) for row in data])]
        for index, (status, _) in enumerate(encoded):
            context.set_response_content_type(index, JSON_CONTENT_TYPE)
            if status != HTTPStatus.OK:
                context.set_response_status(status, HTTPStatus(status).phrase, index)
        return [body for _, body in encoded]

"""The TorchServe side of every model: context and bytes in, per-request statuses out.

One handler serves every kind: the archive's model-config.yaml names the kind, the kind's
settings model parses its `handler:` section (once, here), and the kind registry loads its
predictor. It reads only duck-typed attributes of TorchServe's `Context`, so
nothing here imports `ts`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from http import HTTPStatus
from pathlib import Path
from typing import Any, ClassVar

from modelserver.errors import ConfigError, InvalidInput, ModelFailure, error_response
from modelserver.kinds import ModelFiles
from modelserver.kinds.contract import Predictor
from modelserver.kinds.registry import kind_named
from modelserver.payload import MAX_ANSWER_BYTES, request_body
from modelserver.protocols.open_inference import PROTOCOL, PROTOCOL_HEADER, TensorCodec
from modelserver.serving.batch import NDJSON, BatchAnswerer, BatchTimes, Emit, Outcome, ndjson
from modelserver.serving.deadlines import late_requests
from modelserver.serving.handler_metrics import report_batch, report_start
from modelserver.serving.headers import HANDLER_ANSWER
from modelserver.serving.protocol_batch import answer_batch
from modelserver.serving.trace_context import log_traced, request_traces
from modelserver.serving.ts_socket import install_read_ahead
from modelserver.validation import parse_settings

log = logging.getLogger(__name__)


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


def gpu_of(context: Any) -> int | None:
    """The GPU TorchServe gave this worker (`gpu_id`), or None on a CPU-only server."""
    gpu_id = context.system_properties.get("gpu_id")
    return None if gpu_id is None or gpu_id == "" else int(gpu_id)


def too_large(size: int, limit: int) -> InvalidInput:
    """The error an answer over the response-size cap becomes: TorchServe would fail the
    response rather than send it."""
    return InvalidInput(
        f"the answer is {size} bytes long; at most {limit} bytes per answer: ask for less per request"
    )


def encode(outcome: Outcome, limit: int = MAX_ANSWER_BYTES) -> Outcome:
    """Serialise one answer to bytes; an answer that is not valid JSON (NaN) becomes a 500,
    one longer than `limit` bytes (JSON, or a stream's NDJSON chunk) a 422."""
    if isinstance(outcome.body, bytes):
        body = outcome.body
    else:
        try:
            body = json.dumps(outcome.body, allow_nan=False, separators=(",", ":")).encode()
        except (TypeError, ValueError) as error:
            log.error("an answer could not be serialised: %s", type(error).__name__)
            failure = ModelFailure("the model produced an answer that is not valid JSON")
            return encode(Outcome.of_error(failure), limit)
    if len(body) > limit:
        log.warning("an answer of %d bytes was over the %d-byte cap", len(body), limit)
        return encode(Outcome.of_error(too_large(len(body), limit)), limit)
    return Outcome(outcome.status, body, outcome.content_type)


def capped_emitter(emit: Emit, limit: int) -> Emit:
    """`emit`, with a streamed chunk longer than `limit` bytes sent as one NDJSON error line
    instead (TorchServe sends each chunk as its own response, under the same size limit)."""

    def send(index: int, chunk: bytes) -> None:
        if len(chunk) > limit:
            log.warning("a streamed chunk of %d bytes was over the %d-byte cap", len(chunk), limit)
            chunk = ndjson([error_response(too_large(len(chunk), limit))[1]])
        emit(index, chunk)

    return send


def speaks_open_inference(context: Any, index: int) -> bool:
    """Whether request `index` came through the v2 `infer` route (Envoy's header says so;
    Envoy strips it from every client request)."""
    header = getattr(context, "get_request_header", None)
    return header is not None and header(index, PROTOCOL_HEADER) == PROTOCOL


def _renumbered(emit: Emit, indices: Sequence[int]) -> Emit:
    """`emit` for a batch of the requests at `indices` only: chunk i belongs to indices[i]."""
    return lambda index, chunk: emit(indices[index], chunk)


def stream_emitter(context: Any) -> Emit:
    """Send one chunk of a streaming answer now (TorchServe's intermediate responses)."""

    def emit(index: int, chunk: bytes) -> None:
        # Imported here so the rest of the adapter, and its tests, run without TorchServe.
        from ts.handler_utils.utils import send_intermediate_predict_response  # pylint: disable=import-outside-toplevel

        context.set_response_content_type(index, NDJSON)
        context.set_response_header(index, HANDLER_ANSWER, "1")
        request_id = context.request_ids[index]
        send_intermediate_predict_response({index: chunk}, {index: request_id}, "streaming", 200, context)

    return emit


def _describe_responses(context: Any, outcomes: Sequence[Outcome]) -> None:
    """Each response's content type, status and the handler's mark (what tells Envoy the
    answer is ours, not TorchServe's own)."""
    for index, outcome in enumerate(outcomes):
        context.set_response_content_type(index, outcome.content_type)
        context.set_response_header(index, HANDLER_ANSWER, "1")
        if outcome.status != HTTPStatus.OK:
            context.set_response_status(outcome.status, HTTPStatus(outcome.status).phrase, index)
        if outcome.status == HTTPStatus.METHOD_NOT_ALLOWED:
            # A spec's "validation exception" 405: every 405 says which method the route takes.
            context.set_response_header(index, "allow", "POST")


class TorchServeAdapter:
    """Every archive's handler: loads the archive's kind and answers its batches."""

    # How a streamed chunk leaves the worker (a test's handler watches the chunks instead).
    make_emitter: ClassVar[Callable[[Any], Emit]] = staticmethod(stream_emitter)

    def __init__(self) -> None:
        self.initialized = False
        self._answerer: BatchAnswerer[Any] | None = None
        self._codec: TensorCodec | None = None
        self._answer_limit = MAX_ANSWER_BYTES

    def initialize(self, context: Any) -> None:
        """Load the model once per worker; a bad archive fails the load with its reason."""
        config = getattr(context, "model_yaml_config", None) or {}
        if "kind" not in config:
            raise ConfigError(
                "this archive names no model kind: it was built by an older builder; rebuild it"
            )
        kind = kind_named(config["kind"])
        files = ModelFiles(
            model_dir=Path(context.system_properties["model_dir"]),
            settings=parse_settings(kind.settings, handler_settings(context)),
            model_file=serialized_file(context),
            names=tuple(dict.fromkeys([context.model_name, *config.get("served_names", [])])),
            gpu_id=gpu_of(context),
        )
        predictor: Predictor[Any] = kind.load(files)
        self._codec = kind.open_inference
        if type(context).__module__.startswith("ts."):  # a real worker, not a test's fake context
            install_read_ahead()
        self._answerer = BatchAnswerer(predictor, model_name=context.model_name)
        self._answer_limit = predictor.max_answer_bytes
        report_start(getattr(context, "metrics", None))
        self.initialized = True

    def handle(self, data: list[Any], context: Any) -> list[bytes]:
        """Answer a TorchServe batch: one body per request, each with its own status."""
        if self._answerer is None:
            raise RuntimeError("handle() called before initialize()")
        times = BatchTimes()
        with times.phase("preprocess"):
            bodies = [request_body(row) for row in data]
            late = late_requests(context, len(data), time.time())
        awaited = [index for index, error in enumerate(late) if error is None]
        emit = capped_emitter(type(self).make_emitter(context), self._answer_limit)
        protocols = [speaks_open_inference(context, index) for index in awaited]
        computed = (
            answer_batch(
                self._answerer,
                self._codec,
                context.model_name,
                [bodies[index] for index in awaited],
                protocols,
                _renumbered(emit, awaited),
                times,
            )
            if awaited
            else []
        )
        by_index = dict(zip(awaited, computed, strict=True))
        answers = [by_index[i] if error is None else Outcome.of_error(error) for i, error in enumerate(late)]
        with times.phase("postprocess"):
            outcomes = [encode(answer, self._answer_limit) for answer in answers]
            _describe_responses(context, outcomes)
        statuses = [outcome.status for outcome in outcomes]
        report_batch(getattr(context, "metrics", None), statuses, times, expired=len(data) - len(awaited))
        # The trace id of each traced request (only with tracing on: Envoy drops it otherwise).
        log_traced(context.model_name, request_traces(context, len(data)), statuses)
        return [outcome.body for outcome in outcomes]

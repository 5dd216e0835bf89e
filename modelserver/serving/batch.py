"""Answer a batch of raw request bodies: exactly one outcome per request, in order.

Bad requests are answered on their own; the valid ones share one model call. If that call
fails, each valid request is retried alone so a poison request cannot fail its neighbours.
A request that asks to stream is answered in chunks, one NDJSON line per item, as each chunk
is computed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from modelserver.errors import InvalidInput, ModelFailure, ServingError, error_response
from modelserver.kinds.contract import Predictor
from modelserver.payload import decode_json_body

log = logging.getLogger(__name__)

RequestT = TypeVar("RequestT")
JSON = "application/json"
NDJSON = "application/x-ndjson"
Emit = Callable[[int, bytes], None]


@dataclass(frozen=True)
class Outcome:
    """The HTTP status and body (a JSON value, or bytes already encoded) for one request."""

    status: int
    body: Any
    content_type: str = JSON

    @classmethod
    def of_error(cls, error: ServingError) -> Outcome:
        """The outcome of a request that failed with `error`."""
        status, body = error_response(error)
        return cls(status, body)


def ndjson(lines: Sequence[dict[str, Any]]) -> bytes:
    """NDJSON: one compact JSON object per line."""
    return b"".join(
        json.dumps(line, allow_nan=False, separators=(",", ":")).encode() + b"\n" for line in lines
    )


@dataclass
class BatchTimes:
    """Seconds one batch spent in each phase, for the per-model metrics. Made per batch by the
    caller and never kept, so no request's state outlives its batch."""

    preprocess: float = 0.0
    inference: float = 0.0
    postprocess: float = 0.0

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Add the time spent inside the block to `name`."""
        start = time.perf_counter()
        try:
            yield
        finally:
            setattr(self, name, getattr(self, name) + time.perf_counter() - start)


@dataclass
class BatchAnswerer(Generic[RequestT]):
    """Runs a kind's `Predictor` over TorchServe-style batches."""

    predictor: Predictor[RequestT]
    model_name: str = "model"

    def answer(
        self, bodies: Sequence[Any], emit: Emit | None = None, times: BatchTimes | None = None
    ) -> list[Outcome]:
        """One outcome per body: parse each, predict the valid ones together; stream the
        requests that ask for it through `emit(index, chunk)` (the last chunk is returned).
        Parsing counts as `preprocess` in `times`, predicting and streaming as `inference`."""
        times = times if times is not None else BatchTimes()
        outcomes: list[Outcome | None] = [None] * len(bodies)
        with times.phase("preprocess"):
            valid, streams = self._parse_all(bodies, outcomes, emit is not None)
        with times.phase("inference"):
            for (index, _), outcome in zip(valid, self._predict([r for _, r in valid]), strict=True):
                outcomes[index] = outcome
            if streams:
                assert emit is not None
                for index, outcome in self._stream(streams, emit).items():
                    outcomes[index] = outcome
        return [o if o is not None else Outcome.of_error(ModelFailure("no answer")) for o in outcomes]

    def _parse_all(
        self, bodies: Sequence[Any], outcomes: list[Outcome | None], can_stream: bool
    ) -> tuple[list[tuple[int, RequestT]], list[tuple[int, RequestT]]]:
        """Validate every body: the invalid ones get their outcome now; the valid ones are
        returned as (index, request), those asking to stream apart."""
        valid: list[tuple[int, RequestT]] = []
        streams: list[tuple[int, RequestT]] = []
        for index, body in enumerate(bodies):
            try:
                request = self.predictor.parse(self._decode(body))
            except ServingError as error:
                outcomes[index] = Outcome.of_error(error)
                continue
            except Exception as error:  # pylint: disable=broad-exception-caught
                # A bug in validation must cost this request only, never its whole batch.
                log.error("%s could not validate a request: %s", self.model_name, type(error).__name__)
                outcomes[index] = Outcome.of_error(ModelFailure("the request could not be validated"))
                continue
            wants_stream = can_stream and self.predictor.wants_stream(request)
            (streams if wants_stream else valid).append((index, request))
        return valid, streams

    def _decode(self, body: Any) -> Any:
        """Strict JSON; a kind whose published spec names another status for invalid input
        (`invalid_input`, e.g. /prediction's 405) gets its own error class."""
        try:
            return decode_json_body(body)
        except InvalidInput as error:
            raise self.predictor.invalid_input(error.message) from None

    def _predict(self, requests: list[RequestT]) -> list[Outcome]:
        if not requests:
            return []
        try:
            answers = self.predictor.predict(requests)
            if len(answers) != len(requests):
                raise ModelFailure(f"{len(answers)} answers for {len(requests)} requests")
            # A predictor may answer one request of a batch with an error (e.g. a text too long).
            return [
                Outcome.of_error(answer) if isinstance(answer, ServingError) else Outcome(200, answer)
                for answer in answers
            ]
        except ServingError as error:
            if len(requests) == 1:
                return [Outcome.of_error(error)]
        except Exception as error:  # pylint: disable=broad-exception-caught
            log.error(
                "%s failed predicting a batch of %d: %s",
                self.model_name,
                len(requests),
                type(error).__name__,
                exc_info=len(requests) == 1,
            )
            if len(requests) == 1:
                failure = ModelFailure(f"the {self.model_name} model failed: {type(error).__name__}")
                return [Outcome.of_error(failure)]
        # Isolate the request that made the batch fail: answer each one alone.
        return [outcome for request in requests for outcome in self._predict([request])]

    def _stream(self, streams: list[tuple[int, RequestT]], emit: Emit) -> dict[int, Outcome]:
        """Answer streaming requests chunk by chunk, taking turns so each gets its first lines
        early; every chunk but a request's last goes out through `emit`."""
        parts = {index: self.predictor.stream_parts(request) for index, request in streams}
        sent = dict.fromkeys(parts, 0)  # items answered so far, per request
        finished: dict[int, Outcome] = {}
        for turn in range(max(len(chunks) for chunks in parts.values())):
            for index, chunks in parts.items():
                if turn >= len(chunks):
                    continue
                lines = self._stream_lines(chunks[turn], sent[index])
                sent[index] += len(lines)
                if turn < len(chunks) - 1:
                    emit(index, ndjson(lines))
                else:
                    finished[index] = Outcome(200, ndjson(lines), NDJSON)
        return finished

    def _stream_lines(self, part: RequestT, offset: int) -> list[dict[str, Any]]:
        """The NDJSON lines of one chunk; a failed chunk is retried item by item, so each item
        gets its own result or error line."""
        [outcome] = self._predict([part])
        if outcome.status == 200:
            return [{"index": offset + i, "result": result} for i, result in enumerate(outcome.body)]
        lines: list[dict[str, Any]] = []
        for i, single in enumerate(self.predictor.stream_parts(part, size=1)):
            [alone] = self._predict([single])
            line: dict[str, Any] = {"index": offset + i}
            line.update({"result": alone.body[0]} if alone.status == 200 else _error_fields(alone.body))
            lines.append(line)
        return lines


def _error_fields(body: dict[str, Any]) -> dict[str, Any]:
    """A failed item's line in a stream carries its error as every error body does."""
    return {key: body[key] for key in ("error", "type", "code")}

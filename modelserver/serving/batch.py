"""Answer a batch of raw request bodies: exactly one outcome per request, in order.

Bad requests are answered on their own; the valid ones share one model call. If that call
fails, each valid request is retried alone so a poison request cannot fail its neighbours.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from modelserver.errors import ModelFailure, ServingError, error_response
from modelserver.payload import decode_json_body

log = logging.getLogger(__name__)

RequestT = TypeVar("RequestT")


class Runtime(Protocol[RequestT]):
    """What every model kind offers the server."""

    def parse(self, payload: Any) -> RequestT:
        """Validate one decoded body or raise a `ServingError`."""

    def predict(self, requests: Sequence[RequestT]) -> list[Any]:
        """Answer valid requests in order: a JSON-able answer, or a `ServingError`, each."""


@dataclass(frozen=True)
class Outcome:
    """The HTTP status and JSON body for one request of a batch."""

    status: int
    body: Any

    @classmethod
    def of_error(cls, error: ServingError) -> Outcome:
        """The outcome of a request that failed with `error`."""
        status, body = error_response(error)
        return cls(status, body)


@dataclass
class BatchAnswerer(Generic[RequestT]):
    """Runs a `Runtime` over TorchServe-style batches."""

    runtime: Runtime[RequestT]
    model_name: str = "model"

    def answer(self, bodies: Sequence[Any]) -> list[Outcome]:
        """One outcome per body: parse each, predict the valid ones together."""
        outcomes: list[Outcome | None] = [None] * len(bodies)
        valid: list[tuple[int, RequestT]] = []
        for index, body in enumerate(bodies):
            try:
                valid.append((index, self.runtime.parse(decode_json_body(body))))
            except ServingError as error:
                outcomes[index] = Outcome.of_error(error)
            except Exception as error:  # pylint: disable=broad-exception-caught
                # A bug in validation must cost this request only, never its whole batch.
                log.error("%s could not validate a request: %s", self.model_name, type(error).__name__)
                outcomes[index] = Outcome.of_error(ModelFailure("the request could not be validated"))
        for (index, _), outcome in zip(valid, self._predict([r for _, r in valid]), strict=True):
            outcomes[index] = outcome
        return [o if o is not None else Outcome.of_error(ModelFailure("no answer")) for o in outcomes]

    def _predict(self, requests: list[RequestT]) -> list[Outcome]:
        if not requests:
            return []
        try:
            answers = self.runtime.predict(requests)
            if len(answers) != len(requests):
                raise ModelFailure(f"{len(answers)} answers for {len(requests)} requests")
            # A runtime may answer one request of a batch with an error (e.g. a text too long).
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
                return [
                    Outcome.of_error(
                        ModelFailure(f"the {self.model_name} model failed: {type(error).__name__}")
                    )
                ]
        # Isolate the request that made the batch fail: answer each one alone.
        return [outcome for request in requests for outcome in self._predict([request])]

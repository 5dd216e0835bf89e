"""What every kind's predictor offers the server, with each optional ability's default.

A predictor (a kind's loaded model) parses one decoded body into its request and predicts a
batch of requests. The rest is optional, and the defaults below are what a kind gets when it
says nothing: invalid JSON is a 422, an answer may be up to `MAX_ANSWER_BYTES`, and no request
streams.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar, Generic, TypeVar

from modelserver.errors import InvalidInput
from modelserver.payload import MAX_ANSWER_BYTES

RequestT = TypeVar("RequestT")


class Predictor(ABC, Generic[RequestT]):
    """One loaded model of a kind, as the batch logic drives it."""

    # The error for a body that is not JSON: a route whose published spec names another status
    # for invalid input (/prediction's 405) sets its own.
    invalid_input: ClassVar[type[InvalidInput]] = InvalidInput

    @abstractmethod
    def parse(self, payload: Any) -> RequestT:
        """Validate one decoded body or raise a `ServingError`."""

    @abstractmethod
    def predict(self, requests: Sequence[RequestT]) -> list[Any]:
        """Answer valid requests in order: a JSON-able answer, or a `ServingError`, each."""

    @property
    def max_answer_bytes(self) -> int:
        """The most bytes one encoded answer (or streamed chunk) may have."""
        return MAX_ANSWER_BYTES

    def wants_stream(self, request: RequestT) -> bool:  # pylint: disable=unused-argument
        """Whether `request` asked for its answers as a stream (NDJSON lines)."""
        return False

    def stream_parts(self, request: RequestT, size: int | None = None) -> list[RequestT]:
        """A streaming request as sub-requests of `size` items (the kind's default if None),
        each answered with a list of per-item answers. Asked only of a request that
        `wants_stream`; by default the whole request is one part."""
        del size
        return [request]

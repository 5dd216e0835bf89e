"""The one error vocabulary of the server, each error with its HTTP status.

Every layer raises these; `error_response` is the only place that turns one into a body.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any, ClassVar


class ServingError(Exception):
    """Base of every error a client can see; `status` is the HTTP code it maps to."""

    status: ClassVar[HTTPStatus] = HTTPStatus.INTERNAL_SERVER_ERROR

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class InvalidInput(ServingError):
    """The request body is malformed or its data is anomalous."""

    status = HTTPStatus.UNPROCESSABLE_ENTITY


class SpecValidationFailed(InvalidInput):
    """Invalid input on a route whose published spec names another status (/prediction: 405)."""

    status = HTTPStatus.METHOD_NOT_ALLOWED


class BadRequest(ServingError):
    """The request is well formed but asks for something that does not exist here."""

    status = HTTPStatus.BAD_REQUEST


class ModelFailure(ServingError):
    """The model itself failed while predicting valid data."""

    status = HTTPStatus.INTERNAL_SERVER_ERROR


class NotFound(ServingError):
    """No such route or model."""

    status = HTTPStatus.NOT_FOUND


class ModelUnavailable(ServingError):
    """The model cannot answer now (not loaded, not provided)."""

    status = HTTPStatus.SERVICE_UNAVAILABLE


class DeadlineExceeded(ServingError):
    """The request reached the model after its route had stopped waiting for the answer."""

    status = HTTPStatus.GATEWAY_TIMEOUT


class ConfigError(ValueError):
    """A model's configuration or files are unusable; raised at load, never per request."""


class SourceUnavailable(ConfigError):
    """A default model source cannot be had now (no network, no data): the model is skipped."""


def error_response(error: ServingError) -> tuple[int, dict[str, Any]]:
    """Map an error to `(status code, JSON body)`: `{"error": sentence, "code": status, ...}`."""
    body: dict[str, Any] = {"error": error.message, "code": int(error.status)}
    body.update(error.details)
    return int(error.status), body

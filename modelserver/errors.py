"""The one error vocabulary of the server, each error with its HTTP status.

Every layer raises these; `error_response` is the only place that turns one into a body.
Every error body, whoever makes it (a handler, the launcher's pages, Envoy, or TorchServe's own
replies as Envoy rewrites them), is `{"error": sentence, "type": ErrorType, "code": status}`:
the type says what went wrong in one word a program can branch on, whatever the status.
"""

from __future__ import annotations

from enum import StrEnum
from http import HTTPStatus
from typing import Any, ClassVar


class ErrorType(StrEnum):
    """The documented set of error types (docs/api.md lists them with these descriptions)."""

    BAD_REQUEST = "bad_request"
    INVALID_INPUT = "invalid_input"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    NOT_SUPPORTED = "not_supported"
    REQUEST_TIMEOUT = "request_timeout"
    TOO_LARGE = "too_large"
    OVERLOADED = "overloaded"
    UNAVAILABLE = "unavailable"
    MODEL_FAILURE = "model_failure"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    SERVER_ERROR = "server_error"


ERROR_TYPES: dict[ErrorType, str] = {
    ErrorType.BAD_REQUEST: "the request asks for something this server does not have here (another"
    " model's name, a task it does not do), or is not valid HTTP",
    ErrorType.INVALID_INPUT: "the body is not JSON, not the route's schema, or its data is anomalous"
    " (`/prediction` answers it with 405, as its spec says; everywhere else 422)",
    ErrorType.NOT_FOUND: "no such route or model",
    ErrorType.METHOD_NOT_ALLOWED: "the route takes another method; the `Allow` header names it",
    ErrorType.NOT_SUPPORTED: "a protocol feature this server does not serve (WebSocket or h2c upgrades)",
    ErrorType.REQUEST_TIMEOUT: "the client did not send its headers or body in time",
    ErrorType.TOO_LARGE: "the body is over the route's limit",
    ErrorType.OVERLOADED: "the model is at capacity or the server is short of memory; retry after"
    " `Retry-After` seconds",
    ErrorType.UNAVAILABLE: "the model is not ready, was not provided, or its server is restarting or"
    " unreachable; retry after `Retry-After` seconds",
    ErrorType.MODEL_FAILURE: "the model failed on valid data, or its worker failed before answering",
    ErrorType.DEADLINE_EXCEEDED: "the model did not answer within the route's time",
    ErrorType.SERVER_ERROR: "any other failure of the server",
}

# The type of an error known only by its status (Envoy's own replies, TorchServe's rewritten
# ones); a status not listed takes the type of its class, the first of FALLBACK_TYPES it reaches.
TYPE_OF_STATUS: dict[int, ErrorType] = {
    400: ErrorType.BAD_REQUEST,
    404: ErrorType.NOT_FOUND,
    405: ErrorType.METHOD_NOT_ALLOWED,
    408: ErrorType.REQUEST_TIMEOUT,
    413: ErrorType.TOO_LARGE,
    422: ErrorType.INVALID_INPUT,
    500: ErrorType.MODEL_FAILURE,
    503: ErrorType.UNAVAILABLE,
    504: ErrorType.DEADLINE_EXCEEDED,
}


FALLBACK_TYPES: tuple[tuple[int, ErrorType], ...] = (
    (500, ErrorType.SERVER_ERROR),
    (400, ErrorType.BAD_REQUEST),
)


def type_of_status(status: int) -> ErrorType:
    """The type of an error known only by its status."""
    if status in TYPE_OF_STATUS:
        return TYPE_OF_STATUS[status]
    return next((kind for lowest, kind in FALLBACK_TYPES if status >= lowest), ErrorType.BAD_REQUEST)


class ServingError(Exception):
    """Base of every error a client can see; `status` is the HTTP code it maps to."""

    status: ClassVar[HTTPStatus] = HTTPStatus.INTERNAL_SERVER_ERROR
    type: ClassVar[ErrorType] = ErrorType.SERVER_ERROR

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class InvalidInput(ServingError):
    """The request body is malformed or its data is anomalous."""

    status = HTTPStatus.UNPROCESSABLE_ENTITY
    type = ErrorType.INVALID_INPUT


class SpecValidationFailed(InvalidInput):
    """Invalid input on a route whose published spec names another status (/prediction: 405)."""

    status = HTTPStatus.METHOD_NOT_ALLOWED


class BadRequest(ServingError):
    """The request is well formed but asks for something that does not exist here."""

    status = HTTPStatus.BAD_REQUEST
    type = ErrorType.BAD_REQUEST


class ModelFailure(ServingError):
    """The model itself failed while predicting valid data."""

    status = HTTPStatus.INTERNAL_SERVER_ERROR
    type = ErrorType.MODEL_FAILURE


class NotFound(ServingError):
    """No such route or model."""

    status = HTTPStatus.NOT_FOUND
    type = ErrorType.NOT_FOUND


class ModelUnavailable(ServingError):
    """The model cannot answer now (not loaded, not provided)."""

    status = HTTPStatus.SERVICE_UNAVAILABLE
    type = ErrorType.UNAVAILABLE


class DeadlineExceeded(ServingError):
    """The request reached the model after its route had stopped waiting for the answer."""

    status = HTTPStatus.GATEWAY_TIMEOUT
    type = ErrorType.DEADLINE_EXCEEDED


class ConfigError(ValueError):
    """A model's configuration or files are unusable; raised at load, never per request."""


class SourceUnavailable(ConfigError):
    """A default model source cannot be had now (no network, no data): the model is skipped."""


# The errors handlers raise, one per status: what a route's documented status means.
RAISED_BY_HANDLERS: tuple[type[ServingError], ...] = (
    BadRequest,
    NotFound,
    SpecValidationFailed,
    InvalidInput,
    ModelFailure,
    ModelUnavailable,
    DeadlineExceeded,
)


TYPE_RAISED_WITH = {int(error.status): error.type for error in RAISED_BY_HANDLERS}


def documented_type(status: int) -> ErrorType:
    """The type a route's documented status has: that of the handler's error raised with it
    (a spec's 405 is invalid input), else that of the status (Envoy's own replies)."""
    return TYPE_RAISED_WITH.get(status, type_of_status(status))


def error_response(error: ServingError) -> tuple[int, dict[str, Any]]:
    """Map an error to `(status code, JSON body)`: `{"error", "type", "code", ...details}`."""
    body: dict[str, Any] = {"error": error.message, "type": str(error.type), "code": int(error.status)}
    body.update(error.details)
    return int(error.status), body

"""Turn pydantic validation errors into one sentence a client can act on."""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ValidationError

from modelserver.errors import ConfigError, InvalidInput

SettingsT = TypeVar("SettingsT", bound=BaseModel)
RequestT = TypeVar("RequestT", bound=BaseModel)


def quoted(value: object, limit: int = 80) -> str:
    """A client's value for an error message, cut short: an error never echoes a long body back."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _location(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "body"


# Pydantic's wording for these reads oddly after a field path; say it plainly.
PLAIN_MESSAGES = {"extra_forbidden": "is not a known field", "missing": "is required"}


def first_problem(error: ValidationError) -> str:
    """Describe the first problem, e.g. `crystalData[0][2]: Input should be a valid number`."""
    problems = error.errors(include_url=False)
    if not problems:
        return "the request is not valid"
    first = problems[0]
    message = PLAIN_MESSAGES.get(first["type"], first["msg"])
    more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
    return f"{_location(tuple(first['loc']))}: {message}{more}"


def parse_settings(model: type[SettingsT], settings: object) -> SettingsT:
    """Validate a `handler:` section once, at load; a bad one fails the load with its problem."""
    try:
        return model.model_validate(settings)
    except ValidationError as error:
        raise ConfigError(f"bad handler settings: {first_problem(error)}") from None


def validate_body(
    model: type[RequestT], payload: object, field: str, error: type[InvalidInput] = InvalidInput
) -> RequestT:
    """Validate one decoded body against a request model; any problem raises `error` with a
    sentence naming where (the body must be an object holding `field`)."""
    if not isinstance(payload, dict):
        raise error(f"the body must be a JSON object with a '{field}' field")
    try:
        return model.model_validate(payload)
    except ValidationError as problem:
        raise error(first_problem(problem)) from None

"""Turn pydantic validation errors into one sentence a client can act on."""

from __future__ import annotations

from pydantic import ValidationError


def _location(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "body"


def first_problem(error: ValidationError) -> str:
    """Describe the first problem, e.g. `crystalData[0][2]: Input should be a valid number`."""
    problems = error.errors(include_url=False)
    if not problems:
        return "the request is not valid"
    first = problems[0]
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        message = "is not a known field"
    elif first["type"] == "missing":
        message = "is required"
    more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
    return f"{_location(tuple(first['loc']))}: {message}{more}"

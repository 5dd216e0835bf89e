"""Strict decoding of request bodies: bytes in, plain JSON values out, or `InvalidInput`.

Python's `json` accepts NaN, Infinity and numbers that overflow to infinity; a model server
must not, so those are refused here once for every model kind.
"""

from __future__ import annotations

import json
import math
from typing import Any

from modelserver.errors import InvalidInput

# What a body can weigh, for the body limits Envoy holds each route to: the most bytes one
# character can take in JSON (outside the BMP, an escaped surrogate pair: \ud83d\ude00), and
# room for what surrounds a kind's data (field names, `parameters`, `model_name`, whitespace).
JSON_BYTES_PER_CHAR = 12
BODY_OVERHEAD_BYTES = 4096
# The texts one request may carry, in any shape and over either protocol: each is its own
# request in a batch, so a client cannot fill a batch alone.
MAX_TEXTS_PER_REQUEST = 64
# The most bytes of one answer where a kind's settings name no lower cap: half of TorchServe's
# 16 MiB max_response_size (config.properties), the margin for what an answer's estimate does
# not model, and far more than any sensible answer needs (2,000 candidates over 512-token texts
# of English is about 5 MB).
MAX_ANSWER_BYTES = 8 * 2**20


def _refuse_constant(name: str) -> float:
    raise InvalidInput(f"the body contains {name}, which is not a valid JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InvalidInput(f"the number {text[:32]} is too large to represent")
    return value


def decode_json_body(raw: Any) -> Any:
    """Decode a request body (bytes, str, or an already-decoded JSON value) strictly."""
    if isinstance(raw, (dict, list)):
        return raw
    if not isinstance(raw, (bytes, bytearray, str, type(None))):
        raise InvalidInput("the request body is not JSON")
    if not raw:
        raise InvalidInput("the request body is empty; send a JSON object")
    if isinstance(raw, (bytes, bytearray)):
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as error:
            raise InvalidInput(f"the body is not valid UTF-8 (byte {error.start})") from None
    try:
        return json.loads(raw, parse_constant=_refuse_constant, parse_float=_finite_float)
    except json.JSONDecodeError as error:
        raise InvalidInput(
            f"the body is not valid JSON: {error.msg.removesuffix(' at')} at line {error.lineno} "
            f"column {error.colno}"
        ) from None
    except RecursionError:
        raise InvalidInput("the body is nested too deeply") from None
    except ValueError as error:  # e.g. an integer of more than 4300 digits
        raise InvalidInput(f"the body holds a value that cannot be read: {str(error)[:80]}") from None


def request_body(row: Any) -> Any:
    """Pick the body out of one TorchServe request row (`{"body": ...}` or `{"data": ...}`)."""
    if isinstance(row, dict):
        body = row.get("body")
        return row.get("data") if body is None else body
    return row

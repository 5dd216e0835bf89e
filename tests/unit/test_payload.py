"""Strict JSON decoding of request bodies."""

from __future__ import annotations

import pytest

from modelserver.errors import InvalidInput
from modelserver.payload import decode_json_body, request_body


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'{"a": [1, 2.5]}', {"a": [1, 2.5]}),
        ('{"a": "caf\u00e9"}', {"a": "caf\u00e9"}),
        (bytearray(b"[1]"), [1]),
        ({"already": "decoded"}, {"already": "decoded"}),
        (b'{"big": 1e308}', {"big": 1e308}),
    ],
)
def test_valid_bodies_decode(raw: object, expected: object) -> None:
    assert decode_json_body(raw) == expected


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"", "empty"),
        (None, "empty"),
        (b"\xff\xfe{}", "UTF-8"),
        (b'{"a": NaN}', "NaN"),
        (b'{"a": Infinity}', "Infinity"),
        (b'{"a": -Infinity}', "-Infinity"),
        (b'{"a": 1e999}', "too large"),
        (b'{"a": [1, 2', "not valid JSON"),
        (b"crystalData=1", "not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (12, "not JSON"),
        (b'{"a": ' + b"9" * 5000 + b"}", "cannot be read"),
    ],
)
def test_anomalous_bodies_are_refused(raw: object, fragment: str) -> None:
    with pytest.raises(InvalidInput, match=fragment) as caught:
        decode_json_body(raw)
    assert caught.value.status == 422


def test_request_body_prefers_body_then_data() -> None:
    assert request_body({"body": b"x", "data": b"y"}) == b"x"
    assert request_body({"data": b"y"}) == b"y"
    assert request_body(b"z") == b"z"

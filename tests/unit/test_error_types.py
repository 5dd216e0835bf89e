"""Every error body carries a `type` from one documented set, whoever makes it: the handler's
errors, the launcher's pages, Envoy's own replies and TorchServe's replies Envoy rewrites."""

from __future__ import annotations

import re
from typing import Any

import pytest

from modelserver import errors
from modelserver.errors import ERROR_TYPES, ErrorType, documented_type, error_response, type_of_status
from modelserver.launcher.envoy.config import local_replies
from modelserver.launcher.envoy.upstream_errors import upstream_errors
from modelserver.project import PROJECT_ROOT


def test_every_type_is_described_once_and_docs_list_exactly_them() -> None:
    assert set(ERROR_TYPES) == set(ErrorType)
    text = (PROJECT_ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `([a-z_]+)` \| (.+) \|$", text, re.MULTILINE))
    assert {t: rows.get(t) for t in ErrorType} == {t: ERROR_TYPES[t] for t in ErrorType}


@pytest.mark.parametrize("error_class", errors.RAISED_BY_HANDLERS)
def test_a_handlers_error_body_names_its_type_between_sentence_and_code(
    error_class: type[errors.ServingError],
) -> None:
    status, body = error_response(error_class("a sentence", ready=False))
    assert list(body) == ["error", "type", "code", "ready"]
    assert body == {"error": "a sentence", "type": error_class.type.value, "code": status, "ready": False}


def test_a_spec_validation_failure_is_invalid_input_whatever_its_status() -> None:
    status, body = error_response(errors.SpecValidationFailed("text: Input should be a valid string"))
    assert (status, body["type"]) == (405, "invalid_input")
    assert documented_type(405) == ErrorType.INVALID_INPUT
    assert documented_type(413) == ErrorType.TOO_LARGE


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (404, "not_found"),
        (431, "bad_request"),
        (429, "bad_request"),
        (502, "server_error"),
        (503, "unavailable"),
    ],
)
def test_a_status_alone_has_a_type(status: int, expected: str) -> None:
    assert type_of_status(status) == expected


def _formats(config: dict[str, Any]) -> list[dict[str, Any]]:
    mappers = config["mappers"]
    assert all("body_format_override" in mapper for mapper in mappers)
    return [mapper["body_format_override"]["json_format"] for mapper in mappers] + [
        config["body_format"]["json_format"]
    ]


def test_every_reply_envoy_makes_is_error_type_code() -> None:
    for body in _formats(local_replies()):
        assert list(body) == ["error", "type", "code"]
        assert body["type"] in set(ErrorType) and body["code"] == "%RESPONSE_CODE%"


def test_a_reply_no_flag_names_gets_its_statuss_type_and_the_first_match_wins() -> None:
    """TorchServe's rewritten replies carry no response flag: their type is their status's."""
    mappers = local_replies()["mappers"]

    def first_type(status: int) -> str:
        for mapper in mappers:
            comparison = mapper["filter"].get("status_code_filter", {}).get("comparison")
            if comparison is None:
                continue
            value = comparison["value"]["default_value"]
            if status == value or (comparison["op"] == "GE" and status >= value):
                return str(mapper["body_format_override"]["json_format"]["type"])
        return str(local_replies()["body_format"]["json_format"]["type"])

    expected = {
        "400": "unavailable",  # its key refused while it restarts: 503
        "503": "unavailable",
        "507": "unavailable",  # a worker died holding the batch: 503
        "500": "model_failure",
        "404": "not_found",
        "4xx": "bad_request",
        "5xx": "server_error",
    }
    for error in upstream_errors():
        status = error.status or int(error.matches.replace("xx", "99"))
        assert first_type(status) == expected[error.matches], error
    assert first_type(413) == "too_large" and first_type(503) == "unavailable"
    assert first_type(431) == "bad_request" and first_type(502) == "server_error"

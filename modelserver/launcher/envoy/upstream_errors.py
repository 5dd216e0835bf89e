"""TorchServe's own error replies as ours, rewritten by Envoy's custom_response filter.

TorchServe answers some requests itself, in its own `{"code", "type", "message"}` shape: a key it
refuses (between its restart and Envoy's hot restart with the new key), a model with no worker
ready, a worker that died holding the batch (its 507, which is no storage error). Each is matched
on the reply's headers alone, in C++, so an answer costs nothing: every TorchServe reply carries
its `x-request-id`, and an answer from our handler carries the handler's mark. What Envoy answers
itself has neither, and keeps its own sentence. The sentence becomes the body of a local reply,
which Envoy's local-reply format turns into the `{"error", "type", "code"}` JSON of every other error,
its type that of its status.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modelserver.launcher.envoy.routes import METADATA_NAMESPACE, MODEL_KEY, header_to_add, typed
from modelserver.serving.headers import HANDLER_ANSWER

CUSTOM_RESPONSE_FILTER = "envoy.filters.http.custom_response"
# TorchServe sets it on every reply it sends (its NettyUtils.sendHttpResponse).
TORCHSERVE_REPLY_HEADER = "x-request-id"
RETRY_AFTER_S = "1"
LOCAL_RESPONSE_POLICY = "envoy.extensions.http.custom_response.local_response_policy.v3.LocalResponsePolicy"


@dataclass(frozen=True)
class UpstreamError:
    """One TorchServe reply (its status, or its status class like "5xx") and what the client
    gets instead: the sentence (Envoy's substitution formatters allowed), the status if it
    changes, and whether to retry."""

    matches: str
    sentence: str
    status: int | None = None
    retry: bool = False


def upstream_errors() -> list[UpstreamError]:
    """The table, first match wins; the model's name comes from the route's metadata."""
    model = f"%METADATA(ROUTE:{METADATA_NAMESPACE}:{MODEL_KEY})%"
    return [
        # Its key refused: TorchServe restarted with a new one, which Envoy is about to get.
        UpstreamError("400", "the model server is restarting; retry shortly", 503, retry=True),
        UpstreamError(
            "503",
            f"model {model} has no worker ready (starting, restarting, or scaled to 0:"
            f" make scale MODEL={model} WORKERS=1); retry shortly",
            retry=True,
        ),
        UpstreamError(
            "507", f"the worker of model {model} stopped while holding this request; retry shortly", 503, True
        ),
        UpstreamError("500", f"the worker of model {model} stopped or failed before answering"),
        # A name no catalogue model has, on the generic path (its route names no model).
        UpstreamError("404", "no model is served at %REQ(:PATH)%"),
        UpstreamError("4xx", "the model server refused the request (HTTP %RESPONSE_CODE%)"),
        UpstreamError("5xx", "the model server could not answer (HTTP %RESPONSE_CODE%)"),
    ]


def _header(name: str) -> dict[str, Any]:
    """A predicate: the response has header `name`."""
    return {
        "single_predicate": {
            "input": {
                "name": name,
                "typed_config": typed("envoy.type.matcher.v3.HttpResponseHeaderMatchInput", header_name=name),
            },
            "value_match": {"safe_regex": {"google_re2": {}, "regex": ".*"}},
        }
    }


def _status(matches: str) -> dict[str, Any]:
    """A predicate on the status ("503") or its class ("5xx")."""
    kind = (
        "HttpResponseStatusCodeClassMatchInput"
        if matches.endswith("xx")
        else "HttpResponseStatusCodeMatchInput"
    )
    return {
        "single_predicate": {
            "input": {"name": "status", "typed_config": typed(f"envoy.type.matcher.v3.{kind}")},
            "value_match": {"exact": matches},
        }
    }


def custom_response_filter() -> dict[str, Any]:
    """The filter: a TorchServe reply (its header, no handler's mark) with a status of the table."""
    matchers = []
    for error in upstream_errors():
        policy: dict[str, Any] = {"body_format": {"text_format": error.sentence}}
        if error.status is not None:
            policy["status_code"] = error.status
        if error.retry:
            policy["response_headers_to_add"] = [header_to_add("retry-after", RETRY_AFTER_S)]
        predicate = [
            _status(error.matches),
            _header(TORCHSERVE_REPLY_HEADER),
            {"not_matcher": _header(HANDLER_ANSWER)},
        ]
        matchers.append(
            {
                "predicate": {"and_matcher": {"predicate": predicate}},
                "on_match": {
                    "action": {
                        "name": f"torchserve_{error.matches}",
                        "typed_config": typed(LOCAL_RESPONSE_POLICY, **policy),
                    }
                },
            }
        )
    return {
        "name": CUSTOM_RESPONSE_FILTER,
        "typed_config": typed(
            "envoy.extensions.filters.http.custom_response.v3.CustomResponse",
            custom_response_matcher={"matcher_list": {"matchers": matchers}},
        ),
    }

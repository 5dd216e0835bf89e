"""The OpenAPI 3.1 document of the public API, generated from the pydantic models the handlers
validate with: no hand-written copy that can drift. Routes come from the catalogue.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field
from pydantic.json_schema import models_json_schema

from modelserver.catalogue import Catalogue, RouteSpec
from modelserver.kinds.registry import KINDS, Kind

REF = "#/components/schemas/{model}"
DESCRIPTION = 'Trained models behind TorchServe and Envoy. Every error is JSON: `{"error", "code"}`.'


class ErrorBody(BaseModel):
    """Every error, whoever makes it: a sentence and the status code."""

    error: str = Field(examples=["crystalData[0] has 3 values; each row needs 4"])
    code: int = Field(examples=[422])


class Health(BaseModel):
    """/healthcheck: every served model's state; skipped models listed apart."""

    status: str = Field(examples=["Healthy"])
    models: dict[str, str]
    skipped: list[str] | None = None


COMMON_ERRORS = {
    413: "body over 1 MiB",
    503: "the model is not ready, was not provided (skipped), or the server is unreachable; see Retry-After",
    504: "the model did not answer in time",
}


def _error_responses(codes: dict[int, str]) -> dict[str, Any]:
    body = {"application/json": {"schema": {"$ref": REF.format(model="ErrorBody")}}}
    return {str(code): {"description": text, "content": body} for code, text in sorted(codes.items())}


def _operation(kind: Kind, errors: dict[int, str], summary: str, example: dict[str, Any]) -> dict[str, Any]:
    request, answer = kind.request, kind.answer
    ndjson = (
        {"application/x-ndjson": {"schema": {"type": "string"}}} if "stream" in request.model_fields else {}
    )
    schema = {"schema": {"$ref": REF.format(model=request.__name__)}, "example": example}
    return {
        "summary": summary,
        "requestBody": {"required": True, "content": {"application/json": schema}},
        "responses": {
            "200": {
                "description": "the answer",
                "content": {
                    "application/json": {"schema": {"$ref": REF.format(model=answer.__name__)}},
                    **ndjson,
                },
            },
            **_error_responses({**errors, **COMMON_ERRORS}),
        },
    }


def _route_operation(route: RouteSpec, kind_of: dict[str, Kind]) -> dict[str, Any]:
    """A public route's operation: its model's kind, or the first it can pick by a body field."""
    targets = sorted(set((route.choices or {}).values()) | ({route.model} if route.model else set()))
    kind = kind_of[route.model or targets[0]]
    errors = dict(kind.errors)
    example = dict(kind.example)
    summary = ", ".join(targets)
    if route.select_by:
        choices = f" ({', '.join(route.choices)})" if route.choices else ""
        errors[400] = f"`{route.select_by}` names no served model{choices}"
        summary += f"; `{route.select_by}` in the body picks the model"
        if route.choices:
            example[route.select_by] = next(iter(route.choices))
    return _operation(kind, errors, summary, example)


def build_openapi(catalogue: Catalogue) -> dict[str, Any]:
    """The whole public API, from the catalogue's routes and the kinds' pydantic models."""
    kind_of = {name: KINDS[entry.kind] for name, entry in catalogue.models.items()}
    paths: dict[str, Any] = {
        "/healthcheck": {
            "get": {
                "summary": "200 only when every served model can answer",
                "responses": {
                    "200": {
                        "description": "healthy",
                        "content": {"application/json": {"schema": {"$ref": REF.format(model="Health")}}},
                    },
                    **_error_responses({503: "a model is not ready, or the server is stopping"}),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus text: TorchServe's, the handlers' per-model and Envoy's metrics",
                "responses": {
                    "200": {
                        "description": "Prometheus text exposition format 0.0.4",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
    }
    for path, route in catalogue.routes.items():
        paths[path] = {"post": _route_operation(route, kind_of)}
    for name in sorted(catalogue.models):
        kind = kind_of[name]
        operation = _operation(
            kind, {**kind.errors, 404: "no such model"}, f"{name} (generic path)", kind.example
        )
        paths[f"/predictions/{name}"] = {"post": operation}
    requests = {kind.request for kind in KINDS.values()}
    models = requests | {kind.answer for kind in KINDS.values()} | {ErrorBody, Health}
    _, schemas = models_json_schema(
        [
            (model, "validation" if model in requests else "serialization")
            for model in sorted(models, key=lambda m: m.__name__)
        ],
        ref_template=REF,
    )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "modelserver",
            "version": "1",
            "description": DESCRIPTION,
        },
        "paths": paths,
        "components": {"schemas": schemas.get("$defs", {})},
    }

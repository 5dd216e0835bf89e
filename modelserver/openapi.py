"""The OpenAPI 3.1 document of the public API, generated from the pydantic models the handlers
validate with: no hand-written copy that can drift. Routes come from the catalogue.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field
from pydantic.json_schema import models_json_schema

from modelserver.catalogue import Catalogue, RouteSpec
from modelserver.errors import ErrorType, documented_type
from modelserver.kinds.kind import Kind
from modelserver.kinds.registry import KINDS
from modelserver.protocols import open_inference

REF = "#/components/schemas/{model}"
DESCRIPTION = (
    'Trained models behind TorchServe and Envoy. Every error is JSON: `{"error", "type", "code"}`,'
    " `type` one of the ErrorBody schema's."
)


class ErrorBody(BaseModel):
    """Every error, whoever makes it: a sentence, its type, and the status code."""

    error: str = Field(examples=["crystalData[0] has 3 values; each row needs 4"])
    type: ErrorType = Field(examples=[ErrorType.INVALID_INPUT])
    code: int = Field(examples=[422])


class Health(BaseModel):
    """/healthcheck: every served model's state; skipped models listed apart."""

    status: str = Field(examples=["Healthy"])
    models: dict[str, str]
    skipped: list[str] | None = None
    # What each model the project trains was trained on (e.g. topics: its files or a download).
    trained_on: dict[str, str] | None = None


COMMON_ERRORS = {
    413: "body over 1 MiB",
    503: "the model is not ready, was not provided (skipped), or the server is unreachable; see Retry-After",
    504: "the model did not answer in time",
}


def _error_responses(codes: dict[int, str]) -> dict[str, Any]:
    """Each status with its description, and an example body of its own (not ErrorBody's 422)."""

    def body(code: int, text: str) -> dict[str, Any]:
        schema = {"$ref": REF.format(model="ErrorBody")}
        example = {"error": text, "type": str(documented_type(code)), "code": code}
        return {"application/json": {"schema": schema, "example": example}}

    return {
        str(code): {"description": text, "content": body(code, text)} for code, text in sorted(codes.items())
    }


def _one_of(own: type[BaseModel], hub: type[BaseModel] | None) -> dict[str, Any]:
    """This server's own schema, or either of it and the Hugging Face Inference API's."""
    if hub is None or hub is own:
        return {"$ref": REF.format(model=own.__name__)}
    return {"anyOf": [{"$ref": REF.format(model=model.__name__)} for model in (own, hub)]}


def _operation(
    kind: Kind,
    errors: dict[int, str],
    summary: str,
    example: dict[str, Any],
    other_answers: tuple[type[BaseModel], ...] = (),
) -> dict[str, Any]:
    request, answer = kind.request, kind.answer
    # Its own answer (or the Hub shape), or any a body field can pick another model to give.
    answers = [m for m in dict.fromkeys((answer, kind.hf_answer, *other_answers)) if m is not None]
    refs = [{"$ref": REF.format(model=model.__name__)} for model in answers]
    answer_schema = refs[0] if len(refs) == 1 else {"anyOf": refs}
    ndjson = (
        {"application/x-ndjson": {"schema": {"type": "string"}}} if "stream" in request.model_fields else {}
    )
    schema = {"schema": _one_of(request, kind.hf_request), "example": example}
    return {
        "summary": summary,
        "requestBody": {"required": True, "content": {"application/json": schema}},
        "responses": {
            "200": {
                "description": "the answer",
                "content": {
                    "application/json": {"schema": answer_schema},
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
    other_answers: tuple[type[BaseModel], ...] = ()
    if route.select_by:
        # The body may pick any of the route's choices (any served model when it lists none),
        # and each answers with its own kind's answer and errors (the topics spec's 405 among them).
        reachable = targets if route.choices else sorted(kind_of)
        for target in reachable:
            errors = {**kind_of[target].errors, **errors}
        other_answers = tuple(
            model
            for target in reachable
            for model in (kind_of[target].answer, kind_of[target].hf_answer)
            if model is not None
        )
        choices = f" ({', '.join(route.choices)})" if route.choices else ""
        errors[400] = f"`{route.select_by}` names no served model{choices}"
        summary += f"; `{route.select_by}` in the body picks the model"
        if route.choices:
            example[route.select_by] = next(iter(route.choices))
    return _operation(kind, errors, summary, example, other_answers)


V2_MODELS = (
    open_inference.InferResponse,
    open_inference.ModelMetadata,
    open_inference.ServerMetadata,
    open_inference.Liveness,
    open_inference.ServerReadiness,
    open_inference.ModelReadiness,
)
V2_TAG = "Open Inference Protocol (v2)"


def _get(summary: str, answer: type[BaseModel], errors: dict[int, str]) -> dict[str, Any]:
    """A GET operation of the Open Inference Protocol answering JSON."""
    content = {"application/json": {"schema": {"$ref": REF.format(model=answer.__name__)}}}
    return {
        "get": {
            "tags": [V2_TAG],
            "summary": summary,
            "responses": {"200": {"description": summary, "content": content}, **_error_responses(errors)},
        }
    }


def _open_inference_paths(catalogue: Catalogue) -> dict[str, Any]:
    """The protocol's server endpoints, and each model's metadata, readiness and `infer`."""
    not_ready = {503: "not ready (`ready: false` and the reason), or the server is stopping"}
    paths: dict[str, Any] = {
        "/v2": _get("server metadata", open_inference.ServerMetadata, {}),
        "/v2/health/live": _get("the server is live", open_inference.Liveness, {}),
        "/v2/health/ready": _get("every served model can answer", open_inference.ServerReadiness, not_ready),
    }
    for name, entry in sorted(catalogue.models.items()):
        kind = KINDS[entry.kind]
        codec = kind.open_inference
        if codec is None:
            continue
        paths[f"/v2/models/{name}"] = _get(f"{name}: its tensors", open_inference.ModelMetadata, {})
        paths[f"/v2/models/{name}/ready"] = _get(
            f"{name} can answer now", open_inference.ModelReadiness, not_ready
        )
        errors = {
            400: "binary tensor data (Triton's extension): send JSON tensors",
            422: "tensors of the wrong name, datatype, shape or values; an unknown parameter or output",
            500: "the model failed",
            404: "no such model",
        }
        schema = {"schema": {"$ref": REF.format(model="InferRequest")}}
        example = open_inference.example_request(codec, kind.example)
        content = {"application/json": {"schema": {"$ref": REF.format(model="InferResponse")}}}
        paths[f"/v2/models/{name}/infer"] = {
            "post": {
                "tags": [V2_TAG],
                "summary": f"{name}: infer (also at /versions/1/infer)",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {**schema, "example": example}},
                },
                "responses": {
                    "200": {"description": "the output tensors", "content": content},
                    **_error_responses({**errors, **COMMON_ERRORS}),
                },
            }
        }
    return paths


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
    }
    for path, route in catalogue.routes.items():
        paths[path] = {"post": _route_operation(route, kind_of)}
    for name in sorted(catalogue.models):
        kind = kind_of[name]
        operation = _operation(
            kind, {**kind.errors, 404: "no such model"}, f"{name} (generic path)", kind.example
        )
        paths[f"/predictions/{name}"] = {"post": operation}
    paths.update(_open_inference_paths(catalogue))
    requests = (
        {kind.request for kind in KINDS.values()}
        | {kind.hf_request for kind in KINDS.values() if kind.hf_request}
        | {open_inference.InferRequest}
    )
    answers = {kind.answer for kind in KINDS.values()} | {
        kind.hf_answer for kind in KINDS.values() if kind.hf_answer
    }
    models = requests | answers | {ErrorBody, Health, *V2_MODELS}
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

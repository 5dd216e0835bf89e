"""The kind registry: one table from a model kind's name to everything the server knows of it.

A catalogue entry names its `kind:`. The catalogue validates the entry's `handler_config`
against the kind's settings model, the archive builder learns whether the kind has a compiled
forward pass, the OpenAPI document takes its request and answer schemas, and the one generic
handler loads the runtime. This module imports no ML framework: a kind's runtime module (which
may import torch) is imported by name, in the model worker only.

Adding a kind today: write `modelserver/kinds/<kind>.py` (settings, request and answer models,
a `contract.ModelRuntime` with `parse` and `predict`, and a `load_*_runtime(files)` loader) and
add its `Kind` entry to `KINDS`; a kind with tensors also needs its codec in
`protocols/open_inference.py`, and a compiled text kind its entry in `export.TASKS`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from modelserver.errors import ConfigError
from modelserver.kinds import ModelFiles
from modelserver.kinds.crystal import CrystalAnswer, CrystalRequest, CrystalSettings
from modelserver.kinds.text_schemas import (
    FillMaskAnswer,
    FillMaskRequest,
    HubFillMaskRequest,
    HubTextClassificationAnswer,
    HubTextClassificationRequest,
    SentimentAnswer,
    TextModelSettings,
    TextRequest,
)
from modelserver.kinds.topics import TopicsAnswer, TopicsRequest, TopicsSettings
from modelserver.protocols import open_inference
from modelserver.protocols.open_inference import TensorCodec

TEXT_ERRORS = {400: "`model_name` or `task` is not this model's", 422: "invalid text or over a budget"}


@dataclass(frozen=True)
class Kind:
    """One model kind: how a worker loads it and what the public API says about it."""

    loader: str  # "module:function" taking `ModelFiles`, returning the kind's runtime
    settings: type[BaseModel]  # the `handler_config` / model-config.yaml `handler:` section
    request: type[BaseModel]
    answer: type[BaseModel]
    errors: dict[int, str]  # documented failures, besides the ones every route has
    example: dict[str, Any]  # a request body for the API document
    export_task: str | None = None  # the export task of a kind whose forward pass compiles
    # The Hugging Face Inference API's body (`inputs`, `parameters`) and its answer, for the
    # kinds that also take that shape.
    hub_request: type[BaseModel] | None = None
    hub_answer: type[BaseModel] | None = None
    # Its tensors and their mapping in the Open Inference Protocol (/v2/models/{name}/infer).
    open_inference: TensorCodec | None = None

    def load(self, files: ModelFiles) -> Any:
        """Import the kind's runtime module (only now: it may load torch) and build the runtime."""
        module, function = self.loader.split(":")
        return getattr(importlib.import_module(module), function)(files)


KINDS: dict[str, Kind] = {
    "crystal": Kind(
        loader="modelserver.kinds.crystal:load_crystal_runtime",
        settings=CrystalSettings,
        request=CrystalRequest,
        answer=CrystalAnswer,
        errors={
            400: "`model`/`model_name` names another model",
            422: "anomalous data",
            500: "the model failed",
        },
        example={"crystalData": [[0.92, 0.12, 0.31, 0.09]]},
        open_inference=open_inference.CRYSTAL,
    ),
    "fill_mask": Kind(
        loader="modelserver.kinds.fill_mask:load_fill_mask_runtime",
        settings=TextModelSettings,
        request=FillMaskRequest,
        answer=FillMaskAnswer,
        errors={**TEXT_ERRORS, 422: "invalid text, top_k, or over a budget"},
        example={"text": "Hello I'm a [MASK] model.", "top_k": 5},
        export_task="fill-mask",
        hub_request=HubFillMaskRequest,
        hub_answer=FillMaskAnswer,
        open_inference=open_inference.FILL_MASK,
    ),
    "text_classification": Kind(
        loader="modelserver.kinds.text_classification:load_text_classification_runtime",
        settings=TextModelSettings,
        request=TextRequest,
        answer=SentimentAnswer,
        errors=TEXT_ERRORS,
        example={"text": "I love this movie, it is great."},
        export_task="text-classification",
        hub_request=HubTextClassificationRequest,
        hub_answer=HubTextClassificationAnswer,
        open_inference=open_inference.TEXT_CLASSIFICATION,
    ),
    "topics": Kind(
        loader="modelserver.kinds.topics:load_topics_runtime",
        settings=TopicsSettings,
        request=TopicsRequest,
        answer=TopicsAnswer,
        errors={405: "Validation exception (as the topics spec documents)"},
        example={"text": "The goalie stopped the puck in overtime."},
        open_inference=open_inference.TOPICS,
    ),
}


def kind_named(name: object) -> Kind:
    """The kind called `name`, or a `ConfigError` listing the known ones."""
    if not isinstance(name, str) or name not in KINDS:
        raise ConfigError(f"unknown model kind {name!r}; known: {sorted(KINDS)}")
    return KINDS[name]

"""Fill-mask for any masked-LM checkpoint, answering exactly as transformers' pipeline does:
the kind's framework-free part (request and answer schemas, the Hugging Face body, the v2 codec
and its `Kind`). The model code is in `worker`, the build-time export in `export`.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field, PrivateAttr, RootModel, StringConstraints

from modelserver.kinds.kind import Kind
from modelserver.kinds.text import (
    TEXT_ERRORS,
    TEXT_IN,
    HubParameters,
    HubRequest,
    TextModelSettings,
    TextRequest,
    texts_body,
)
from modelserver.protocols.open_inference import TensorCodec, TensorSpec, json_outputs

TASKS = ("fill-mask",)

# A word to score in place of a mask: a word is short, and each is tokenised once per request.
Target = Annotated[str, StringConstraints(min_length=1, max_length=100, strict=True)]


class FillMaskParameters(HubParameters):
    """The Hugging Face fill-mask parameters."""

    top_k: int = Field(default=5, ge=1, le=50, description="Candidates per mask.")
    targets: Target | Annotated[list[Target], Field(min_length=1, max_length=2000)] | None = Field(
        default=None, description="Score only these words (each by its first token)."
    )


class HubFillMaskRequest(HubRequest):
    """A fill-mask body in the Hugging Face Inference API's shape."""

    parameters: FillMaskParameters = Field(default_factory=FillMaskParameters)

    def own_fields(self) -> dict[str, object]:
        return {**super().own_fields(), "top_k": self.parameters.top_k}


class FillMaskRequest(TextRequest):
    """Texts with one or more `[MASK]` (or the model's own mask token)."""

    top_k: int = Field(default=5, ge=1, le=50, description="Candidates per mask.")
    # The token ids a Hugging Face `targets` parameter allows, found once when the body is read.
    _target_ids: list[int] | None = PrivateAttr(default=None)

    @property
    def target_ids(self) -> list[int] | None:
        """The only candidate tokens, or None for the whole vocabulary."""
        return self._target_ids

    def restricted_to(self, ids: list[int] | None) -> FillMaskRequest:
        """This request, its candidates limited to `ids` (None: no limit)."""
        self._target_ids = ids
        return self

    @property
    def per_mask(self) -> int:
        """Candidates each mask is answered with."""
        return self.top_k if self._target_ids is None else min(self.top_k, len(self._target_ids))


class Candidate(BaseModel):
    """One fill-mask candidate, as transformers' pipeline returns it."""

    score: float
    token: int
    token_str: str
    sequence: str


class FillMaskAnswer(RootModel[list[Candidate] | list[list[Candidate]] | list[list[list[Candidate]]]]):
    """Top-k candidates; a list per mask for several masks; a list per text for a list of texts."""


FILL_MASK_OUT = TensorSpec("candidates", "BYTES", (-1,))
FILL_MASK = TensorCodec(
    inputs=(TEXT_IN,),
    outputs=(FILL_MASK_OUT,),
    bodies=texts_body,
    answers=json_outputs(FILL_MASK_OUT),
    parameters=("top_k",),
    notes={"candidates": "per text, the JSON of its answer on /inference"},
)

KIND = Kind(
    loader="modelserver.kinds.fill_mask.worker:load_fill_mask_predictor",
    settings=TextModelSettings,
    request=FillMaskRequest,
    answer=FillMaskAnswer,
    errors={**TEXT_ERRORS, 422: "invalid text, top_k, or over a budget"},
    example={"text": "Hello I'm a [MASK] model.", "top_k": 5},
    export="modelserver.kinds.fill_mask.export:export",
    hf_request=HubFillMaskRequest,
    hf_answer=FillMaskAnswer,
    open_inference=FILL_MASK,
)

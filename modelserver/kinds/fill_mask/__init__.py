"""Fill-mask for any masked-LM checkpoint, answering exactly as transformers' pipeline does:
the kind's framework-free part (request and answer schemas, the Hugging Face body, the v2 codec
and its `Kind`). The model code is in `worker`, the build-time export in `export`.
"""

from __future__ import annotations

from statistics import fmean
from typing import Annotated, Any

from pydantic import BaseModel, Field, PrivateAttr, RootModel, StringConstraints

from modelserver.kinds.comparison import AnswersNotComparable, Comparison
from modelserver.kinds.kind import Kind
from modelserver.kinds.text import (
    TEXT_ERRORS,
    TEXT_IN,
    HubParameters,
    HubRequest,
    TextModelSettings,
    TextRequest,
    is_number,
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

# A fill-mask answer's layout: None for one mask's candidates; else, per element of its list,
# None for one mask's candidates or the number of masks of a text that has several.
Layout = tuple[int | None, ...] | None


def _is_candidates(part: Any) -> bool:
    """Whether `part` is one mask's candidate list (objects, not lists of them)."""
    return isinstance(part, list) and all(isinstance(candidate, dict) for candidate in part)


def _masks(answer: Any) -> tuple[Layout, list[list[Any]]]:
    """(its layout, each mask's candidates in order, across texts) of one answer, in any of
    `FillMaskAnswer`'s shapes (the Hugging Face one is the same)."""
    if _is_candidates(answer):
        return None, [answer]
    if not isinstance(answer, list):
        raise AnswersNotComparable("an answer is not a list")
    layout: list[int | None] = []
    masks: list[list[Any]] = []
    for part in answer:
        if _is_candidates(part):
            layout.append(None)
            masks.append(part)
        elif isinstance(part, list) and all(_is_candidates(mask) for mask in part):
            layout.append(len(part))
            masks.extend(part)
        else:
            raise AnswersNotComparable("an answer's list holds neither candidates nor lists of them")
    return tuple(layout), masks


def _tokens(candidates: list[Any]) -> list[str]:
    """One mask's candidate tokens, best first (each candidate checked)."""
    if not all(isinstance(c.get("token_str"), str) and is_number(c.get("score")) for c in candidates):
        raise AnswersNotComparable("a candidate has no string token_str or no numeric score")
    return [candidate["token_str"] for candidate in candidates]


def _overlap(primary: list[str], candidate: list[str]) -> float:
    """The share of top-k tokens both answers hold for one mask (1.0 when both hold none)."""
    if not primary and not candidate:
        return 1.0
    return len(set(primary) & set(candidate)) / max(len(primary), len(candidate))


def compare_answers(primary: Any, candidate: Any) -> Comparison:
    """Masks whose best token is the same in both answers, and the mean top-k overlap: a
    candidate may reorder close candidates without changing the best one, or the reverse."""
    primary_layout, primary_masks = _masks(primary)
    candidate_layout, candidate_masks = _masks(candidate)
    if len(primary_masks) != len(candidate_masks):
        raise AnswersNotComparable(
            f"the primary answers {len(primary_masks)} masks, the candidate {len(candidate_masks)}"
        )
    if primary_layout != candidate_layout:
        raise AnswersNotComparable("the answers group their masks into texts differently")
    pairs = [
        (_tokens(mine), _tokens(theirs)) for mine, theirs in zip(primary_masks, candidate_masks, strict=True)
    ]
    return Comparison(
        items=len(pairs),
        agreeing=sum(mine[:1] == theirs[:1] for mine, theirs in pairs),
        top_k_overlap=fmean(_overlap(mine, theirs) for mine, theirs in pairs),
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
    compare=compare_answers,
)

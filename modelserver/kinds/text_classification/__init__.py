"""Text classification (sentiment) for any sequence-classification checkpoint: the kind's
framework-free part (answer schemas, the Hugging Face body and answer, the v2 codec and its
`Kind`). The model code is in `worker`, the build-time export in `export`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field, RootModel

from modelserver.kinds import text
from modelserver.kinds.comparison import AnswersNotComparable, Comparison
from modelserver.kinds.kind import Kind
from modelserver.protocols.open_inference import TensorCodec, TensorSpec, output_tensor

TASKS = ("sentiment-analysis", "text-classification")


class TextClassificationParameters(text.HubParameters):
    """The Hugging Face text-classification parameters."""

    top_k: int | None = Field(default=None, ge=1, description="Labels per text (default: all).")
    function_to_apply: Literal["sigmoid", "softmax", "none"] | None = Field(
        default=None, description="How logits become scores (default: the model's own)."
    )


class HubTextClassificationRequest(text.HubRequest):
    """A text-classification body in the Hugging Face Inference API's shape."""

    parameters: TextClassificationParameters = Field(default_factory=TextClassificationParameters)


class SentimentLabel(BaseModel):
    """The top label and its probability."""

    label: str = Field(examples=["POSITIVE"])
    score: float = Field(examples=[0.9998])


class SentimentAnswer(RootModel[SentimentLabel | list[SentimentLabel]]):
    """One label for a text, a list for a list of texts."""


class HubTextClassificationAnswer(RootModel[list[list[SentimentLabel]]]):
    """The Hugging Face shape: for each text (one text too), its labels, best first."""


SCORE_OUT = TensorSpec("score", "FP32", (-1,))


def _labels_and_scores(answers: list[Any], _: Sequence[int]) -> dict[str, dict[str, Any]]:
    [per_text] = answers
    return {
        text.LABEL_OUT.name: output_tensor(
            text.LABEL_OUT, [len(per_text)], [answer["label"] for answer in per_text]
        ),
        SCORE_OUT.name: output_tensor(SCORE_OUT, [len(per_text)], [answer["score"] for answer in per_text]),
    }


TEXT_CLASSIFICATION = TensorCodec(
    inputs=(text.TEXT_IN,),
    outputs=(text.LABEL_OUT, SCORE_OUT),
    bodies=text.texts_body,
    answers=_labels_and_scores,
)


def _top_labels(answer: Any) -> tuple[str, list[str]]:
    """(its shape, the top label of each text) of one answer: own (an entry, or a list of
    them) or Hugging Face's (a list per text of its labels, best first)."""
    if isinstance(answer, dict):
        return "one text", [text.label_entry(answer, scored=True)]
    if not isinstance(answer, list):
        raise AnswersNotComparable("an answer is neither an object nor a list")
    if answer and all(isinstance(labels, list) for labels in answer):
        return "Hugging Face", [_best_label(labels) for labels in answer]
    return "list", [text.label_entry(entry, scored=True) for entry in answer]


def _best_label(labels: list[Any]) -> str:
    """The first of one text's Hugging Face labels (each checked: the list is the answer)."""
    if not labels:
        raise AnswersNotComparable("a text's labels are empty")
    best, *_ = [text.label_entry(entry, scored=True) for entry in labels]
    return best


def compare_answers(primary: Any, candidate: Any) -> Comparison:
    """Texts whose top label is the same in both answers; scores are not compared (a
    classifier's answer is its label, and the Hugging Face shape may score otherwise)."""
    primary_shape, primary_labels = _top_labels(primary)
    candidate_shape, candidate_labels = _top_labels(candidate)
    if primary_shape != candidate_shape:
        raise AnswersNotComparable(
            f"the primary answers in the {primary_shape} shape, the candidate in the {candidate_shape} shape"
        )
    return text.compare_labels(primary_labels, candidate_labels)


KIND = Kind(
    loader="modelserver.kinds.text_classification.worker:load_text_classification_predictor",
    settings=text.TextModelSettings,
    request=text.TextRequest,
    answer=SentimentAnswer,
    errors=text.TEXT_ERRORS,
    example={"text": "I love this movie, it is great."},
    export="modelserver.kinds.text_classification.export:export",
    hf_request=HubTextClassificationRequest,
    hf_answer=HubTextClassificationAnswer,
    open_inference=TEXT_CLASSIFICATION,
    compare=compare_answers,
)

"""Newsgroup topics: `{"text": str}` -> `{"label": str}`, to the letter of its spec.

The spec (`prediction-openapi.yaml`, Swagger 2.0) documents two answers: 200 with `{"label"}`
and 405 "Validation exception". So a body its `ApiRequest` schema refuses (not JSON, not an
object, a `text` that is not a string) is `SpecValidationFailed` (405), not the usual 422, and a
body the schema accepts is answered 200: fields it does not name are ignored (Swagger 2.0
allows them), and `text` is optional with no minimum length, so `{}` and `{"text": ""}` are an
empty document, labelled as the model labels any text holding no word it knows.

This is the kind's framework-free part (settings, schemas, v2 codec, `Kind`); the model code
is in `worker`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from modelserver.kinds.comparison import Comparison
from modelserver.kinds.kind import Kind
from modelserver.kinds.text import LABEL_OUT, TEXT_IN, compare_labels, label_entry
from modelserver.payload import BODY_OVERHEAD_BYTES, JSON_BYTES_PER_CHAR, MAX_TEXTS_PER_REQUEST
from modelserver.protocols.open_inference import TensorCodec, output_tensor


class TopicsSettings(BaseModel):
    """The `handler:` section of the topics model."""

    model_config = ConfigDict(extra="forbid")

    threads: int = Field(default=1, ge=1)
    max_chars: int = Field(default=200_000, ge=1)

    def max_body_bytes(self) -> int:
        """The largest body a text within `max_chars` can need, every character escaped at its
        longest (Envoy's own body limit caps it)."""
        return self.max_chars * JSON_BYTES_PER_CHAR + BODY_OVERHEAD_BYTES


class TopicsRequest(BaseModel):
    """The spec's ApiRequest: the text to classify. Unnamed fields are ignored and `text` may be
    absent or empty, as in the spec's schema (no `required`, no `minLength`, additional
    properties allowed); its type is strict: a number is not turned into a string."""

    model_config = ConfigDict(extra="ignore", strict=True)

    text: str = Field(
        default="",
        description="The text to perform the prediction on (absent: an empty document)",
        examples=["The Leafs won in overtime."],
    )


class TopicsAnswer(BaseModel):
    """The spec's ApiResponse: one label (a string, never a list)."""

    label: str = Field(description="The prediction label", examples=["hockey"])


# The Open Inference Protocol's tensors (the text kinds'): one own request per text, one label per text.


def _one_body_per_text(
    values: dict[str, list[Any]], _: dict[str, Any], __: Sequence[int]
) -> list[dict[str, Any]]:
    return [{"text": text} for text in values[TEXT_IN.name]]


def _one_label_per_body(answers: list[Any], _: Sequence[int]) -> dict[str, dict[str, Any]]:
    labels = [answer["label"] for answer in answers]
    return {LABEL_OUT.name: output_tensor(LABEL_OUT, [len(labels)], labels)}


TOPICS = TensorCodec(
    inputs=(TEXT_IN,),
    outputs=(LABEL_OUT,),
    bodies=_one_body_per_text,
    answers=_one_label_per_body,
    max_items=MAX_TEXTS_PER_REQUEST,  # one own request per text
)


def compare_answers(primary: Any, candidate: Any) -> Comparison:
    """One text, one label: the two answers agree when their labels are equal."""
    return compare_labels([label_entry(primary, scored=False)], [label_entry(candidate, scored=False)])


KIND = Kind(
    loader="modelserver.kinds.topics.worker:load_topics_predictor",
    settings=TopicsSettings,
    request=TopicsRequest,
    answer=TopicsAnswer,
    errors={405: "Validation exception (as the topics spec documents)"},
    example={"text": "The goalie stopped the puck in overtime."},
    open_inference=TOPICS,
    compare=compare_answers,
)

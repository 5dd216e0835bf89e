"""What the Hugging Face text kinds (`fill_mask`, `text_classification`) share, framework-free:
their settings, the request fields every text request has, the Hugging Face Inference API's body
shape, the text tensor of their v2 codecs, and the checks their answers' comparisons (shadow
traffic) share, the topics model's labels too.

The launcher (OpenAPI document) and the catalogue read this without importing torch or
transformers; the shared serving code is in `worker`, the shared build-time export in `export`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, StringConstraints, model_validator

from modelserver.backends import DEFAULT_BACKEND, BackendName
from modelserver.kinds.comparison import AnswersNotComparable, Comparison
from modelserver.payload import (
    BODY_OVERHEAD_BYTES,
    JSON_BYTES_PER_CHAR,
    MAX_ANSWER_BYTES,
    MAX_TEXTS_PER_REQUEST,
)
from modelserver.protocols.open_inference import TensorSpec

PUBLIC_MASK = "[MASK]"  # what a fill-mask text writes for the word to fill, whatever the model

Text = Annotated[str, StringConstraints(min_length=1, strict=True)]

# A wordpiece of ordinary prose is 4-5 characters. A text may hold 32 characters per token the
# model accepts (16,384 for a 512-token BERT): generous to whitespace and long words, and still
# a bound on the tokenizer's work. A request may hold 8 per token of its budget (16,384 for
# 2,048 tokens): past that it could fit its token budget only with far longer words or far
# more whitespace than prose has.
TEXT_CHARS_PER_TOKEN = 32
REQUEST_CHARS_PER_TOKEN = 8


class TextModelSettings(BaseModel):
    """The `handler:` section of a Hugging Face text model."""

    model_config = ConfigDict(extra="forbid")

    # Threads of the forward pass (torch or OpenVINO) in each worker: never all cores per worker.
    threads: int = Field(default=1, ge=1)
    # Where the forward pass runs; models.yaml calls it `runtime`.
    backend: BackendName = Field(default=DEFAULT_BACKEND, alias="runtime")
    # int8: OpenVINO's post-training quantisation (NNCF) at archive build; opt-in, and it
    # changes answers (docs/BENCHMARKS.md gives its agreement with fp32).
    quantize: Literal["none", "int8"] = "none"
    # Per-request budgets: one request must never cost more than TorchServe's responseTimeout
    # allows for a whole batch, nor answer more than its response-size limit.
    max_texts: int = Field(default=MAX_TEXTS_PER_REQUEST, ge=1)
    max_request_tokens: int = Field(default=2048, ge=1)
    max_candidates: int = Field(default=2000, ge=1)  # fill-mask: masks x top_k per request
    # Characters, counted before the tokenizer sees a text (its cost grows with characters,
    # which a token count cannot bound: whitespace makes no tokens). None derives the cap from
    # the token budgets (`TEXT_CHARS_PER_TOKEN`, `REQUEST_CHARS_PER_TOKEN`).
    max_text_chars: int | None = Field(default=None, ge=1)
    max_request_chars: int | None = Field(default=None, ge=1)
    # Bytes of one response (an answer, or one NDJSON chunk of a stream): well below
    # TorchServe's max_response_size (16 MiB in config.properties), so a frame never fails.
    max_answer_bytes: int = Field(default=MAX_ANSWER_BYTES, ge=1024)
    # Texts of a batch go through the model in length-sorted groups of at most this many
    # (padded) tokens, so one long text does not pad every short one to its length.
    forward_tokens: int = Field(default=4096, ge=64)
    stream_chunk: int = Field(default=4, ge=1)

    def max_body_bytes(self) -> int:
        """The largest body a request within the character caps can need (Envoy refuses longer
        ones before they are read to the end): every character escaped at its longest, plus
        each text's quotes and the request's other fields."""
        chars = self.max_request_chars or REQUEST_CHARS_PER_TOKEN * self.max_request_tokens
        return chars * JSON_BYTES_PER_CHAR + self.max_texts * 8 + BODY_OVERHEAD_BYTES

    @model_validator(mode="after")
    def _int8_is_compiled(self) -> TextModelSettings:
        if self.quantize == "int8" and self.backend != "openvino":
            raise ValueError("quantize: int8 needs runtime: openvino")
        return self


class HubParameters(BaseModel):
    """`parameters` of a Hugging Face Inference API body: what the task defines and this
    server honours; any other name is a 422 naming it."""

    model_config = ConfigDict(extra="forbid", strict=True)


class TextRequest(BaseModel):
    """Fields every text request has: one text or a list, and the model and task selectors."""

    model_config = ConfigDict(extra="forbid", strict=True)

    text: Text | Annotated[list[Text], Field(min_length=1)]
    model_name: str | None = Field(default=None, description="A served model name or its Hub id.")
    task: str | None = Field(default=None, description="The task, if given, must be this model's.")
    stream: bool = Field(default=False, description="Answer a list of texts as NDJSON lines.")
    # Set when the body came in the Hugging Face Inference API's shape: its parameters, and
    # that the answer goes back in that API's shape.
    _hf_shape: HubParameters | None = PrivateAttr(default=None)

    @property
    def hf_shape(self) -> HubParameters | None:
        """The Hugging Face parameters of a body sent in that API's shape, else None."""
        return self._hf_shape

    def in_hf_shape(self, parameters: HubParameters) -> TextRequest:
        """This request, marked as sent in the Hugging Face shape with these parameters."""
        self._hf_shape = parameters
        return self

    @property
    def texts(self) -> list[str]:
        """The texts, as a list even when one was sent."""
        return [self.text] if isinstance(self.text, str) else list(self.text)


class HubOptions(BaseModel):
    """The legacy `options` of a Hugging Face Inference API body: accepted and without
    effect here (there is no cache, and a served model is loaded before it is ready)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    use_cache: bool | None = None
    wait_for_model: bool | None = None


class HubRequest(BaseModel):
    """A body in the Hugging Face Inference API's shape (`huggingface_hub.InferenceClient`):
    `inputs`, one text or a list, and the task's `parameters`."""

    model_config = ConfigDict(extra="forbid", strict=True)

    inputs: Text | Annotated[list[Text], Field(min_length=1)]
    parameters: HubParameters = Field(default_factory=HubParameters)
    options: HubOptions | None = None
    model_name: str | None = Field(default=None, description="A served model name or its Hub id.")

    def own_fields(self) -> dict[str, object]:
        """The body in this server's own shape (the parameters are kept apart)."""
        return {"text": self.inputs, "model_name": self.model_name}


TEXT_ERRORS = {400: "`model_name` or `task` is not this model's", 422: "invalid text or over a budget"}

# The Open Inference Protocol's text tensor: the texts of one own request.
TEXT_IN = TensorSpec("text", "BYTES", (-1,))
# One label per text: the text classifiers' output, and the topics model's.
LABEL_OUT = TensorSpec("label", "BYTES", (-1,))


def texts_body(
    values: dict[str, list[Any]], parameters: dict[str, Any], _: Sequence[int]
) -> list[dict[str, Any]]:
    """An `infer` request as one own body holding every text, with its parameters."""
    return [{"text": values[TEXT_IN.name], **parameters}]


# Comparing two answers (shadow traffic). A misbehaving model's answer must not pass for a
# disagreement, so every entry read is checked; messages name shapes, never an answer's text.


def is_number(value: Any) -> bool:
    """Whether a parsed JSON value is a number (JSON has no bool-as-number)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def label_entry(entry: Any, scored: bool) -> str:
    """The label of one `{"label": ..., "score": ...}` entry (its score checked if `scored`)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("label"), str):
        raise AnswersNotComparable("an entry of an answer is not an object with a string label")
    if scored and not is_number(entry.get("score")):
        raise AnswersNotComparable("an entry of an answer has no numeric score")
    return entry["label"]


def compare_labels(primary: Sequence[str], candidate: Sequence[str]) -> Comparison:
    """The top labels of the same texts, one to one: a text agrees when its labels are equal."""
    if len(primary) != len(candidate):
        raise AnswersNotComparable(
            f"the primary answers {len(primary)} texts, the candidate {len(candidate)}"
        )
    agreeing = sum(mine == theirs for mine, theirs in zip(primary, candidate, strict=True))
    return Comparison(items=len(primary), agreeing=agreeing)

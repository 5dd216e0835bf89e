"""Newsgroup topics: `{"text": str}` -> `{"label": str}`, to the letter of its spec.

The spec (`prediction-openapi.yaml`, Swagger 2.0) documents two answers: 200 with `{"label"}`
and 405 "Validation exception". So a body its `ApiRequest` schema refuses (not JSON, not an
object, a `text` that is not a string) is `SpecValidationFailed` (405), not the usual 422, and a
body the schema accepts is answered 200: fields it does not name are ignored (Swagger 2.0
allows them), and `text` is optional with no minimum length, so `{}` and `{"text": ""}` are an
empty document, labelled as the model labels any text holding no word it knows.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from threadpoolctl import threadpool_limits

from modelserver.errors import ConfigError, SpecValidationFailed
from modelserver.kinds import ModelFiles
from modelserver.kinds.contract import ModelRuntime
from modelserver.payload import BODY_OVERHEAD_BYTES, JSON_BYTES_PER_CHAR
from modelserver.validation import parse_settings, validate_body

# What a saved topics model may contain; anything else makes the load fail.
TRUSTED_TYPES = [
    "sklearn.feature_extraction.text.CountVectorizer",
    "sklearn.feature_extraction.text.TfidfTransformer",
    "sklearn.feature_extraction.text.TfidfVectorizer",
    "sklearn.naive_bayes.MultinomialNB",
    "sklearn.naive_bayes.ComplementNB",
    "sklearn.svm._classes.LinearSVC",
    "sklearn.pipeline.Pipeline",
    "builtins.dict",
    "numpy.float64",
    "numpy.int64",
    "scipy.sparse._csr.csr_matrix",
    "scipy.sparse._csr.csr_array",
]


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


class TopicsRuntime(ModelRuntime[TopicsRequest]):
    """Validates requests and labels every text of a batch with one pipeline call."""

    invalid_input = SpecValidationFailed  # bodies that are not JSON get the spec's 405 too

    def __init__(self, model: Any, settings: TopicsSettings) -> None:
        self._model = model
        self._settings = settings

    def parse(self, payload: Any) -> TopicsRequest:
        """Validate one body; every failure is the spec's 405. A Hugging Face Inference API
        body (`inputs`, one text, and no `text`) is read as that text, not as an empty document."""
        if isinstance(payload, dict) and "text" not in payload and isinstance(payload.get("inputs"), str):
            payload = {**payload, "text": payload["inputs"]}
        request = validate_body(TopicsRequest, payload, "text", SpecValidationFailed)
        if len(request.text) > self._settings.max_chars:
            raise SpecValidationFailed(f"text is longer than {self._settings.max_chars} characters")
        try:  # JSON can escape half a UTF-16 pair ("\ud800"): not Unicode text, refused as elsewhere
            request.text.encode("utf-8")
        except UnicodeEncodeError:
            raise SpecValidationFailed("text is not valid Unicode (it holds a lone surrogate)") from None
        return request

    def predict(self, requests: Sequence[TopicsRequest]) -> list[dict[str, str]]:
        """One `{"label"}` per request."""
        labels = self._model.predict([request.text for request in requests])
        return [{"label": str(label)} for label in labels]


def load_pipeline(path: Path) -> Any:
    """Load a skops file, refusing any type outside `TRUSTED_TYPES`. skops (and through it
    scikit-learn) is imported here, in the worker only: the launcher reads this module's schemas."""
    import skops.io  # pylint: disable=import-outside-toplevel

    try:
        untrusted = set(skops.io.get_untrusted_types(file=path)) - set(TRUSTED_TYPES)
        if untrusted:
            raise ConfigError(f"{path.name} holds types that are not trusted: {sorted(untrusted)}")
        return skops.io.load(path, trusted=TRUSTED_TYPES)
    except ConfigError:
        raise
    except Exception as error:  # a corrupt or foreign file: fail the load with its reason
        raise ConfigError(f"cannot load {path.name} with skops: {error}") from None


def load_topics_runtime(files: ModelFiles) -> TopicsRuntime:
    """Load the skops model the archive holds (allowlisted types only)."""
    settings = parse_settings(TopicsSettings, files.settings)
    threadpool_limits(settings.threads)
    return TopicsRuntime(load_pipeline(files.model_dir / files.model_file), settings)

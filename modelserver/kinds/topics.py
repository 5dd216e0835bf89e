"""Newsgroup topics: `{"text": str}` -> `{"label": str}`, exactly as its spec says.

The spec (`prediction-openapi.yaml`) documents 405 "Validation exception" for bad input, so
validation failures here are `SpecValidationFailed` (405), not the usual 422.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from threadpoolctl import threadpool_limits

from modelserver.errors import SpecValidationFailed
from modelserver.kinds import ModelFiles
from modelserver.validation import parse_settings, validate_body


class TopicsSettings(BaseModel):
    """The `handler:` section of the topics model."""

    model_config = ConfigDict(extra="forbid")

    threads: int = Field(default=1, ge=1)
    max_chars: int = Field(default=200_000, ge=1)


class TopicsRequest(BaseModel):
    """The spec's ApiRequest: the text to classify."""

    model_config = ConfigDict(extra="forbid", strict=True)

    text: Annotated[str, StringConstraints(min_length=1)] = Field(
        description="The text to perform the prediction on", examples=["The Leafs won in overtime."]
    )


class TopicsAnswer(BaseModel):
    """The spec's ApiResponse: one label (a string, never a list)."""

    label: str = Field(description="The prediction label", examples=["hockey"])


class TopicsRuntime:
    """Validates requests and labels every text of a batch with one pipeline call."""

    invalid_input = SpecValidationFailed  # bodies that are not JSON get the spec's 405 too

    def __init__(self, model: Any, settings: TopicsSettings) -> None:
        self._model = model
        self._settings = settings

    def parse(self, payload: Any) -> TopicsRequest:
        """Validate one body; every failure is the spec's 405."""
        request = validate_body(TopicsRequest, payload, "text", SpecValidationFailed)
        if len(request.text) > self._settings.max_chars:
            raise SpecValidationFailed(f"text is longer than {self._settings.max_chars} characters")
        return request

    def predict(self, requests: Sequence[TopicsRequest]) -> list[dict[str, str]]:
        """One `{"label"}` per request."""
        labels = self._model.predict([request.text for request in requests])
        return [{"label": str(label)} for label in labels]


def load_topics_runtime(files: ModelFiles) -> TopicsRuntime:
    """Load the skops model the archive holds (allowlisted types only)."""
    # scikit-learn and skops load in the worker only: the launcher reads this module's schemas.
    from modelserver.training.topics import load_model  # pylint: disable=import-outside-toplevel

    settings = parse_settings(TopicsSettings, files.settings)
    threadpool_limits(settings.threads)
    return TopicsRuntime(load_model(files.model_dir / files.model_file), settings)

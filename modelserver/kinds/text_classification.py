"""Text classification (sentiment) for any sequence-classification checkpoint.

Answers `{"label", "score"}` as transformers' text-classification pipeline does: the top label
with its softmax probability (sigmoid for single-logit or multi-label models).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification

from modelserver.kinds import ModelFiles
from modelserver.kinds.text_models import (
    TextModelSettings,
    TextRequest,
    flatten,
    length_errors,
    load_pretrained,
    max_tokens,
    pad_batch,
    regroup,
    split_texts,
    validate_request,
)
from modelserver.validation import parse_settings

TASKS = ("sentiment-analysis", "text-classification")


class TextClassificationRuntime:
    """Validates requests and classifies every text of a batch in one padded forward pass."""

    def __init__(self, tokenizer: Any, model: Any, settings: TextModelSettings, names: Sequence[str]) -> None:
        self._tokenizer = tokenizer
        self._model = model
        self._settings = settings
        self._names = list(names)
        self._limit = max_tokens(tokenizer, model.config)
        config = model.config
        self._sigmoid = config.num_labels == 1 or config.problem_type == "multi_label_classification"
        self._labels = [config.id2label[i] for i in range(config.num_labels)]

    def parse(self, payload: Any) -> TextRequest:
        """Validate one body."""
        return validate_request(TextRequest, payload, self._names, TASKS, self._settings.max_texts)

    def stream_parts(self, request: TextRequest, size: int | None = None) -> list[TextRequest]:
        """A streaming request as sub-requests of `stream_chunk` texts (or `size`)."""
        return split_texts(request, size or self._settings.stream_chunk)

    def predict(self, requests: Sequence[TextRequest]) -> list[Any]:
        """One answer (or error) per request; every text of the batch tokenised together."""
        texts, owners = flatten(requests)
        encoded = self._tokenizer(texts)["input_ids"]
        errors = length_errors(owners, [len(ids) for ids in encoded], self._limit)
        kept = [i for i, owner in enumerate(owners) if owner not in errors]
        answers = self._classify([encoded[i] for i in kept])
        return regroup(requests, [owners[i] for i in kept], answers, errors)

    def _classify(self, encoded: list[list[int]]) -> list[dict[str, Any]]:
        """Top label and score for each encoded text, in one padded forward pass."""
        if not encoded:
            return []
        input_ids, attention = pad_batch(encoded, self._tokenizer.pad_token_id)
        with torch.inference_mode():
            logits = self._model(input_ids=input_ids, attention_mask=attention).logits.float()
        scores = logits.sigmoid() if self._sigmoid else logits.softmax(dim=-1)
        best_scores, best = scores.max(dim=-1)
        return [
            {"label": self._labels[label], "score": score}
            for label, score in zip(best.tolist(), best_scores.tolist(), strict=True)
        ]


def load_text_classification_runtime(files: ModelFiles) -> TextClassificationRuntime:
    """Build the runtime from an archive's model/ folder and `handler:` settings."""
    settings = parse_settings(TextModelSettings, files.settings)
    tokenizer, model = load_pretrained(files, AutoModelForSequenceClassification, settings)
    return TextClassificationRuntime(tokenizer, model, settings, files.names)

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
    TextRuntime,
    flatten,
    length_errors,
    load_pretrained,
    pad_batch,
    regroup,
)
from modelserver.validation import parse_settings

TASKS = ("sentiment-analysis", "text-classification")


class TextClassificationRuntime(TextRuntime):
    """Validates requests and classifies every text of a batch in one padded forward pass."""

    tasks = TASKS

    def __init__(self, tokenizer: Any, model: Any, settings: TextModelSettings, names: Sequence[str]) -> None:
        super().__init__(tokenizer, model, settings, names)
        config = model.config
        self._sigmoid = config.num_labels == 1 or config.problem_type == "multi_label_classification"
        self._labels = [config.id2label[i] for i in range(config.num_labels)]

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

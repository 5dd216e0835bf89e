"""The text-classification kind's worker part: any sequence-classification checkpoint.
Imported by model workers and the build's export child only.

Answers `{"label", "score"}` as transformers' text-classification pipeline does: the top label
with its softmax probability (sigmoid for single-logit or multi-label models).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification

from modelserver.backends.forward import Forward, Graph, load_forward
from modelserver.errors import ServingError
from modelserver.kinds import ModelFiles
from modelserver.kinds.text import TextModelSettings, TextRequest
from modelserver.kinds.text import worker as text_worker
from modelserver.kinds.text_classification import (
    TASKS,
    HubTextClassificationRequest,
    TextClassificationParameters,
)

# How the pipeline turns logits into scores, by the model's problem type.
SCORES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "softmax": lambda logits: logits.softmax(dim=-1),
    "sigmoid": torch.sigmoid,
    "none": lambda logits: logits,
}


def score_function(config: Any) -> str:
    """The pipeline's choice: none for regression, sigmoid for one logit or multi-label."""
    if config.problem_type == "regression":
        return "none"
    if config.problem_type == "multi_label_classification" or config.num_labels == 1:
        return "sigmoid"
    return "softmax"


class TextClassificationPredictor(text_worker.TextPredictor):
    """Validates requests and classifies every text of a batch in one padded forward pass."""

    tasks = TASKS
    hf_request_model = HubTextClassificationRequest

    def __init__(  # pylint: disable=too-many-arguments,too-many-positional-arguments
        self, tokenizer: Any, config: Any, forward: Forward, settings: TextModelSettings, names: Sequence[str]
    ) -> None:
        super().__init__(tokenizer, config, forward, settings, names)
        self._function = score_function(config)
        self._score = SCORES[self._function]
        self._labels = [config.id2label[i] for i in range(config.num_labels)]

    def predict(self, requests: Sequence[TextRequest]) -> list[Any]:
        """One answer (or error) per request; every text of the batch tokenised together."""
        texts, owners = text_worker.flatten(requests)
        encoded, errors = self._encode_and_check(texts, owners)
        kept = [i for i, owner in enumerate(owners) if owner not in errors]
        ids = [encoded[i] for i in kept]
        hf_shapes = [requests[owners[i]].hf_shape for i in kept]
        answers = self._in_groups(
            ids, lambda group: self._classify([ids[i] for i in group], [hf_shapes[i] for i in group])
        )
        grouped = text_worker.regroup(requests, [owners[i] for i in kept], answers, errors)
        # The Hugging Face shape is a list of labels per text, for a single text too.
        return [
            [answer] if _hf_single(request) and not isinstance(answer, ServingError) else answer
            for request, answer in zip(requests, grouped, strict=True)
        ]

    def distributions(self, encoded: Sequence[Sequence[int]]) -> torch.Tensor:
        """Every label's score for each encoded text, in one padded forward pass."""
        logits = self.forward(*self.pad(encoded))
        with torch.inference_mode():
            return self._score(logits.float()).cpu()

    def _classify(
        self, encoded: list[list[int]], hf_shapes: Sequence[Any]
    ) -> list[dict[str, Any] | list[dict[str, Any]]]:
        """Top label and score for each encoded text; for a text sent in the Hugging Face
        shape, its `top_k` labels (all by default), best first, scored by its function."""
        logits = self.forward(*self.pad(encoded))
        with torch.inference_mode():
            logits = logits.float().cpu()
            best_scores, best = self._score(logits).max(dim=-1)
            answers: list[dict[str, Any] | list[dict[str, Any]]] = []
            for row, hf_shape in enumerate(hf_shapes):
                if hf_shape is None:
                    answers.append({"label": self._labels[int(best[row])], "score": float(best_scores[row])})
                else:
                    answers.append(self._ranked(logits[row], hf_shape))
            return answers

    def _ranked(self, logits: torch.Tensor, parameters: TextClassificationParameters) -> list[dict[str, Any]]:
        """One text's labels, best first, as the Hugging Face text-classification task answers."""
        scores = SCORES[parameters.function_to_apply or self._function](logits)
        order = torch.sort(scores, descending=True, stable=True).indices[: parameters.top_k]
        return [{"label": self._labels[int(i)], "score": float(scores[i])} for i in order.tolist()]


def _hf_single(request: TextRequest) -> bool:
    """A single text sent in the Hugging Face shape (answered with a list of one text's labels)."""
    return request.hf_shape is not None and isinstance(request.text, str)


def load_text_classification_predictor(
    files: ModelFiles[TextModelSettings],
) -> TextClassificationPredictor:
    """Build the predictor from an archive's model/ folder and `handler:` settings."""
    settings = files.settings
    tokenizer, config = text_worker.load_tokenizer_and_config(files)
    forward = load_forward(
        text_worker.text_placement(files),
        files.model_dir,
        settings.threads,
        lambda: Graph(text_worker.load_model(files, AutoModelForSequenceClassification), "logits"),
    )
    return TextClassificationPredictor(tokenizer, config, forward, settings, files.names)

"""Text classification (sentiment) for any sequence-classification checkpoint.

Answers `{"label", "score"}` as transformers' text-classification pipeline does: the top label
with its softmax probability (sigmoid for single-logit or multi-label models).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification

from modelserver.errors import ServingError
from modelserver.kinds import ModelFiles
from modelserver.kinds.text_models import (
    TextRuntime,
    flatten,
    load_model,
    load_tokenizer_and_config,
    regroup,
    text_placement,
)
from modelserver.kinds.text_schemas import (
    HubTextClassificationRequest,
    TextClassificationParameters,
    TextModelSettings,
    TextRequest,
)
from modelserver.runtimes.forward import Forward, Graph, load_forward
from modelserver.validation import parse_settings

TASKS = ("sentiment-analysis", "text-classification")

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


class TextClassificationRuntime(TextRuntime):
    """Validates requests and classifies every text of a batch in one padded forward pass."""

    tasks = TASKS
    hub_request_model = HubTextClassificationRequest

    def __init__(  # pylint: disable=too-many-arguments,too-many-positional-arguments
        self, tokenizer: Any, config: Any, forward: Forward, settings: TextModelSettings, names: Sequence[str]
    ) -> None:
        super().__init__(tokenizer, config, forward, settings, names)
        self._function = score_function(config)
        self._score = SCORES[self._function]
        self._labels = [config.id2label[i] for i in range(config.num_labels)]

    def predict(self, requests: Sequence[TextRequest]) -> list[Any]:
        """One answer (or error) per request; every text of the batch tokenised together."""
        texts, owners = flatten(requests)
        encoded, errors = self._encode_and_check(texts, owners)
        kept = [i for i, owner in enumerate(owners) if owner not in errors]
        ids = [encoded[i] for i in kept]
        hubs = [requests[owners[i]].hub for i in kept]
        answers = self._in_groups(
            ids, lambda group: self._classify([ids[i] for i in group], [hubs[i] for i in group])
        )
        grouped = regroup(requests, [owners[i] for i in kept], answers, errors)
        # The Hugging Face shape is a list of labels per text, for a single text too.
        return [
            [answer] if _hub_single(request) and not isinstance(answer, ServingError) else answer
            for request, answer in zip(requests, grouped, strict=True)
        ]

    def distributions(self, encoded: Sequence[Sequence[int]]) -> torch.Tensor:
        """Every label's score for each encoded text, in one padded forward pass."""
        logits = self.forward(*self.pad(encoded))
        with torch.inference_mode():
            return self._score(logits.float()).cpu()

    def _classify(
        self, encoded: list[list[int]], hubs: Sequence[Any]
    ) -> list[dict[str, Any] | list[dict[str, Any]]]:
        """Top label and score for each encoded text; for a text sent in the Hugging Face
        shape, its `top_k` labels (all by default), best first, scored by its function."""
        logits = self.forward(*self.pad(encoded))
        with torch.inference_mode():
            logits = logits.float().cpu()
            best_scores, best = self._score(logits).max(dim=-1)
            answers: list[dict[str, Any] | list[dict[str, Any]]] = []
            for row, hub in enumerate(hubs):
                if hub is None:
                    answers.append({"label": self._labels[int(best[row])], "score": float(best_scores[row])})
                else:
                    answers.append(self._ranked(logits[row], hub))
            return answers

    def _ranked(self, logits: torch.Tensor, parameters: TextClassificationParameters) -> list[dict[str, Any]]:
        """One text's labels, best first, as the Hugging Face text-classification task answers."""
        scores = SCORES[parameters.function_to_apply or self._function](logits)
        order = torch.sort(scores, descending=True, stable=True).indices[: parameters.top_k]
        return [{"label": self._labels[int(i)], "score": float(scores[i])} for i in order.tolist()]


def _hub_single(request: TextRequest) -> bool:
    """A single text sent in the Hugging Face shape (answered with a list of one text's labels)."""
    return request.hub is not None and isinstance(request.text, str)


def load_text_classification_runtime(files: ModelFiles) -> TextClassificationRuntime:
    """Build the runtime from an archive's model/ folder and `handler:` settings."""
    settings = parse_settings(TextModelSettings, files.settings)
    tokenizer, config = load_tokenizer_and_config(files, settings)
    forward = load_forward(
        text_placement(files, settings),
        files.model_dir,
        settings.threads,
        lambda: Graph(load_model(files, AutoModelForSequenceClassification), "logits"),
    )
    return TextClassificationRuntime(tokenizer, config, forward, settings, files.names)

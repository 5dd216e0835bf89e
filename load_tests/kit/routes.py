"""What a right answer of each public route looks like, checked the same way by every load tool:
a 200 whose JSON has the route's shape for the request that was sent. Anything else is an
error, and `answer_failure` says which in a few words."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from load_tests.kit.topics_corpus import TOPIC_WORDS

# The brief's three crystal rows: the requests of the crystal routes, in the tests and under load.
BRIEF_ROWS = [[0.92, 0.12, 0.31, 0.09], [0.31, 0.54, 0.78, 0.17], [0.38, 0.04, 0.21, 0.98]]
CRYSTAL_LABELS = {"blue", "green", "yellow"}
FILL_MASK_KEYS = {"score", "token", "token_str", "sequence"}
FILL_MASK_TOP_K = 5  # the pipeline's default number of candidates
SENTIMENT_LABELS = {"NEGATIVE", "POSITIVE"}

# (the JSON body sent, the decoded answer) -> whether it is a right answer to that body.
AnswerCheck = Callable[[Mapping[str, Any], Any], bool]


def fill_mask_answer_is_right(request: Mapping[str, Any], answer: Any) -> bool:
    """/inference, fill-mask models under /predictions and /predict with a fill-mask
    `model_name`: `top_k` candidates, each with the pipeline's four fields."""
    return (
        isinstance(answer, list)
        and len(answer) == request.get("top_k", FILL_MASK_TOP_K)
        and all(isinstance(c, dict) and set(c) == FILL_MASK_KEYS for c in answer)
    )


def sentiment_answer_is_right(request: Mapping[str, Any], answer: Any) -> bool:
    """/predict: the pipeline's top label and its score, a probability."""
    del request  # one text in, one label out, whatever the text
    return (
        isinstance(answer, dict)
        and answer.get("label") in SENTIMENT_LABELS
        and isinstance(answer.get("score"), float)
        and 0 <= answer["score"] <= 1
    )


def topics_answer_is_right(request: Mapping[str, Any], answer: Any) -> bool:
    """/prediction: exactly `{"label": <one of the six topics>}`, as its OpenAPI spec says."""
    del request
    return isinstance(answer, dict) and set(answer) == {"label"} and answer["label"] in TOPIC_WORDS


def crystal_answer_is_right(request: Mapping[str, Any], answer: Any) -> bool:
    """/sklearn, /pytorch, /astromech: one label and one score per label for every row sent."""
    rows = len(request["crystalData"])
    return (
        isinstance(answer, dict)
        and len(answer.get("prediction", [])) == rows
        and set(answer["prediction"]) <= CRYSTAL_LABELS
        and len(answer.get("scores", [])) == rows
    )


def crystal_v2_answer_is_right(request: Mapping[str, Any], answer: Any) -> bool:
    """/v2/models/crystal_*/infer: a `label` tensor with one label per row sent and a `scores`
    tensor with one score per label per row."""
    rows = request["inputs"][0]["shape"][0]
    outputs = answer.get("outputs") if isinstance(answer, dict) else None
    if not isinstance(outputs, list):
        return False
    tensors = {output.get("name"): output for output in outputs if isinstance(output, dict)}
    labels, scores = tensors.get("label", {}), tensors.get("scores", {})
    return (
        labels.get("shape") == [rows]
        and set(labels.get("data", [])) <= CRYSTAL_LABELS
        and scores.get("shape") == [rows, len(CRYSTAL_LABELS)]
        and len(scores.get("data", [])) == rows * len(CRYSTAL_LABELS)
    )


def answer_failure(check: AnswerCheck, request: Mapping[str, Any], status: int, body: bytes) -> str:
    """Why an answer to `request` is not right ("HTTP <status>", "answer is not JSON",
    "malformed answer"), or "" when it is."""
    if status != 200:
        return f"HTTP {status}"
    try:
        answer = json.loads(body)
    except ValueError:
        return "answer is not JSON"
    return "" if check(request, answer) else "malformed answer"

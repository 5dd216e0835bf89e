"""What the benchmark sends, and the answer check of each route it sends it to (the kit's: a 200
with the wrong shape is an error)."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from load_tests.kit.routes import (
    BRIEF_ROWS,
    CRYSTAL_LABELS,
    AnswerCheck,
    crystal_answer_is_right,
    crystal_v2_answer_is_right,
    fill_mask_answer_is_right,
    sentiment_answer_is_right,
)

# Natural sentences of 8 to 16 words, one [MASK] each, as the brief's users send them.
SENTENCES = [
    "Hello I'm a [MASK] model.",
    "The capital of France is [MASK].",
    "She poured a cup of [MASK] and sat down by the window.",
    "The [MASK] barked at the mailman every single morning.",
    "He forgot his umbrella and got [MASK] on the way home.",
    "Our team will present the quarterly [MASK] to the board on Monday.",
    "The doctor told him to drink more [MASK] and rest for a week.",
    "I can't believe the movie ended with such a [MASK] twist.",
    "Please remember to turn off the [MASK] before you leave the house.",
    "The children built a huge [MASK] on the beach this afternoon.",
    "After the long hike we were tired and very [MASK].",
    "The new phone has a better camera and a longer [MASK] life.",
    "My grandmother bakes the best apple [MASK] in the whole town.",
    "Traffic was terrible because of an accident on the [MASK].",
    "The museum opens at nine and closes at [MASK] in the evening.",
    "They moved to a small village in the [MASK] to enjoy a quiet life.",
]


def _fill_mask_body() -> dict[str, Any]:
    return {"text": random.choice(SENTENCES)}


def _sentiment_body() -> dict[str, Any]:
    return {"text": random.choice(SENTENCES).replace("[MASK]", "great")}


def _crystal_body() -> dict[str, Any]:
    return {"crystalData": [random.choice(BRIEF_ROWS)]}


def _crystal_v2_body() -> dict[str, Any]:
    row = random.choice(BRIEF_ROWS)
    return {"inputs": [{"name": "crystalData", "shape": [1, len(row)], "datatype": "FP32", "data": row}]}


def _crystal_v2_proba_body() -> dict[str, Any]:
    return {**_crystal_v2_body(), "outputs": [{"name": "predict_proba"}]}


def proba_answer_is_right(request: Mapping[str, Any], answer: Any) -> bool:
    """MLServer's scikit-learn runtime asked for `predict_proba`: one probability per label
    for every row sent (its answer has no labels: the model was trained on class indices)."""
    rows = request["inputs"][0]["shape"][0]
    outputs = answer.get("outputs") if isinstance(answer, dict) else None
    if not (isinstance(outputs, list) and len(outputs) == 1 and isinstance(outputs[0], dict)):
        return False
    data = outputs[0].get("data")
    return (
        outputs[0].get("shape") == [rows, len(CRYSTAL_LABELS)]
        and isinstance(data, list)
        and len(data) == rows * len(CRYSTAL_LABELS)
        and all(isinstance(p, float) and 0 <= p <= 1 for p in data)
    )


@dataclass(frozen=True)
class Scenario:
    """One kind of request: its path on every server, a body maker and the route's answer check."""

    name: str
    path: str
    body: Callable[[], dict[str, Any]]
    answer_is_right: AnswerCheck


SCENARIOS: dict[str, Scenario] = {
    "fill_mask": Scenario("fill_mask", "/inference", _fill_mask_body, fill_mask_answer_is_right),
    "crystal": Scenario("crystal", "/sklearn", _crystal_body, crystal_answer_is_right),
    "sentiment": Scenario("sentiment", "/predict", _sentiment_body, sentiment_answer_is_right),
}

# Every request a server can be sent: the scenarios' own, and the same work in another protocol
# (the crystal row through the Open Inference Protocol, ours and MLServer's).
REQUESTS: dict[str, Scenario] = {
    **SCENARIOS,
    "crystal_v2": Scenario(
        "crystal_v2", "/v2/models/crystal_sklearn/infer", _crystal_v2_body, crystal_v2_answer_is_right
    ),
    "crystal_v2_proba": Scenario(
        "crystal_v2_proba", "/v2/models/crystal_sklearn/infer", _crystal_v2_proba_body, proba_answer_is_right
    ),
}

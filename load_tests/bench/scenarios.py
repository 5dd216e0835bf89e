"""What the benchmark sends and how it checks answers: a 200 with the wrong shape is an error."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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
CRYSTAL_ROWS = [[0.92, 0.12, 0.31, 0.09], [0.31, 0.54, 0.78, 0.17], [0.38, 0.04, 0.21, 0.98]]
CRYSTAL_LABELS = {"blue", "green", "yellow"}
FILL_MASK_KEYS = {"score", "token", "token_str", "sequence"}


def _fill_mask_body() -> dict[str, Any]:
    return {"text": random.choice(SENTENCES)}


def _fill_mask_ok(answer: Any) -> bool:
    """Five candidates, each with the pipeline's four fields."""
    return (
        isinstance(answer, list)
        and len(answer) == 5
        and all(isinstance(c, dict) and set(c) == FILL_MASK_KEYS for c in answer)
    )


SENTIMENT_LABELS = {"NEGATIVE", "POSITIVE"}


def _sentiment_body() -> dict[str, Any]:
    return {"text": random.choice(SENTENCES).replace("[MASK]", "great")}


def _sentiment_ok(answer: Any) -> bool:
    """The pipeline's top label and its score."""
    return (
        isinstance(answer, dict)
        and answer.get("label") in SENTIMENT_LABELS
        and isinstance(answer.get("score"), float)
        and 0 <= answer["score"] <= 1
    )


def _crystal_body() -> dict[str, Any]:
    return {"crystalData": [random.choice(CRYSTAL_ROWS)]}


def _crystal_ok(answer: Any) -> bool:
    """One label and one score per label for the one row."""
    return (
        isinstance(answer, dict)
        and len(answer.get("prediction", [])) == 1
        and set(answer["prediction"]) <= CRYSTAL_LABELS
        and len(answer.get("scores", [])) == 1
    )


@dataclass(frozen=True)
class Scenario:
    """One kind of request: its path on every server, a body maker and an answer check."""

    name: str
    path: str
    body: Callable[[], dict[str, Any]]
    answer_ok: Callable[[Any], bool]


SCENARIOS: dict[str, Scenario] = {
    "fill_mask": Scenario("fill_mask", "/inference", _fill_mask_body, _fill_mask_ok),
    "crystal": Scenario("crystal", "/sklearn", _crystal_body, _crystal_ok),
    "sentiment": Scenario("sentiment", "/predict", _sentiment_body, _sentiment_ok),
}

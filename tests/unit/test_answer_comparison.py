"""Shadow traffic's comparisons: each kind's `compare` measures a candidate's answer against the
primary's to the same request, in every shape the kind's routes answer with, and refuses a pair
whose shapes differ (a misbehaving model) instead of counting it as a disagreement."""

from __future__ import annotations

from typing import Any

import pytest

from modelserver.kinds import crystal, fill_mask, text_classification, topics
from modelserver.kinds.comparison import AnswersNotComparable, Comparison
from modelserver.kinds.registry import KINDS


def test_every_kind_declares_how_its_answers_compare() -> None:
    undeclared = sorted(name for name, kind in KINDS.items() if not callable(kind.compare))
    assert not undeclared, f"kinds without `compare=` in their KIND: {undeclared}"


# crystal


def crystal_answer(*rows: tuple[str, dict[str, float]]) -> dict[str, Any]:
    """A crystal answer: a label and the scores of each row."""
    return {"prediction": [label for label, _ in rows], "scores": [scores for _, scores in rows]}


CRYSTAL_ROWS = (
    ("Blue", {"Blue": 0.8, "Green": 0.15, "Red": 0.05}),
    ("Red", {"Blue": 0.1, "Green": 0.2, "Red": 0.7}),
    ("Green", {"Blue": 0.3, "Green": 0.6, "Red": 0.1}),
)


def test_identical_crystal_answers_agree_on_every_row_with_no_score_difference() -> None:
    compared = crystal.compare_answers(crystal_answer(*CRYSTAL_ROWS), crystal_answer(*CRYSTAL_ROWS))
    assert (compared.items, compared.agreeing, compared.top_k_overlap) == (3, 3, None)
    assert compared.largest_score_difference == pytest.approx(0.0, abs=1e-9)


def test_crystal_counts_rows_with_another_label_and_the_largest_score_difference() -> None:
    candidate = crystal_answer(
        CRYSTAL_ROWS[0],
        ("Green", {"Blue": 0.1, "Green": 0.45, "Red": 0.45}),  # Red 0.7 -> 0.45, Green 0.2 -> 0.45
        CRYSTAL_ROWS[2],
    )
    compared = crystal.compare_answers(crystal_answer(*CRYSTAL_ROWS), candidate)
    assert (compared.items, compared.agreeing) == (3, 2)
    assert compared.largest_score_difference == pytest.approx(0.25, abs=1e-9)


def test_a_crystal_label_one_answer_lacks_scores_zero_there() -> None:
    primary = crystal_answer(("Blue", {"Blue": 0.6, "Red": 0.4}))
    candidate = crystal_answer(("Blue", {"Blue": 0.6, "Red": 0.05, "Violet": 0.35}))
    compared = crystal.compare_answers(primary, candidate)
    assert (compared.items, compared.agreeing) == (1, 1)
    assert compared.largest_score_difference == pytest.approx(0.35, abs=1e-9)


@pytest.mark.parametrize(
    ("candidate", "problem"),
    [
        (crystal_answer(*CRYSTAL_ROWS[:2]), "primary answers 3 rows, the candidate 2"),
        ([crystal_answer(*CRYSTAL_ROWS)], "not an object"),
        ({"prediction": ["Blue", "Red", "Green"]}, "scores are not a list"),
        ({"scores": [row for _, row in CRYSTAL_ROWS]}, "prediction is not a list of labels"),
        ({**crystal_answer(*CRYSTAL_ROWS), "prediction": ["Blue", 1, "Green"]}, "not a list of labels"),
        ({**crystal_answer(*CRYSTAL_ROWS), "scores": [{"Blue": "0.8"}] * 3}, "objects of numbers"),
        ({**crystal_answer(*CRYSTAL_ROWS), "scores": [{"Blue": True}] * 3}, "objects of numbers"),
        ({**crystal_answer(*CRYSTAL_ROWS), "scores": [[0.8, 0.2]] * 3}, "objects of numbers"),
        ({**crystal_answer(*CRYSTAL_ROWS), "prediction": ["Blue"]}, "1 labels and 3 rows of scores"),
    ],
)
def test_crystal_answers_of_another_shape_are_not_compared(candidate: Any, problem: str) -> None:
    with pytest.raises(AnswersNotComparable, match=problem):
        crystal.compare_answers(crystal_answer(*CRYSTAL_ROWS), candidate)


# text classification: own shape (an entry, or a list) and Hugging Face's (a list per text)


def entry(label: str, score: float) -> dict[str, Any]:
    """One label and its score, as the text classifiers answer."""
    return {"label": label, "score": score}


POSITIVE, NEGATIVE = entry("POSITIVE", 0.9), entry("NEGATIVE", 0.1)


@pytest.mark.parametrize(
    ("primary", "candidate", "items", "agreeing"),
    [
        (POSITIVE, POSITIVE, 1, 1),
        (POSITIVE, entry("POSITIVE", 0.6), 1, 1),  # the label is the answer; scores are not compared
        (POSITIVE, NEGATIVE, 1, 0),
        ([POSITIVE, NEGATIVE, POSITIVE], [POSITIVE, NEGATIVE, POSITIVE], 3, 3),
        ([POSITIVE, NEGATIVE, POSITIVE], [POSITIVE, POSITIVE, POSITIVE], 3, 2),
        ([[POSITIVE, NEGATIVE]], [[POSITIVE, NEGATIVE]], 1, 1),  # one text, Hugging Face's shape
        ([[POSITIVE, NEGATIVE]], [[NEGATIVE, POSITIVE]], 1, 0),
        ([[POSITIVE, NEGATIVE], [NEGATIVE, POSITIVE]], [[POSITIVE], [POSITIVE, NEGATIVE]], 2, 1),
    ],
)
def test_text_classification_counts_texts_with_the_same_top_label(
    primary: Any, candidate: Any, items: int, agreeing: int
) -> None:
    assert text_classification.compare_answers(primary, candidate) == Comparison(items, agreeing)


@pytest.mark.parametrize(
    ("primary", "candidate", "problem"),
    [
        (POSITIVE, [POSITIVE], "in the one text shape, the candidate in the list shape"),
        ([POSITIVE], [[POSITIVE]], "in the list shape, the candidate in the Hugging Face shape"),
        ([POSITIVE, NEGATIVE], [POSITIVE], "primary answers 2 texts, the candidate 1"),
        ([[POSITIVE], [NEGATIVE]], [[POSITIVE]], "primary answers 2 texts, the candidate 1"),
        (POSITIVE, {"label": "POSITIVE"}, "no numeric score"),
        (POSITIVE, {"score": 0.9}, "not an object with a string label"),
        (POSITIVE, "POSITIVE", "neither an object nor a list"),
        ([[POSITIVE]], [[]], "labels are empty"),
        ([[POSITIVE]], [[POSITIVE, {"label": 1, "score": 0.1}]], "not an object with a string label"),
        ([POSITIVE, NEGATIVE], [POSITIVE, [NEGATIVE]], "not an object with a string label"),
    ],
)
def test_text_classification_answers_of_another_shape_are_not_compared(
    primary: Any, candidate: Any, problem: str
) -> None:
    with pytest.raises(AnswersNotComparable, match=problem):
        text_classification.compare_answers(primary, candidate)


# topics


def test_topics_compare_their_one_label() -> None:
    assert topics.compare_answers({"label": "hockey"}, {"label": "hockey"}) == Comparison(1, 1)
    assert topics.compare_answers({"label": "hockey"}, {"label": "baseball"}) == Comparison(1, 0)


@pytest.mark.parametrize("candidate", [[{"label": "hockey"}], {}, {"label": ["hockey"]}, "hockey"])
def test_topics_answers_of_another_shape_are_not_compared(candidate: Any) -> None:
    with pytest.raises(AnswersNotComparable, match="not an object with a string label"):
        topics.compare_answers({"label": "hockey"}, candidate)


# fill-mask: one mask's candidates, a list per mask, a list per text (the same in both API shapes)


def candidates(*tokens: str) -> list[dict[str, Any]]:
    """One mask's candidates, best first, as transformers' pipeline answers."""
    return [
        {"score": 0.5 / (rank + 1), "token": 100 + rank, "token_str": token, "sequence": f"a {token} model."}
        for rank, token in enumerate(tokens)
    ]


@pytest.mark.parametrize(
    ("answer", "masks"),
    [
        (candidates("fashion", "role", "new"), 1),
        ([candidates("fashion", "role"), candidates("new", "good")], 2),  # a text with two masks
        ([[candidates("a", "b"), candidates("c", "d")], candidates("e", "f")], 3),  # two texts, three masks
        ([[candidates("a"), candidates("b")], [candidates("c"), candidates("d")]], 4),
    ],
)
def test_identical_fill_mask_answers_agree_on_every_mask_with_full_overlap(answer: Any, masks: int) -> None:
    compared = fill_mask.compare_answers(answer, answer)
    assert (compared.items, compared.agreeing, compared.largest_score_difference) == (masks, masks, None)
    assert compared.top_k_overlap == pytest.approx(1.0, abs=1e-9)


def test_fill_mask_top_k_overlap_is_the_share_of_tokens_both_hold() -> None:
    compared = fill_mask.compare_answers(
        candidates("fashion", "role", "new", "good", "model"), candidates("fashion", "new", "x", "y", "z")
    )
    assert (compared.items, compared.agreeing) == (1, 1)
    assert compared.top_k_overlap == pytest.approx(2 / 5, abs=1e-9)


def test_fill_mask_averages_the_overlap_over_masks_and_counts_the_same_best_token() -> None:
    primary = [candidates("a", "b"), candidates("c", "d")]
    candidate = [candidates("a", "x"), candidates("d", "c")]  # overlaps 1/2 and 2/2
    compared = fill_mask.compare_answers(primary, candidate)
    assert (compared.items, compared.agreeing) == (2, 1)
    assert compared.top_k_overlap == pytest.approx(0.75, abs=1e-9)


def test_fill_mask_overlap_is_over_the_longer_list_and_full_when_both_are_empty() -> None:
    shorter = fill_mask.compare_answers(candidates("a", "b", "c"), candidates("a", "b"))
    assert shorter.top_k_overlap == pytest.approx(2 / 3, abs=1e-9)
    empty = fill_mask.compare_answers([], [])
    assert (empty.items, empty.agreeing) == (1, 1)
    assert empty.top_k_overlap == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize(
    ("primary", "candidate", "problem"),
    [
        (candidates("a"), [candidates("a"), candidates("b")], "primary answers 1 masks, the candidate 2"),
        ([candidates("a"), candidates("b")], [[candidates("a"), candidates("b")]], "group their masks"),
        (candidates("a"), [candidates("a")], "group their masks"),
        (candidates("a"), [{"score": 0.5, "token": 1, "sequence": "a."}], "no string token_str"),
        (candidates("a"), [{"token_str": "a", "score": "high"}], "no numeric score"),
        (candidates("a"), {"code": "model_failure", "message": "failed"}, "not a list"),
        ([candidates("a"), candidates("b")], [candidates("a"), "b"], "neither candidates nor lists"),
        ([candidates("a"), candidates("b")], [candidates("a"), [candidates("b"), 1]], "neither candidates"),
    ],
)
def test_fill_mask_answers_of_another_shape_are_not_compared(
    primary: Any, candidate: Any, problem: str
) -> None:
    with pytest.raises(AnswersNotComparable, match=problem):
        fill_mask.compare_answers(primary, candidate)


def test_a_refused_pair_says_what_differs_without_quoting_the_answers() -> None:
    secret = "my account number is 1234"
    pairs = [
        (crystal, crystal_answer((secret, {secret: 1.0})), crystal_answer((secret, {secret: "1"}))),
        (text_classification, entry(secret, 0.9), [entry(secret, 0.9)]),
        (topics, {"label": secret}, {"label": [secret]}),
        (fill_mask, candidates(secret), [candidates(secret), candidates(secret)]),
    ]
    for kind, primary, candidate in pairs:
        with pytest.raises(AnswersNotComparable) as refused:
            kind.compare_answers(primary, candidate)
        assert secret not in str(refused.value) and "1234" not in str(refused.value)

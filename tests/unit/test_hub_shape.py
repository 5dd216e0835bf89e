"""The Hugging Face Inference API's body shape on the text kinds, against transformers' pipelines.

`{"inputs": ..., "parameters": {...}}` is what `huggingface_hub.InferenceClient` sends; the
answers must be what that client parses. Scores are compared within float32 rounding.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from modelserver.errors import InvalidInput, ServingError
from modelserver.kinds.fill_mask.worker import FillMaskPredictor, load_fill_mask_predictor
from modelserver.kinds.text import TextModelSettings
from modelserver.kinds.text_classification.worker import (
    TextClassificationPredictor,
    load_text_classification_predictor,
)
from tests.helpers import answers_close, model_files

# Against a pipeline run apart: float32 rounding of another batch, within 1e-5 absolute (as the
# other pipeline-equality tests).
PIPELINE_ABS_TOL = 1e-5


def close(actual: Any, expected: Any) -> bool:
    """The same answer as the pipeline's, scores within PIPELINE_ABS_TOL."""
    return answers_close(actual, expected, abs_tol=PIPELINE_ABS_TOL)


# The shape logic is the same whatever runs the forward pass: PyTorch eager keeps this quick.
EAGER = {"runtime": "torch"}


@pytest.fixture(scope="module", name="fill_mask")
def fixture_fill_mask(tiny_hf_models: dict[str, Path]) -> FillMaskPredictor:
    """The tiny BERT."""
    folder = tiny_hf_models["fill_mask"]
    return load_fill_mask_predictor(
        model_files(TextModelSettings, folder.parent, settings=EAGER, names=("fill_mask",))
    )


@pytest.fixture(scope="module", name="sentiment")
def fixture_sentiment(tiny_hf_models: dict[str, Path]) -> TextClassificationPredictor:
    """The tiny DistilBERT classifier."""
    folder = tiny_hf_models["sentiment"]
    return load_text_classification_predictor(
        model_files(TextModelSettings, folder.parent, settings=EAGER, names=("sentiment",))
    )


def answer(predictor: Any, *bodies: Any) -> list[Any]:
    """Answers to several bodies predicted as one batch."""
    return predictor.predict([predictor.parse(body) for body in bodies])


def test_fill_mask_in_the_hub_shape_equals_the_pipeline(
    pipelines: dict[str, Any], fill_mask: FillMaskPredictor
) -> None:
    reference = pipelines["fill_mask"]
    text = "Hello I'm a [MASK] model."
    hub_one, hub_list, own = answer(
        fill_mask,
        {"inputs": text, "parameters": {"top_k": 2}},
        {"inputs": [text, "the [MASK] sat"], "parameters": {}, "options": {"wait_for_model": True}},
        {"text": text, "top_k": 2},
    )
    assert close(hub_one, reference(text, top_k=2))
    assert close(hub_list, [reference(text), reference("the [MASK] sat")])
    assert close(own, hub_one)


def test_fill_mask_targets_restrict_the_candidates_as_the_pipeline_does(
    pipelines: dict[str, Any], fill_mask: FillMaskPredictor
) -> None:
    reference = pipelines["fill_mask"]
    text = "Hello I'm a [MASK] model."
    vocabulary = list(fill_mask.tokenizer.get_vocab())
    targets = sorted(word for word in vocabulary if word.isalpha())[:3]
    [ours] = answer(fill_mask, {"inputs": text, "parameters": {"targets": targets, "top_k": 5}})
    expected = reference(text, targets=targets, top_k=5)
    assert len(ours) == len(targets) == len(expected)
    assert {candidate["token_str"] for candidate in ours} == {c["token_str"] for c in expected}
    assert close(sorted(ours, key=lambda c: c["token"]), sorted(expected, key=lambda c: c["token"]))


def test_sentiment_in_the_hub_shape_is_every_label_best_first(
    pipelines: dict[str, Any], sentiment: TextClassificationPredictor
) -> None:
    reference = pipelines["sentiment"]
    texts = ["I love this movie, it is great.", "terrible and boring"]
    one, listed, top1, raw, own = answer(
        sentiment,
        {"inputs": texts[0]},
        {"inputs": texts, "parameters": {}},
        {"inputs": texts[0], "parameters": {"top_k": 1}},
        {"inputs": texts[0], "parameters": {"function_to_apply": "none"}},
        {"text": texts[0]},
    )
    # One text: a list holding that text's labels (what InferenceClient reads with [0]).
    assert close(one, [reference(texts[0], top_k=None)])
    assert [label["score"] for label in one[0]] == sorted((label["score"] for label in one[0]), reverse=True)
    assert close(listed, [reference(text, top_k=None) for text in texts])
    assert close(top1, [[reference(texts[0])[0]]])
    assert close(raw, [reference(texts[0], top_k=None, function_to_apply="none")])
    # This server's own shape is unchanged, in the same batch.
    assert close(own, reference(texts[0])[0])


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"inputs": "a [MASK]", "parameters": {"temperature": 1}}, "parameters.temperature"),
        ({"inputs": "a [MASK]", "parameters": {"top_k": 0}}, "parameters.top_k"),
        ({"inputs": "a [MASK]", "parameters": {"targets": []}}, "parameters.targets"),
        ({"inputs": "a [MASK]", "parameters": {"targets": [" "]}}, "targets"),
        ({"inputs": ""}, "inputs"),
        ({"inputs": 3}, "inputs"),
        ({"inputs": []}, "inputs"),
        ({"inputs": "no mask here"}, "[MASK]"),
        ({"inputs": "a [MASK]", "stream": True}, "stream"),
        ({"inputs": "a [MASK]", "options": {"cache": True}}, "options.cache"),
        ({"inputs": "a [MASK]", "parameters": "top_k=2"}, "parameters"),
    ],
    ids=lambda value: json.dumps(value)[:40],
)
def test_bad_hub_bodies_are_422_naming_the_problem(
    fill_mask: FillMaskPredictor, body: Any, says: str
) -> None:
    with pytest.raises(InvalidInput) as refused:
        fill_mask.parse(body)
    assert refused.value.status == 422
    assert says in refused.value.message


def test_a_bad_hub_parameter_on_sentiment_is_422(sentiment: TextClassificationPredictor) -> None:
    for parameters in ({"function_to_apply": "tanh"}, {"top_k": -1}, {"targets": ["a"]}):
        with pytest.raises(InvalidInput, match="parameters"):
            sentiment.parse({"inputs": "fine", "parameters": parameters})


def test_a_hub_text_over_the_cap_fails_alone(sentiment: TextClassificationPredictor) -> None:
    too_long = "word " * (sentiment.max_text_chars // 5 + 1)
    refused, fine = answer(sentiment, {"inputs": too_long}, {"inputs": "fine"})
    assert isinstance(refused, ServingError) and refused.status == 422
    assert isinstance(fine, list) and isinstance(fine[0], list) and fine[0][0]["label"]


def test_targets_count_the_candidates_they_allow_and_are_bounded(fill_mask: FillMaskPredictor) -> None:
    word = next(w for w in fill_mask.tokenizer.get_vocab() if w.isalpha())
    many_masks = " ".join(["[MASK]"] * 41)
    # 41 masks x top_k 50 would be 2,050 candidates; with one target it is 41.
    request = fill_mask.parse({"inputs": many_masks, "parameters": {"top_k": 50, "targets": [word]}})
    assert request.target_ids is not None and len(request.target_ids) == 1 and request.per_mask == 1
    with pytest.raises(InvalidInput, match="candidates"):
        fill_mask.parse({"inputs": many_masks, "parameters": {"top_k": 50}})
    with pytest.raises(InvalidInput, match=r"parameters\.targets"):
        fill_mask.parse({"inputs": "a [MASK]", "parameters": {"targets": ["x" * 101]}})

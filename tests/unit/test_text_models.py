"""Fill-mask and text classification without TorchServe, against transformers' own pipelines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from transformers import pipeline

from modelserver.errors import BadRequest, ConfigError, InvalidInput, ServingError
from modelserver.kinds import ModelFiles
from modelserver.kinds.fill_mask import FillMaskRuntime, load_fill_mask_runtime
from modelserver.kinds.text_classification import TextClassificationRuntime, load_text_classification_runtime
from modelserver.runtimes.export import export
from modelserver.serving.batch import BatchAnswerer

SCORE_TOLERANCE = 1e-5


def same_answer(ours: Any, theirs: Any) -> None:
    """Equal structure, tokens and strings; scores within the tolerance."""
    if isinstance(theirs, list):
        assert isinstance(ours, list) and len(ours) == len(theirs)
        for mine, reference in zip(ours, theirs, strict=True):
            same_answer(mine, reference)
    elif isinstance(theirs, dict):
        assert set(ours) == set(theirs)
        for key, value in theirs.items():
            if key == "score":
                assert ours[key] == pytest.approx(value, abs=SCORE_TOLERANCE)
            else:
                assert ours[key] == value, key
    else:
        assert ours == theirs


# Every runtime answers as the pipeline does: the default (compiled) one and PyTorch eager.
RUNTIMES = [{}, {"runtime": "torch"}]


@pytest.fixture(scope="module", name="fill_mask", params=RUNTIMES, ids=["default", "torch"])
def fixture_fill_mask(tiny_hf_models: dict[str, Path], request: pytest.FixtureRequest) -> FillMaskRuntime:
    """The tiny BERT, as its archive would load it."""
    folder = tiny_hf_models["fill_mask"]
    names = ("fill_mask", "bert-base-uncased")
    return load_fill_mask_runtime(ModelFiles(folder.parent, settings=request.param, names=names))


@pytest.fixture(scope="module", name="camembert", params=RUNTIMES, ids=["default", "torch"])
def fixture_camembert(tiny_hf_models: dict[str, Path], request: pytest.FixtureRequest) -> FillMaskRuntime:
    """The tiny CamemBERT (`<mask>`, Unigram tokenizer)."""
    folder = tiny_hf_models["camembert"]
    names = ("camembert", "camembert-base")
    return load_fill_mask_runtime(ModelFiles(folder.parent, settings=request.param, names=names))


@pytest.fixture(scope="module", name="sentiment", params=RUNTIMES, ids=["default", "torch"])
def fixture_sentiment(
    tiny_hf_models: dict[str, Path], request: pytest.FixtureRequest
) -> TextClassificationRuntime:
    """The tiny DistilBERT classifier."""
    folder = tiny_hf_models["sentiment"]
    return load_text_classification_runtime(
        ModelFiles(folder.parent, settings=request.param, names=("sentiment",))
    )


def answer(runtime: Any, *bodies: dict[str, Any]) -> list[Any]:
    """Answers for several requests predicted as one batch (errors included)."""
    return runtime.predict([runtime.parse(body) for body in bodies])


BERT_TEXTS = [
    "Hello I'm a [MASK] model.",
    "The [MASK] sat on the [MASK].",
    "paris is the [MASK] of france",
    "[MASK]",
]


@pytest.mark.parametrize("top_k", [1, 5, 50])
def test_fill_mask_equals_the_pipeline(
    tiny_hf_models: dict[str, Path], fill_mask: FillMaskRuntime, top_k: int
) -> None:
    folder = str(tiny_hf_models["fill_mask"])
    reference = pipeline("fill-mask", model=folder, tokenizer=folder)
    # Every text is its own request, all in one padded batch.
    ours = answer(fill_mask, *({"text": text, "top_k": top_k} for text in BERT_TEXTS))
    for text, mine in zip(BERT_TEXTS, ours, strict=True):
        same_answer(mine, reference(text, top_k=top_k))
    # A list of texts in one request: a list of answers, in order.
    [listed] = answer(fill_mask, {"text": BERT_TEXTS, "top_k": top_k})
    same_answer(listed, [reference(text, top_k=top_k) for text in BERT_TEXTS])


def test_camembert_takes_mask_in_either_spelling(
    tiny_hf_models: dict[str, Path], camembert: FillMaskRuntime
) -> None:
    folder = str(tiny_hf_models["camembert"])
    reference = pipeline("fill-mask", model=folder, tokenizer=folder)
    texts = ["Le camembert est <mask>.", "Paris est la <mask> de la <mask>."]
    for text in texts:
        expected = reference(text)
        [native, public] = answer(camembert, {"text": text}, {"text": text.replace("<mask>", "[MASK]")})
        same_answer(native, expected)
        same_answer(public, expected)


def test_sentiment_equals_the_pipeline(
    tiny_hf_models: dict[str, Path], sentiment: TextClassificationRuntime
) -> None:
    folder = str(tiny_hf_models["sentiment"])
    reference = pipeline("text-classification", model=folder, tokenizer=folder)
    texts = ["I love this movie, it is great.", "terrible and boring", "What a wonderful day."]
    single, listed = answer(sentiment, {"text": texts[0]}, {"text": texts})
    same_answer(single, reference(texts[0])[0])
    same_answer(listed, [reference(text)[0] for text in texts])
    assert single["label"] in {"NEGATIVE", "POSITIVE"}


@pytest.mark.parametrize(
    "body",
    [
        {"text": "no mask here"},
        {"text": ""},
        {"text": 5},
        {"text": None},
        {"text": []},
        {"text": ["ok [MASK]", 3]},
        {"text": ["ok [MASK]", "no mask"]},
        {"text": "a [MASK]", "top_k": 0},
        {"text": "a [MASK]", "top_k": 51},
        {"text": "a [MASK]", "top_k": "5"},
        {"text": "a [MASK]", "top_k": True},
        {"text": "a [MASK]", "top_k": 2.5},
        {"text": "a [MASK]", "extra": 1},
        {"text": "a [MASK]", "stream": True},
        {"texts": "a [MASK]"},
        ["a [MASK]"],
    ],
    ids=lambda body: json.dumps(body)[:40],
)
def test_fill_mask_refuses_bad_requests_with_422(fill_mask: FillMaskRuntime, body: Any) -> None:
    with pytest.raises(InvalidInput):
        fill_mask.parse(body)


def test_model_name_and_task_must_fit(fill_mask: FillMaskRuntime) -> None:
    assert fill_mask.parse({"text": "a [MASK]", "model_name": "bert-base-uncased", "task": "fill-mask"})
    with pytest.raises(BadRequest, match="camembert"):
        fill_mask.parse({"text": "a [MASK]", "model_name": "camembert"})
    with pytest.raises(BadRequest, match="sentiment-analysis"):
        fill_mask.parse({"text": "a [MASK]", "task": "sentiment-analysis"})


def test_a_text_too_long_is_422_naming_the_limit_and_alone(fill_mask: FillMaskRuntime) -> None:
    long_text = "[MASK] " + "word " * 200
    good, too_long = answer(fill_mask, {"text": "a [MASK] day"}, {"text": ["fine [MASK]", long_text]})
    assert isinstance(good, list) and good[0]["token_str"]
    assert isinstance(too_long, ServingError) and too_long.status == 422
    assert f"at most {fill_mask.max_tokens}" in too_long.message


def test_sentiment_refuses_bad_requests(sentiment: TextClassificationRuntime) -> None:
    for body in ({"text": ""}, {"text": ["ok", ""]}, {"text": 1}, {"text": "ok", "top_k": 3}):
        with pytest.raises(InvalidInput):
            sentiment.parse(body)
    [too_long] = answer(sentiment, {"text": "word " * 200})
    assert isinstance(too_long, InvalidInput) and "at most" in too_long.message


def test_streaming_sends_each_chunk_as_ndjson_lines(fill_mask: FillMaskRuntime) -> None:
    texts = [f"text {i} is [MASK]" for i in range(9)] + ["[MASK] " + "word " * 200]
    sent: list[tuple[int, bytes]] = []
    answerer = BatchAnswerer(fill_mask, "fill_mask")
    body = json.dumps({"text": texts, "stream": True, "top_k": 2})
    outcomes = answerer.answer([b'{"text": "x [MASK]"}', body], emit=lambda i, chunk: sent.append((i, chunk)))
    assert outcomes[0].status == 200 and outcomes[0].content_type == "application/json"
    assert outcomes[1].content_type == "application/x-ndjson"
    assert {index for index, _ in sent} == {1} and len(sent) == 2  # 10 texts in chunks of 4
    lines = [json.loads(line) for _, chunk in sent for line in chunk.splitlines()]
    lines += [json.loads(line) for line in outcomes[1].body.splitlines()]
    assert [line["index"] for line in lines] == list(range(10))
    [alone] = answer(fill_mask, {"text": texts[:9], "top_k": 2})
    for line, expected in zip(lines[:9], alone, strict=True):
        same_answer(line["result"], expected)
    assert "at most" in lines[9]["error"] and "result" not in lines[9]


def test_a_list_of_one_text_gets_a_list_of_one_answer(fill_mask: FillMaskRuntime) -> None:
    """Deliberately unlike the pipeline (which unwraps a one-item list): list in, list out."""
    [listed] = answer(fill_mask, {"text": ["a [MASK] day"]})
    [single] = answer(fill_mask, {"text": "a [MASK] day"})
    assert listed == [single]


def test_request_budgets_are_422(tiny_hf_models: dict[str, Path]) -> None:
    folder = tiny_hf_models["fill_mask"]
    settings = {"max_candidates": 20, "max_request_tokens": 30}
    runtime = load_fill_mask_runtime(ModelFiles(folder.parent, settings=settings))
    with pytest.raises(InvalidInput, match="asks for 25 candidates; at most 20"):
        runtime.parse({"text": ["[MASK] [MASK]", "[MASK] and [MASK] and [MASK]"], "top_k": 5})
    [over, fine] = answer(
        runtime, {"text": ["the [MASK] sat on the mat today"] * 4}, {"text": "the [MASK] sat"}
    )
    assert isinstance(over, InvalidInput) and "at most 30 per request" in over.message
    assert isinstance(fine, list)


def test_long_and_short_texts_are_grouped_by_length(tiny_hf_models: dict[str, Path]) -> None:
    """A tight forward budget splits the batch into several passes; answers do not change."""
    folder = tiny_hf_models["fill_mask"]
    tight = load_fill_mask_runtime(ModelFiles(folder.parent, settings={"forward_tokens": 64}))
    loose = load_fill_mask_runtime(ModelFiles(folder.parent))
    texts = ["[MASK]", "the cat sat on the [MASK] " * 4, "paris [MASK]", "hello i'm a [MASK] model."]
    for mine, reference in zip(answer(tight, {"text": texts}), answer(loose, {"text": texts}), strict=True):
        same_answer(mine, reference)


@pytest.mark.parametrize(
    ("problem_type", "num_labels", "expected"),
    [
        ("regression", 1, "none"),
        (None, 1, "sigmoid"),
        ("multi_label_classification", 3, "sigmoid"),
        ("single_label_classification", 2, "softmax"),
        (None, 2, "softmax"),
    ],
)
def test_scores_follow_the_pipelines_function(
    problem_type: str | None, num_labels: int, expected: str
) -> None:
    from types import SimpleNamespace  # pylint: disable=import-outside-toplevel

    from modelserver.kinds.text_classification import score_function  # pylint: disable=import-outside-toplevel

    assert score_function(SimpleNamespace(problem_type=problem_type, num_labels=num_labels)) == expected


def test_a_classifier_without_a_padding_token_still_batches(
    tiny_hf_models: dict[str, Path], sentiment: TextClassificationRuntime
) -> None:
    folder = tiny_hf_models["sentiment"]
    runtime = load_text_classification_runtime(ModelFiles(folder.parent))
    runtime._tokenizer.pad_token = None  # pylint: disable=protected-access
    texts = ["I love this movie", "terrible and boring film"]
    same_answer(answer(runtime, {"text": texts})[0], answer(sentiment, {"text": texts})[0])


@pytest.fixture(scope="module", name="int8_fill_mask")
def fixture_int8_fill_mask(
    tiny_hf_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> FillMaskRuntime:
    """The tiny BERT quantised to int8 by OpenVINO's post-training quantisation at export."""
    archive = tmp_path_factory.mktemp("int8_bert")
    (archive / "model").symlink_to(tiny_hf_models["fill_mask"], target_is_directory=True)
    report = export("fill-mask", archive, {"quantize": "int8"})
    assert report.passed and report.quantize == "int8", report.problems
    return load_fill_mask_runtime(ModelFiles(archive, settings={"quantize": "int8"}))


def test_quantised_model_loads_and_answers(int8_fill_mask: FillMaskRuntime) -> None:
    [result] = answer(int8_fill_mask, {"text": "Hello I'm a [MASK] model.", "top_k": 3})
    assert len(result) == 3 and all(0 <= r["score"] <= 1 for r in result)


def test_int8_needs_the_compiled_runtime(tiny_hf_models: dict[str, Path]) -> None:
    folder = tiny_hf_models["fill_mask"]
    with pytest.raises(ConfigError, match="int8 needs runtime: openvino"):
        load_fill_mask_runtime(ModelFiles(folder.parent, settings={"quantize": "int8", "runtime": "torch"}))


def test_int8_keeps_the_top_candidate(int8_fill_mask: FillMaskRuntime, fill_mask: FillMaskRuntime) -> None:
    """Quantisation may move scores a little; on this model it must not change the top-1."""
    int8 = int8_fill_mask
    top = [{"text": text, "top_k": 1} for text in BERT_TEXTS[:1] + BERT_TEXTS[2:]]
    agree = [
        a[0]["token"] == b[0]["token"]
        for a, b in zip(answer(int8, *top), answer(fill_mask, *top), strict=True)
    ]
    assert all(agree)

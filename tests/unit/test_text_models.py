"""Fill-mask and text classification without TorchServe, against transformers' own pipelines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from transformers import pipeline

from handlers.model_handler import ModelHandler
from modelserver import payload
from modelserver.build.export import export
from modelserver.errors import BadRequest, ConfigError, InvalidInput, ServingError
from modelserver.kinds.fill_mask.worker import FillMaskPredictor, load_fill_mask_predictor
from modelserver.kinds.text import TextModelSettings
from modelserver.kinds.text_classification.worker import (
    TextClassificationPredictor,
    load_text_classification_predictor,
)
from modelserver.serving import torchserve_adapter
from modelserver.serving.batch import BatchAnswerer, Outcome
from modelserver.serving.torchserve_adapter import encode
from tests.helpers import FakeContext, model_files

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


# Every predictor answers as the pipeline does: the default (compiled) one and PyTorch eager.
BACKENDS = [{}, {"runtime": "torch"}]


@pytest.fixture(scope="module", name="fill_mask", params=BACKENDS, ids=["default", "torch"])
def fixture_fill_mask(tiny_hf_models: dict[str, Path], request: pytest.FixtureRequest) -> FillMaskPredictor:
    """The tiny BERT, as its archive would load it."""
    folder = tiny_hf_models["fill_mask"]
    names = ("fill_mask", "bert-base-uncased")
    return load_fill_mask_predictor(
        model_files(TextModelSettings, folder.parent, settings=request.param, names=names)
    )


@pytest.fixture(scope="module", name="camembert", params=BACKENDS, ids=["default", "torch"])
def fixture_camembert(tiny_hf_models: dict[str, Path], request: pytest.FixtureRequest) -> FillMaskPredictor:
    """The tiny CamemBERT (`<mask>`, Unigram tokenizer)."""
    folder = tiny_hf_models["camembert"]
    names = ("camembert", "camembert-base")
    return load_fill_mask_predictor(
        model_files(TextModelSettings, folder.parent, settings=request.param, names=names)
    )


@pytest.fixture(scope="module", name="sentiment", params=BACKENDS, ids=["default", "torch"])
def fixture_sentiment(
    tiny_hf_models: dict[str, Path], request: pytest.FixtureRequest
) -> TextClassificationPredictor:
    """The tiny DistilBERT classifier."""
    folder = tiny_hf_models["sentiment"]
    return load_text_classification_predictor(
        model_files(TextModelSettings, folder.parent, settings=request.param, names=("sentiment",))
    )


def answer(predictor: Any, *bodies: dict[str, Any]) -> list[Any]:
    """Answers for several requests predicted as one batch (errors included)."""
    return predictor.predict([predictor.parse(body) for body in bodies])


BERT_TEXTS = [
    "Hello I'm a [MASK] model.",
    "The [MASK] sat on the [MASK].",
    "paris is the [MASK] of france",
    "[MASK]",
]


@pytest.mark.parametrize("top_k", [1, 5, 50])
def test_fill_mask_equals_the_pipeline(
    tiny_hf_models: dict[str, Path], fill_mask: FillMaskPredictor, top_k: int
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
    tiny_hf_models: dict[str, Path], camembert: FillMaskPredictor
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
    tiny_hf_models: dict[str, Path], sentiment: TextClassificationPredictor
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
def test_fill_mask_refuses_bad_requests_with_422(fill_mask: FillMaskPredictor, body: Any) -> None:
    with pytest.raises(InvalidInput):
        fill_mask.parse(body)


def test_model_name_and_task_must_fit(fill_mask: FillMaskPredictor) -> None:
    assert fill_mask.parse({"text": "a [MASK]", "model_name": "bert-base-uncased", "task": "fill-mask"})
    with pytest.raises(BadRequest, match="camembert"):
        fill_mask.parse({"text": "a [MASK]", "model_name": "camembert"})
    with pytest.raises(BadRequest, match="sentiment-analysis"):
        fill_mask.parse({"text": "a [MASK]", "task": "sentiment-analysis"})


def test_a_text_too_long_is_422_naming_the_limit_and_alone(fill_mask: FillMaskPredictor) -> None:
    long_text = "[MASK] " + "word " * 200
    good, too_long = answer(fill_mask, {"text": "a [MASK] day"}, {"text": ["fine [MASK]", long_text]})
    assert isinstance(good, list) and good[0]["token_str"]
    assert isinstance(too_long, ServingError) and too_long.status == 422
    assert f"at most {fill_mask.max_tokens}" in too_long.message


def test_sentiment_refuses_bad_requests(sentiment: TextClassificationPredictor) -> None:
    for body in ({"text": ""}, {"text": ["ok", ""]}, {"text": 1}, {"text": "ok", "top_k": 3}):
        with pytest.raises(InvalidInput):
            sentiment.parse(body)
    [too_long] = answer(sentiment, {"text": "word " * 200})
    assert isinstance(too_long, InvalidInput) and "at most" in too_long.message


def test_streaming_sends_each_chunk_as_ndjson_lines(fill_mask: FillMaskPredictor) -> None:
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


def test_a_list_of_one_text_gets_a_list_of_one_answer(fill_mask: FillMaskPredictor) -> None:
    """Deliberately unlike the pipeline (which unwraps a one-item list): list in, list out."""
    [listed] = answer(fill_mask, {"text": ["a [MASK] day"]})
    [single] = answer(fill_mask, {"text": "a [MASK] day"})
    assert listed == [single]


def test_request_budgets_are_422(tiny_hf_models: dict[str, Path]) -> None:
    folder = tiny_hf_models["fill_mask"]
    settings = {"max_candidates": 20, "max_request_tokens": 30}
    predictor = load_fill_mask_predictor(model_files(TextModelSettings, folder.parent, settings=settings))
    with pytest.raises(InvalidInput, match="asks for 25 candidates; at most 20"):
        predictor.parse({"text": ["[MASK] [MASK]", "[MASK] and [MASK] and [MASK]"], "top_k": 5})
    [over, fine] = answer(
        predictor, {"text": ["the [MASK] sat on the mat today"] * 4}, {"text": "the [MASK] sat"}
    )
    assert isinstance(over, InvalidInput) and "at most 30 per request" in over.message
    assert isinstance(fine, list)


def test_long_and_short_texts_are_grouped_by_length(tiny_hf_models: dict[str, Path]) -> None:
    """A tight forward budget splits the batch into several passes; answers do not change."""
    folder = tiny_hf_models["fill_mask"]
    tight = load_fill_mask_predictor(
        model_files(TextModelSettings, folder.parent, settings={"forward_tokens": 64})
    )
    loose = load_fill_mask_predictor(model_files(TextModelSettings, folder.parent))
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

    from modelserver.kinds.text_classification.worker import (  # pylint: disable=import-outside-toplevel
        score_function,
    )

    assert score_function(SimpleNamespace(problem_type=problem_type, num_labels=num_labels)) == expected


def test_a_classifier_without_a_padding_token_still_batches(
    tiny_hf_models: dict[str, Path], sentiment: TextClassificationPredictor
) -> None:
    folder = tiny_hf_models["sentiment"]
    predictor = load_text_classification_predictor(model_files(TextModelSettings, folder.parent))
    predictor._tokenizer.pad_token = None  # pylint: disable=protected-access
    texts = ["I love this movie", "terrible and boring film"]
    same_answer(answer(predictor, {"text": texts})[0], answer(sentiment, {"text": texts})[0])


@pytest.fixture(scope="module", name="int8_fill_mask")
def fixture_int8_fill_mask(
    tiny_hf_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> FillMaskPredictor:
    """The tiny BERT quantised to int8 by OpenVINO's post-training quantisation at export."""
    archive = tmp_path_factory.mktemp("int8_bert")
    (archive / "model").symlink_to(tiny_hf_models["fill_mask"], target_is_directory=True)
    report = export("fill_mask", archive, TextModelSettings(quantize="int8"))
    assert report.passed and report.quantize == "int8", report.problems
    return load_fill_mask_predictor(model_files(TextModelSettings, archive, settings={"quantize": "int8"}))


def test_quantised_model_loads_and_answers(int8_fill_mask: FillMaskPredictor) -> None:
    [result] = answer(int8_fill_mask, {"text": "Hello I'm a [MASK] model.", "top_k": 3})
    assert len(result) == 3 and all(0 <= r["score"] <= 1 for r in result)


def test_int8_needs_the_compiled_backend(tiny_hf_models: dict[str, Path]) -> None:
    folder = tiny_hf_models["fill_mask"]
    with pytest.raises(ConfigError, match="int8 needs runtime: openvino"):
        load_fill_mask_predictor(
            model_files(TextModelSettings, folder.parent, settings={"quantize": "int8", "runtime": "torch"})
        )


def test_int8_keeps_the_top_candidate(
    int8_fill_mask: FillMaskPredictor, fill_mask: FillMaskPredictor
) -> None:
    """Quantisation may move scores a little; on this model it must not change the top-1."""
    int8 = int8_fill_mask
    top = [{"text": text, "top_k": 1} for text in BERT_TEXTS[:1] + BERT_TEXTS[2:]]
    agree = [
        a[0]["token"] == b[0]["token"]
        for a, b in zip(answer(int8, *top), answer(fill_mask, *top), strict=True)
    ]
    assert all(agree)


# ---------------------------------------------------------------------------------------------
# Cost caps: characters before the tokenizer, bytes of an answer before and after encoding.


class RecordingTokenizer:
    """A tokenizer that records every text it is asked to encode, and is otherwise the real one."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.seen: list[str] = []

    def __call__(self, texts: list[str], *args: Any, **kwargs: Any) -> Any:
        self.seen.extend(texts)
        return self.tokenizer(texts, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tokenizer, name)


def bert_with(tiny_hf_models: dict[str, Path], **settings: Any) -> FillMaskPredictor:
    """The tiny BERT with these handler settings."""
    return load_fill_mask_predictor(
        model_files(TextModelSettings, tiny_hf_models["fill_mask"].parent, settings=settings)
    )


def test_character_caps_default_to_the_token_budgets(fill_mask: FillMaskPredictor) -> None:
    assert fill_mask.max_text_chars == 32 * fill_mask.max_tokens == 2048
    assert fill_mask.max_request_chars == 8 * 2048
    assert fill_mask.max_answer_bytes == 8 * 2**20


def test_a_text_over_the_character_cap_never_reaches_the_tokenizer_and_fails_alone(
    tiny_hf_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    predictor = bert_with(tiny_hf_models, max_text_chars=40)
    alone = answer(predictor, {"text": "a [MASK] day"}, {"text": "paris is the [MASK]"})
    recorder = RecordingTokenizer(predictor.tokenizer)
    monkeypatch.setattr(predictor, "_tokenizer", recorder)
    long_text = "the [MASK] " + "x" * 30  # 41 characters, only 3 tokens: the tokens alone would pass
    good, too_long, other = answer(
        predictor,
        {"text": "a [MASK] day"},
        {"text": ["fine [MASK]", long_text]},
        {"text": "paris is the [MASK]"},
    )
    assert isinstance(too_long, InvalidInput) and too_long.status == 422
    assert too_long.message == "a text is 41 characters long; at most 40 per text"
    assert recorder.seen == ["a [MASK] day", "paris is the [MASK]"]  # nothing of the refused request
    same_answer(good, alone[0])
    same_answer(other, alone[1])


def test_a_request_over_its_character_cap_is_refused_before_tokenization(
    tiny_hf_models: dict[str, Path], sentiment: TextClassificationPredictor, monkeypatch: pytest.MonkeyPatch
) -> None:
    predictor = load_text_classification_predictor(
        model_files(TextModelSettings, tiny_hf_models["sentiment"].parent, settings={"max_request_chars": 30})
    )
    recorder = RecordingTokenizer(predictor.tokenizer)
    monkeypatch.setattr(predictor, "_tokenizer", recorder)
    at_cap = ["a" * 10, "b" * 20]
    over, fine = answer(predictor, {"text": ["I love it", "x" * 22]}, {"text": at_cap})
    assert isinstance(over, InvalidInput)
    assert over.message == "the texts hold 31 characters in all; at most 30 per request"
    assert recorder.seen == at_cap
    same_answer(fine, answer(sentiment, {"text": at_cap})[0])


def test_a_streamed_text_over_the_character_cap_gets_its_own_error_line(
    tiny_hf_models: dict[str, Path],
) -> None:
    predictor = bert_with(tiny_hf_models, max_text_chars=40)
    texts = ["a [MASK] day", "[MASK] " + "y" * 40, "paris is the [MASK]"]
    sent: list[bytes] = []
    [outcome] = BatchAnswerer(predictor).answer(
        [json.dumps({"text": texts, "stream": True, "top_k": 2})], emit=lambda _, chunk: sent.append(chunk)
    )
    assert outcome.status == 200 and not sent  # three texts: one chunk
    lines = [json.loads(line) for line in outcome.body.splitlines()]
    assert [line["index"] for line in lines] == [0, 1, 2]
    assert lines[1] == {
        "index": 1,
        "error": "a text is 47 characters long; at most 40 per text",
        "type": "invalid_input",
        "code": 422,
    }
    [expected] = answer(predictor, {"text": [texts[0], texts[2]], "top_k": 2})
    same_answer([lines[0]["result"], lines[2]["result"]], expected)


def answer_bound(predictor: FillMaskPredictor, texts: list[str], top_k: int) -> int:
    """The predictor's own bound on a request's answer, summed over its texts."""
    encoded = predictor.tokenizer(texts)["input_ids"]
    return sum(predictor.answer_bound(ids, top_k) for ids in encoded)


def test_the_answer_size_cap_refuses_what_could_exceed_it_and_accepts_just_under(
    tiny_hf_models: dict[str, Path], fill_mask: FillMaskPredictor
) -> None:
    texts = ["the [MASK] sat on the [MASK] today.", "hello i'm a [MASK] model."]
    bound = answer_bound(fill_mask, texts, 10)
    body = {"text": texts, "top_k": 10}
    [expected] = answer(fill_mask, body)
    encoded_size = len(json.dumps(expected, separators=(",", ":")))
    assert bound >= encoded_size  # a true upper bound
    assert bound - encoded_size < bound / 2  # and not a wild one
    [accepted] = answer(bert_with(tiny_hf_models, max_answer_bytes=bound), body)
    same_answer(accepted, expected)
    tight = bert_with(tiny_hf_models, max_answer_bytes=bound - 1)
    refused, neighbour = answer(tight, body, {"text": "a [MASK] day", "top_k": 2})
    assert isinstance(refused, InvalidInput) and refused.status == 422
    assert refused.message == (
        f"the answer could be {bound} bytes long; at most {bound - 1} bytes per answer: "
        "ask for a smaller top_k, or fewer masks or texts"
    )
    same_answer(neighbour, answer(fill_mask, {"text": "a [MASK] day", "top_k": 2})[0])


def test_a_stream_keeps_each_chunk_under_the_answer_cap(tiny_hf_models: dict[str, Path]) -> None:
    """The cap holds per response: a stream's answer may be larger in all, each chunk never."""
    texts = [f"the number {i} sat on the [MASK]." for i in range(8)]
    top_k = 20
    plain = bert_with(tiny_hf_models)
    chunk_bound = max(answer_bound(plain, texts[i : i + 4], top_k) for i in (0, 4))
    assert answer_bound(plain, texts, top_k) > chunk_bound
    predictor = bert_with(tiny_hf_models, max_answer_bytes=chunk_bound)
    [whole] = answer(predictor, {"text": texts, "top_k": top_k})
    assert isinstance(whole, InvalidInput)  # not streamed: one response over the cap
    sent: list[bytes] = []
    [outcome] = BatchAnswerer(predictor).answer(
        [json.dumps({"text": texts, "stream": True, "top_k": top_k})],
        emit=lambda _, chunk: sent.append(chunk),
    )
    chunks = [*sent, outcome.body]
    assert len(chunks) == 2 and all(len(chunk) <= chunk_bound for chunk in chunks)
    lines = [json.loads(line) for chunk in chunks for line in chunk.splitlines()]
    assert [line["index"] for line in lines] == list(range(8))
    [expected] = answer(plain, {"text": texts, "top_k": top_k})
    same_answer([line["result"] for line in lines], expected)


def test_an_encoded_answer_over_the_cap_becomes_a_json_error() -> None:
    big = [{"token_str": "x" * 100}] * 20
    size = len(json.dumps(big, separators=(",", ":")))
    fits = encode(Outcome(200, big), limit=size)
    assert fits.status == 200 and json.loads(fits.body) == big
    over = encode(Outcome(200, big), limit=size - 1)
    assert over.status == 422 and over.content_type == "application/json"
    assert json.loads(over.body) == {
        "error": f"the answer is {size} bytes long; at most {size - 1} bytes per answer: "
        "ask for less per request",
        "type": "invalid_input",
        "code": 422,
    }
    chunk = b'{"index":0,"result":1}\n' * 100
    streamed = encode(Outcome(200, chunk, "application/x-ndjson"), limit=len(chunk) - 1)
    assert streamed.status == 422 and json.loads(streamed.body)["code"] == 422
    sent: list[tuple[int, bytes]] = []
    emit = torchserve_adapter.capped_emitter(lambda i, c: sent.append((i, c)), limit=len(chunk))
    emit(3, chunk)
    emit(3, chunk + b"\n")
    assert sent[0] == (3, chunk)
    assert sent[1][1].endswith(b"\n") and json.loads(sent[1][1]) == {
        "error": f"the answer is {len(chunk) + 1} bytes long; at most {len(chunk)} bytes per answer: "
        "ask for less per request",
        "type": "invalid_input",
        "code": 422,
    }


def test_the_handler_turns_an_answer_over_the_cap_into_that_requests_422(
    tiny_hf_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even when the estimate misses, no answer over the cap reaches TorchServe."""
    context = FakeContext(tiny_hf_models["fill_mask"].parent, "fill_mask", {"max_answer_bytes": 2048})
    handler = ModelHandler()
    handler.initialize(context)
    monkeypatch.setattr(FillMaskPredictor, "answer_bound", lambda *_: 0)  # an estimate that misses
    small, big = handler.handle(
        [
            {"body": b'{"text": "a [MASK] day", "top_k": 1}'},
            {"body": b'{"text": "a [MASK] day", "top_k": 50}'},
        ],
        context,
    )
    assert context.status_of(0) == 200 and json.loads(small)[0]["token_str"]
    assert context.status_of(1) == 422 and context.content_types[1] == "application/json"
    error = json.loads(big)
    assert error["code"] == 422 and "at most 2048 bytes per answer" in error["error"]


def test_the_answer_cap_is_well_below_torchserves_response_limit() -> None:
    properties = (Path(__file__).parents[2] / "config.properties").read_text().splitlines()
    [limit] = [int(line.split("=", 1)[1]) for line in properties if line.startswith("max_response_size=")]
    headroom = 2**20  # TorchServe's frame around a body, and what the answer estimate does not model
    for cap in (TextModelSettings().max_answer_bytes, payload.MAX_ANSWER_BYTES):
        assert cap <= limit - headroom
    with pytest.raises(ValueError, match="max_answer_bytes"):
        TextModelSettings(max_answer_bytes=10)

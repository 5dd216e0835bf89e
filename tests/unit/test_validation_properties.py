"""Generated bad input: every model kind's request validation, property-based.

For arbitrary bytes and arbitrary JSON-ish values, each kind (crystal scikit-learn and PyTorch,
fill-mask on BERT and CamemBERT, sentiment, topics) either accepts a request, and the parsed
request is well formed, or refuses it with the project's own error: a 4xx status (422; 400 for
a model choice that is not this model; /prediction's 405), a non-empty sentence that never
repeats the user's data, and never another exception. Valid generated requests are always
accepted and answered in the documented shape, and a TorchServe batch mixing arbitrary bad
bodies with a good one answers each request on its own.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from handlers.model_handler import ModelHandler
from load_tests.kit.routes import BRIEF_ROWS
from load_tests.kit.topics_corpus import TOPIC_WORDS, write_corpus
from modelserver.catalogue import Catalogue
from modelserver.errors import InvalidInput, ServingError, error_response
from modelserver.kinds.crystal import CrystalRequest
from modelserver.kinds.crystal.torch_classifier import CrystalNet
from modelserver.kinds.fill_mask import FillMaskRequest
from modelserver.kinds.registry import KINDS as REGISTRY
from modelserver.kinds.text import PUBLIC_MASK, TextRequest
from modelserver.kinds.topics import TopicsRequest
from modelserver.payload import decode_json_body
from modelserver.serving.batch import BatchAnswerer, Outcome
from modelserver.serving.headers import HANDLER_ANSWER
from modelserver.training import run_recipe, topics
from tests.conftest import LABELS_FILE
from tests.helpers import FakeContext, model_files

# Sized for 2 cores: the whole file runs in well under a minute. No example database: the
# tests must not write a .hypothesis/ folder into the working tree.
FAST = settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SLOW = settings(FAST, max_examples=30)  # properties that run a model on every example

CRYSTAL_LABELS = ["blue", "green", "yellow"]
SENTIMENT_LABELS = {"NEGATIVE", "POSITIVE"}
# A mark no error message may repeat: it only ever appears inside the user's data.
SECRET = "zqxjsecret"


@dataclasses.dataclass(frozen=True)
class Kind:
    """One served model kind: its body field, how it refuses, and a body it must answer."""

    name: str
    field: str
    refusals: frozenset[int]  # statuses a refused request may get
    good: Mapping[str, Any]
    mask: str = ""  # fill-mask: the model's own mask token, besides [MASK]


CRYSTAL = frozenset({400, 422})  # 400: a `model`/`model_name` that is not this model
TEXT = frozenset({400, 422})  # 400: a `model_name`/`task` that is not this model's
KINDS = {
    kind.name: kind
    for kind in [
        Kind("crystal_sklearn", "crystalData", CRYSTAL, {"crystalData": BRIEF_ROWS}),
        Kind("crystal_pytorch", "crystalData", CRYSTAL, {"crystalData": BRIEF_ROWS}),
        Kind("fill_mask", "text", TEXT, {"text": "Hello I'm a [MASK] model.", "top_k": 3}, "[MASK]"),
        Kind("camembert", "text", TEXT, {"text": "Le camembert est <mask>.", "top_k": 3}, "<mask>"),
        Kind("sentiment", "text", TEXT, {"text": ["I love this movie", "terrible and boring"]}),
        # /prediction's spec documents 405 "Validation exception" for every invalid input.
        Kind("topics", "text", frozenset({405}), {"text": "The goalie stopped the puck"}),
    ]
}
ALL_KINDS = sorted(KINDS)
CRYSTAL_KINDS = ["crystal_pytorch", "crystal_sklearn"]
FILL_MASK_KINDS = ["camembert", "fill_mask"]


# ---------------------------------------------------------------------------------------------
# The models: the project's own loaders on small real model files, built once per module.


@pytest.fixture(scope="module", name="crystal_dir")
def fixture_crystal_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An unpacked-archive-like folder with both crystal models and the labels file. The
    scikit-learn model is the project's recipe; the PyTorch one is the brief's MLP with seeded
    random weights (validation does not depend on the weights, and the recipe trains for ~20 s)."""
    folder = tmp_path_factory.mktemp("crystal_models")
    run_recipe("crystal_sklearn_iris", folder / "sklearn.model")
    torch.manual_seed(0)
    torch.save(CrystalNet().state_dict(), folder / "pytorch.model")
    shutil.copy(LABELS_FILE, folder / "crystal_labels.json")
    return folder


@pytest.fixture(scope="module", name="topics_model")
def fixture_topics_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The topics recipe's output on the small test corpus."""
    folder = tmp_path_factory.mktemp("topics_property")
    train, test = write_corpus(folder / "data")
    output = folder / "model" / "topics.model"
    output.parent.mkdir()
    topics.train(output, {"train": train, "test": test})
    return output


def contexts(
    crystal_dir: Path, topics_model: Path, tiny_hf_models: dict[str, Path]
) -> dict[str, FakeContext]:
    """The TorchServe context each kind's archive would give its handler."""
    kind_of = {name: entry.kind for name, entry in Catalogue.load().models.items()}
    found = {}
    for framework in ("sklearn", "pytorch"):
        found[f"crystal_{framework}"] = FakeContext(
            crystal_dir,
            kind_of[f"crystal_{framework}"],
            {"framework": framework, "labels_file": "crystal_labels.json"},
            serialized_file=f"{framework}.model",
            model_name=f"crystal_{framework}",
        )
    for name in ("fill_mask", "camembert", "sentiment"):
        # One streamed chunk per request at most: the fake context cannot send intermediate ones.
        found[name] = FakeContext(
            tiny_hf_models[name].parent, kind_of[name], {"stream_chunk": 64}, model_name=name
        )
    found["topics"] = FakeContext(
        topics_model.parent, kind_of["topics"], {}, serialized_file=topics_model.name, model_name="topics"
    )
    return found


@pytest.fixture(scope="module", name="fake_contexts")
def fixture_fake_contexts(
    crystal_dir: Path, topics_model: Path, tiny_hf_models: dict[str, Path]
) -> dict[str, FakeContext]:
    """Every kind's fake TorchServe context."""
    return contexts(crystal_dir, topics_model, tiny_hf_models)


@pytest.fixture(scope="module", name="predictors")
def fixture_predictors(fake_contexts: dict[str, FakeContext]) -> dict[str, Any]:
    """Every kind's predictor, loaded as its handler loads it (same files, settings and names)."""
    return {
        name: REGISTRY[context.kind].load(
            model_files(
                REGISTRY[context.kind].settings,
                context.model_dir,
                context.handler_config,
                context.serialized_file,
                (name,),
            )
        )
        for name, context in fake_contexts.items()
    }


@pytest.fixture(scope="module", name="handlers")
def fixture_handlers(fake_contexts: dict[str, FakeContext]) -> dict[str, ModelHandler]:
    """Every kind's TorchServe handler (the one every archive has), initialised with its fake context."""
    found = {}
    for name, context in fake_contexts.items():
        handler = ModelHandler()
        handler.initialize(context)
        found[name] = handler
    return found


# ---------------------------------------------------------------------------------------------
# Generating bodies. JSON is written by `dump`, which can also write what Python's json cannot
# (1e400, a 5,000-digit integer, a lone surrogate escape) through `Raw`.


class Raw(str):
    """A piece of JSON text written as it is."""


def dump(value: Any) -> str:
    """JSON text for a generated value; `Raw` parts are copied verbatim, NaN stays NaN."""
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, dict):
        return (
            "{" + ", ".join(f"{json.dumps(k, ensure_ascii=False)}: {dump(v)}" for k, v in value.items()) + "}"
        )
    if isinstance(value, list):
        return "[" + ", ".join(dump(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def plain(value: Any) -> bool:
    """Whether a generated value holds no `Raw` part."""
    if isinstance(value, Raw):
        return False
    if isinstance(value, dict):
        return all(plain(v) for v in value.values())
    if isinstance(value, list):
        return all(plain(v) for v in value)
    return True


def encode(value: Any) -> bytes:
    """The body bytes a client would send for a generated value."""
    return dump(value).encode("utf-8")


# Numbers that are never valid data: not finite, past float range, or past the digit limit.
POISON_NUMBERS = st.sampled_from(
    [
        "NaN",
        "Infinity",
        "-Infinity",
        "1e400",
        "-1e400",
        "1e99999",
        "1" + "0" * 400,  # 10**400 as an integer literal
        "-" + "1" + "0" * 400,
        "9" * 5000,  # past Python's 4,300-digit integer parsing limit
    ]
).map(Raw)
# Strings that are not valid text once decoded: lone UTF-16 surrogates.
POISON_STRINGS = st.sampled_from(['"\\ud800"', '"a \\udfff [MASK]"', '"\\udc00\\ud800"']).map(Raw)
# Finite numbers of the magnitudes a measurement has (larger ones: see the overflow test below).
SANE_NUMBERS = st.one_of(
    st.integers(-(10**6), 10**6), st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)
)
LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    SANE_NUMBERS,
    st.text(max_size=12),
    POISON_NUMBERS,
    POISON_STRINGS,
)
JSON_VALUES = st.recursive(
    LEAVES,
    lambda children: st.one_of(
        st.lists(children, max_size=5), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
ROW_OF_FOUR = st.lists(SANE_NUMBERS, min_size=4, max_size=4)
ROWS = st.lists(
    st.one_of(ROW_OF_FOUR, ROW_OF_FOUR, st.lists(st.one_of(SANE_NUMBERS, LEAVES), max_size=6)), max_size=4
)
TEXTS = st.one_of(
    st.text(max_size=30),
    st.text(max_size=20).map(lambda text: f"{text} [MASK] {text}"),
    st.sampled_from(["", " ", "<mask>", "[mask]", "[MASK]", "[MASK] " * 30]),
)


def field_values(kind: Kind) -> dict[str, st.SearchStrategy[Any]]:
    """Near-valid values for each field a kind knows (and then some)."""
    if kind.field == "crystalData":
        return {
            "crystalData": st.one_of(ROWS, JSON_VALUES),
            "model": st.one_of(st.sampled_from(["sklearn", "pytorch", "SKLEARN", ""]), JSON_VALUES),
            "model_name": st.one_of(st.sampled_from([kind.name, "crystal_other"]), JSON_VALUES),
        }
    fields: dict[str, st.SearchStrategy[Any]] = {
        "text": st.one_of(TEXTS, st.lists(st.one_of(TEXTS, LEAVES), max_size=5), JSON_VALUES)
    }
    if kind.name != "topics":
        fields.update(
            top_k=st.one_of(st.integers(-3, 60), JSON_VALUES),
            model_name=st.one_of(st.sampled_from([kind.name, "gpt-17"]), JSON_VALUES),
            task=st.one_of(st.sampled_from(["fill-mask", "sentiment-analysis", "x"]), JSON_VALUES),
            stream=st.one_of(st.booleans(), JSON_VALUES),
        )
    return fields


def shaped(kind: Kind) -> st.SearchStrategy[dict[str, Any]]:
    """Objects built from the kind's own fields (any subset), plus unknown ones."""
    fields = field_values(kind)
    main = {kind.field: fields.pop(kind.field)}
    known = st.one_of(
        st.fixed_dictionaries(main, optional=fields),  # mostly with the data field
        st.fixed_dictionaries(main, optional=fields),
        st.fixed_dictionaries({}, optional={**main, **fields}),
    )
    extra = st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=2)
    return st.one_of(known, st.builds(lambda a, b: {**b, **a}, known, extra))


@st.composite
def damaged(draw: st.DrawFn, source: st.SearchStrategy[bytes]) -> bytes:
    """A body cut short, or with a few arbitrary bytes put in."""
    body = draw(source)
    cut = draw(st.integers(0, len(body)))
    if draw(st.booleans()):
        return body[:cut]
    return body[:cut] + draw(st.binary(min_size=1, max_size=3)) + body[cut:]


def bodies(kind: Kind) -> st.SearchStrategy[bytes]:
    """Arbitrary bodies for one kind: bytes, any JSON, objects of its fields, damaged ones."""
    objects = shaped(kind).map(encode)
    return st.one_of(
        st.binary(max_size=200),
        JSON_VALUES.map(encode),
        damaged(objects),
        *[objects] * 4,  # weighted: these reach the deepest validation
    )


# ---------------------------------------------------------------------------------------------
# What a well-formed request, a refusal and an answer look like.


def check_refusal(kind: Kind, error: ServingError) -> None:
    """The project's error, with one of the kind's 4xx statuses and a sentence to act on."""
    assert error.status in kind.refusals, (type(error).__name__, error.status, error.message)
    assert isinstance(error.message, str) and error.message.strip()
    status, body = error_response(error)
    assert status == error.status and body["code"] == status and body["error"] == error.message
    assert body["type"] == error.type
    json.dumps(body, allow_nan=False)


def check_request(kind: Kind, predictor: Any, request: Any) -> None:
    """A request that passed validation is fit for the model: shapes, finite numbers, counts."""
    if kind.field == "crystalData":
        assert isinstance(request, CrystalRequest)
        assert 1 <= len(request.crystalData) <= 10_000
        for row in request.crystalData:
            assert len(row) == 4
            assert all(isinstance(value, float) and math.isfinite(value) for value in row)
        return
    if kind.name == "topics":
        assert isinstance(request, TopicsRequest)
        # The spec's ApiRequest requires no text and sets no minimum: "" is an empty document.
        assert isinstance(request.text, str) and len(request.text) <= 200_000
        return
    assert isinstance(request, TextRequest)
    texts = request.texts
    assert 1 <= len(texts) <= 64
    assert all(isinstance(text, str) and text for text in texts)
    assert not request.stream or isinstance(request.text, list)
    assert request.model_name in (None, kind.name) and request.task in (None, *predictor.tasks)
    if isinstance(request, FillMaskRequest):
        assert 1 <= request.top_k <= 50
        assert all(mask_count(kind, text) for text in texts)


def mask_count(kind: Kind, text: str) -> int:
    """How many masks a fill-mask text holds, in either spelling."""
    return text.count(PUBLIC_MASK) + (text.count(kind.mask) if kind.mask != PUBLIC_MASK else 0)


def check_text_answer(kind: Kind, text: str, answer: Any, top_k: int) -> None:
    """One text's answer: the pipeline's shape for this kind."""
    if kind.name == "sentiment":
        assert set(answer) == {"label", "score"} and answer["label"] in SENTIMENT_LABELS
        assert 0.0 <= answer["score"] <= 1.0
        return
    masks = mask_count(kind, text)
    per_mask = [answer] if masks == 1 else answer
    assert isinstance(per_mask, list) and len(per_mask) == masks, (text, answer)
    for candidates in per_mask:
        assert len(candidates) == top_k
        for candidate in candidates:
            assert set(candidate) == {"score", "token", "token_str", "sequence"}
            assert 0.0 <= candidate["score"] <= 1.0 and isinstance(candidate["sequence"], str)


def check_answer(kind: Kind, request: Any, answer: Any) -> None:
    """A 200 answer to a parsed request: the documented shape, one item per input item."""
    if kind.field == "crystalData":
        rows = len(request.crystalData)
        assert set(answer) == {"prediction", "scores"}
        assert len(answer["prediction"]) == len(answer["scores"]) == rows
        for label, scores in zip(answer["prediction"], answer["scores"], strict=True):
            assert list(scores) == CRYSTAL_LABELS and label in CRYSTAL_LABELS
            assert all(math.isfinite(score) for score in scores.values())
            assert sum(scores.values()) == pytest.approx(1.0, abs=1e-5)
        return
    if kind.name == "topics":
        assert set(answer) == {"label"} and answer["label"] in TOPIC_WORDS
        return
    top_k = getattr(request, "top_k", 0)
    if isinstance(request.text, str):
        check_text_answer(kind, request.text, answer, top_k)
        return
    assert isinstance(answer, list) and len(answer) == len(request.text)
    for text, one in zip(request.text, answer, strict=True):
        check_text_answer(kind, text, one, top_k)


def assert_close(ours: Any, theirs: Any) -> None:
    """Equal JSON values, floats within what batching (padding, one matmul) may move."""
    if isinstance(theirs, float):
        assert ours == pytest.approx(theirs, abs=1e-5)
    elif isinstance(theirs, list):
        assert isinstance(ours, list) and len(ours) == len(theirs)
        for mine, reference in zip(ours, theirs, strict=True):
            assert_close(mine, reference)
    elif isinstance(theirs, dict):
        assert isinstance(ours, dict) and list(ours) == list(theirs)
        for key, value in theirs.items():
            assert_close(ours[key], value)
    else:
        assert ours == theirs


def parse_or_refuse(kind: Kind, predictor: Any, raw: bytes) -> Any:
    """Decode and validate one body: the parsed request, or None after checking the refusal.
    Any other exception escapes and fails the test."""
    try:
        payload = decode_json_body(raw)
    except InvalidInput as error:
        # Decoding is shared; the answerer gives it the kind's own status (topics: 405).
        assert error.status == 422 and error.message.strip()
        return None
    try:
        request = predictor.parse(payload)
    except ServingError as error:
        check_refusal(kind, error)
        return None
    check_request(kind, predictor, request)
    return request


def check_outcome(kind: Kind, outcome: Outcome) -> None:
    """What the answerer gives one request: a refusal of the kind, or a 200 (checked by the
    caller); never a 5xx for a request the model never saw."""
    if outcome.status == 200:
        return
    assert outcome.status in kind.refusals, outcome
    assert isinstance(outcome.body, dict) and outcome.body["code"] == outcome.status
    assert isinstance(outcome.body["error"], str) and outcome.body["error"].strip()


# ---------------------------------------------------------------------------------------------
# Properties of every kind.


@pytest.mark.parametrize("name", ALL_KINDS)
@FAST
@given(data=st.data())
def test_any_body_is_accepted_well_formed_or_refused_with_the_kinds_4xx(
    predictors: dict[str, Any], name: str, data: st.DataObject
) -> None:
    kind = KINDS[name]
    raw = data.draw(bodies(kind), label="body")
    request = parse_or_refuse(kind, predictors[name], raw)
    outcome = BatchAnswerer(predictors[name], name).answer([raw])
    assert len(outcome) == 1
    check_outcome(kind, outcome[0])
    if request is None:
        assert outcome[0].status != 200
    elif outcome[0].status == 200:
        check_answer(kind, request, outcome[0].body)


@pytest.mark.parametrize("name", ALL_KINDS)
@FAST
@given(data=st.data())
def test_bytearray_and_decoded_bodies_are_treated_alike(
    predictors: dict[str, Any], name: str, data: st.DataObject
) -> None:
    """TorchServe may hand a body over as bytes, a bytearray or (for JSON) a decoded value."""
    kind = KINDS[name]
    value = data.draw(shaped(kind), label="value")
    raw = encode(value)
    answerer = BatchAnswerer(predictors[name], name)
    as_bytes, as_bytearray = answerer.answer([raw, bytearray(raw)])
    assert as_bytes.status == as_bytearray.status
    if plain(value):  # only what Python's json writes can arrive decoded
        [decoded] = answerer.answer([json.loads(raw)])
        assert decoded.status == as_bytes.status


@pytest.mark.parametrize("name", ALL_KINDS)
@FAST
@given(depth=st.integers(1, 150_000), closed=st.booleans(), wrapped=st.booleans())
@example(depth=100_000, closed=True, wrapped=False)
@example(depth=100_000, closed=False, wrapped=True)
@example(depth=990, closed=True, wrapped=True)
def test_deep_nesting_is_refused_never_a_crash(
    predictors: dict[str, Any], name: str, depth: int, closed: bool, wrapped: bool
) -> None:
    kind = KINDS[name]
    nested = "[" * depth + ("]" * depth if closed else "")
    text = f'{{"{kind.field}": {nested}}}' if wrapped else nested
    raw = text.encode()
    assert parse_or_refuse(kind, predictors[name], raw) is None
    [outcome] = BatchAnswerer(predictors[name], name).answer([raw])
    check_outcome(kind, outcome)
    assert outcome.status in kind.refusals


@pytest.mark.parametrize("name", ALL_KINDS)
@FAST
@given(data=st.data())
def test_refusals_never_repeat_the_users_data(
    predictors: dict[str, Any], name: str, data: st.DataObject
) -> None:
    """An error names where the problem is, never what the user wrote there."""
    kind = KINDS[name]
    secret = data.draw(st.text(string.ascii_letters + " ", max_size=20).map(lambda s: f"{SECRET} {s}"))
    long_secret = f"{secret} " + "word " * 200  # too long for any tiny model: refused in predict
    placements = [
        {kind.field: secret},
        {kind.field: [secret, 5]},
        {kind.field: [[secret, 0.1, 0.2, 0.3]]},
        {kind.field: {"nested": secret}},
        {**kind.good, "unknown": secret},
        {kind.field: secret, "top_k": 0},
        {kind.field: [long_secret]},
        {kind.field: long_secret.replace("word", "[MASK]", 1)},
    ]
    body = data.draw(st.sampled_from(placements), label="body")
    [outcome] = BatchAnswerer(predictors[name], name).answer([encode(body)])
    if outcome.status != 200:
        check_outcome(kind, outcome)
        assert SECRET not in outcome.body["error"], outcome.body


# ---------------------------------------------------------------------------------------------
# Valid generated requests are always accepted, and answered in shape.

FINITE = st.floats(allow_nan=False, allow_infinity=False)


@pytest.mark.parametrize("name", CRYSTAL_KINDS)
@FAST
@given(
    rows=st.lists(
        st.lists(st.one_of(FINITE, st.integers(-(10**300), 10**300)), min_size=4, max_size=4),
        min_size=1,
        max_size=40,
    ),
    choose=st.booleans(),
)
@example(rows=[[1.7976931348623157e308, -5e-324, 0, -0.0]] * 10_000, choose=True)
def test_crystal_rows_of_four_finite_numbers_are_always_accepted(
    predictors: dict[str, Any], name: str, rows: list[list[float]], choose: bool
) -> None:
    kind = KINDS[name]
    framework = name.removeprefix("crystal_")
    body: dict[str, Any] = {"crystalData": rows}
    if choose:
        body.update(model=framework, model_name=name)
    request = parse_or_refuse(kind, predictors[name], encode(body))
    assert request is not None, "a valid request was refused"
    assert request.crystalData == [[float(value) for value in row] for row in rows]


@pytest.mark.parametrize("name", CRYSTAL_KINDS)
@SLOW
@given(rows=st.lists(st.lists(SANE_NUMBERS, min_size=4, max_size=4), min_size=1, max_size=40))
def test_crystal_rows_of_measurements_are_answered(
    predictors: dict[str, Any], name: str, rows: list[list[float]]
) -> None:
    raw = encode({"crystalData": rows})
    [outcome] = BatchAnswerer(predictors[name], name).answer([raw])
    assert outcome.status == 200, outcome.body
    check_answer(KINDS[name], predictors[name].parse(json.loads(raw)), outcome.body)


@pytest.mark.parametrize("name", CRYSTAL_KINDS)
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy's overflow warnings: the point here
@SLOW
@given(rows=st.lists(st.lists(FINITE, min_size=4, max_size=4), min_size=1, max_size=5))
@example(rows=[[1e39, 0.0, 0.0, 0.0]])
@example(rows=[[1e308, 1e308, 1e308, 1e308]])
def test_huge_finite_numbers_are_refused_or_answered_never_a_model_failure(
    predictors: dict[str, Any], name: str, rows: list[list[float]]
) -> None:
    [outcome] = BatchAnswerer(predictors[name], name).answer([encode({"crystalData": rows})])
    assert outcome.status in (200, 422), outcome.body


def text_lists(texts: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    """One text, or a list of them (up to the 64 a request may hold)."""
    return st.one_of(
        texts, st.lists(texts, min_size=1, max_size=6), st.lists(texts, min_size=64, max_size=64)
    )


def masked_texts(kind: Kind) -> st.SearchStrategy[str]:
    """Texts holding one mask (in either spelling) among arbitrary characters."""
    words = st.text(max_size=15)
    return st.builds(
        lambda before, mask, after: f"{before}{mask}{after}",
        words,
        st.sampled_from(["[MASK]", kind.mask]),
        words,
    )


@pytest.mark.parametrize("name", ["camembert", "fill_mask", "sentiment"])
@SLOW
@given(data=st.data())
def test_valid_text_requests_are_always_accepted_and_answered(
    predictors: dict[str, Any], name: str, data: st.DataObject
) -> None:
    kind = KINDS[name]
    predictor = predictors[name]
    texts = masked_texts(kind) if kind.mask else st.text(min_size=1, max_size=40)
    text = data.draw(text_lists(texts), label="text")
    body: dict[str, Any] = {"text": text}
    if kind.mask:
        body["top_k"] = data.draw(st.integers(1, 50 if isinstance(text, str) or len(text) < 40 else 10))
    if data.draw(st.booleans()):
        body.update(model_name=name, task=predictor.tasks[0])
    request = parse_or_refuse(kind, predictor, encode(body))
    assert request is not None, "a valid request was refused"
    assert request.texts == ([text] if isinstance(text, str) else text)
    [answer] = predictor.predict([request])
    if isinstance(answer, ServingError):  # a text longer than the model accepts
        check_refusal(kind, answer)
        assert "at most" in answer.message
    else:
        check_answer(kind, request, answer)


@SLOW
@given(text=st.text(min_size=1, max_size=200))
@example(text="x" * 200_000)
@example(text=" ")
@example(text="")
def test_valid_topics_requests_are_always_accepted_and_answered(
    predictors: dict[str, Any], text: str
) -> None:
    kind = KINDS["topics"]
    [outcome] = BatchAnswerer(predictors["topics"], "topics").answer([encode({"text": text})])
    assert outcome.status == 200, outcome.body
    check_answer(kind, None, outcome.body)


@pytest.mark.parametrize(
    ("name", "body"),
    [
        ("crystal_sklearn", {"crystalData": [[0.1, 0.2, 0.3, 0.4]] * 10_001}),
        ("fill_mask", {"text": ["a [MASK]"] * 65}),
        ("sentiment", {"text": ["fine"] * 65}),
        ("topics", {"text": "x" * 200_001}),
        ("fill_mask", {"text": ["[MASK] " * 20] * 5, "top_k": 50}),
    ],
    ids=["10001 rows", "65 masked texts", "65 texts", "200001 characters", "5000 candidates"],
)
def test_counts_past_the_limits_are_refused(predictors: dict[str, Any], name: str, body: Any) -> None:
    with pytest.raises(ServingError) as caught:
        predictors[name].parse(body)
    check_refusal(KINDS[name], caught.value)
    assert "at most" in caught.value.message or "longer than" in caught.value.message


# ---------------------------------------------------------------------------------------------
# A TorchServe batch: arbitrary bad bodies around one good one.


def torchserve_row(raw: bytes, data: st.DataObject) -> dict[str, Any]:
    """One request row as TorchServe hands it to a handler: bytes or a bytearray, under
    `body` or `data`."""
    key = data.draw(st.sampled_from(["body", "data"]))
    return {key: bytearray(raw) if data.draw(st.booleans()) else raw}


@pytest.mark.parametrize("name", ALL_KINDS)
@SLOW
@given(data=st.data())
def test_a_batch_of_bad_bodies_and_a_good_one_answers_each_on_its_own(
    handlers: dict[str, ModelHandler],
    fake_contexts: dict[str, FakeContext],
    predictors: dict[str, Any],
    name: str,
    data: st.DataObject,
) -> None:
    kind = KINDS[name]
    raws, where = draw_batch(data, kind)
    context = dataclasses.replace(fake_contexts[name], statuses={}, content_types={}, headers={})
    answers = handlers[name].handle([torchserve_row(raw, data) for raw in raws], context)
    assert len(answers) == len(raws)
    assert set(context.content_types) == set(range(len(raws)))
    # Every answer, a refusal or a model's failure too, is marked as the handler's: Envoy
    # retries only replies without the mark. A 405 (a spec's validation failure) names the method.
    for index in range(len(raws)):
        allow = {"allow": "POST"} if context.status_of(index) == 405 else {}
        assert context.headers[index] == {HANDLER_ANSWER: "1", **allow}
    # The good request's answer is the one it gets alone.
    [alone] = BatchAnswerer(predictors[name], name).answer([raws[where]])
    assert context.status_of(where) == 200
    assert_close(json.loads(answers[where]), alone.body)
    for index, raw in enumerate(raws):
        check_handler_answer(kind, predictors[name], raw, answers[index], context, index)


def draw_batch(data: st.DataObject, kind: Kind) -> tuple[list[bytes], int]:
    """One to seven arbitrary bodies with the kind's good body somewhere among them, and
    where."""
    bad = data.draw(st.lists(bodies(kind), min_size=1, max_size=7), label="bad")
    where = data.draw(st.integers(0, len(bad)), label="good at")
    return [*bad[:where], encode(kind.good), *bad[where:]], where


def check_handler_answer(
    kind: Kind, predictor: Any, raw: bytes, answer: Any, context: FakeContext, index: int
) -> None:
    """What TorchServe would send for one request of a batch: JSON bytes with its own status
    (NDJSON for a valid streamed request), a refusal of the kind or a well-formed answer."""
    assert isinstance(answer, bytes)
    status = context.status_of(index)
    if context.content_types[index] == "application/x-ndjson":
        assert status == 200 and all(json.loads(line)["index"] >= 0 for line in answer.splitlines())
        return
    assert context.content_types[index] == "application/json"
    body = json.loads(answer)
    if status == 200:  # a generated body that happens to be valid
        check_answer(kind, predictor.parse(decode_json_body(raw)), body)
        return
    assert status in kind.refusals, (raw[:200], status, body)
    assert isinstance(body, dict) and body["code"] == status
    assert isinstance(body["error"], str) and body["error"].strip()

"""The topic classifier: data, model selection, evaluation report, safe persistence, serving."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import pytest
import skops.io

from load_tests.kit.topics_corpus import TOPIC_WORDS, write_corpus
from modelserver.catalogue import Catalogue, resolve_source
from modelserver.errors import ConfigError, SourceUnavailable, SpecValidationFailed
from modelserver.kinds.topics import TopicsRequest, TopicsSettings
from modelserver.kinds.topics.worker import TopicsPredictor, load_pipeline, load_topics_predictor
from modelserver.training import topics
from modelserver.training.topics_report import write_report
from tests.helpers import model_files


@pytest.fixture(scope="module", name="corpus")
def fixture_corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The small test corpus: train and test files."""
    return write_corpus(tmp_path_factory.mktemp("topics"))


@pytest.fixture(scope="module", name="saved_model")
def fixture_saved_model(corpus: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The recipe's output on the small corpus."""
    output = tmp_path_factory.mktemp("topics_model") / "topics.model"
    result = topics.train(output, {"train": corpus[0], "test": corpus[1]})
    assert result["chosen"] != topics.BASELINE
    return output


def test_reading_data_refuses_broken_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl.gz"
    with gzip.open(bad, "wt") as out:
        out.write('{"text": "no label"}\n')
    with pytest.raises(ConfigError, match="cannot read"):
        topics.read_dataset(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        topics.read_dataset(tmp_path / "missing.jsonl.gz")


def test_selection_uses_cross_validation_on_train_and_reports_both(
    corpus: tuple[Path, Path], tmp_path: Path
) -> None:
    train, test = topics.read_dataset(corpus[0]), topics.read_dataset(corpus[1])
    report, improved = topics.evaluation_report(train, test, folds=3)
    assert set(report["cv_accuracy"]) == set(topics.CANDIDATES)
    assert report["improved"]["name"] == topics.choose_improved(report["cv_accuracy"])
    for role in ("baseline", "improved"):
        result = report[role]["test"]
        assert 0 <= result["macro_f1"] <= 1 and result["accuracy"] > 0.8
        assert set(result["per_class"]) == set(result["labels"]) and len(result["labels"]) == 6
        assert sum(map(sum, result["confusion_matrix"])) == report["test_size"]
    written = write_report(report, tmp_path)
    assert {p.name for p in written} == {
        "topics_evaluation.md",
        "topics_evaluation.json",
        "topics_confusion_baseline.png",
        "topics_confusion_improved.png",
    }
    assert (tmp_path / "topics_confusion_improved.png").read_bytes()[:4] == b"\x89PNG"
    assert "| improved: `" in (tmp_path / "topics_evaluation.md").read_text()
    assert improved.predict(["puck goalie leafs"])[0] == "hockey"


def test_saved_model_round_trips_to_identical_predictions(
    corpus: tuple[Path, Path], saved_model: Path
) -> None:
    texts, _ = topics.read_dataset(corpus[1])
    trained = topics.CANDIDATES[
        topics.choose_improved(topics.cross_validate(topics.read_dataset(corpus[0])))
    ]()
    trained.fit(*topics.read_dataset(corpus[0]))
    assert list(load_pipeline(saved_model).predict(texts)) == list(trained.predict(texts))


@pytest.mark.parametrize("candidate", sorted(topics.CANDIDATES))
def test_every_candidate_the_recipe_may_choose_loads_under_the_allowlist(
    corpus: tuple[Path, Path], tmp_path: Path, candidate: str
) -> None:
    # The allowlist lives with the serving kind, the candidates with the training recipe:
    # whichever the recipe picks, the worker must be able to load it.
    model = topics.CANDIDATES[candidate]()
    model.fit(*topics.read_dataset(corpus[0]))
    topics.save_model(model, tmp_path / "candidate.model")
    texts, _ = topics.read_dataset(corpus[1])
    assert list(load_pipeline(tmp_path / "candidate.model").predict(texts[:5])) == list(
        model.predict(texts[:5])
    )


class NotAllowed:
    """A type a topics model never holds."""


def test_loading_refuses_types_outside_the_allowlist(tmp_path: Path) -> None:
    skops.io.dump({"model": NotAllowed()}, tmp_path / "evil.model")
    with pytest.raises(ConfigError, match="not trusted"):
        load_pipeline(tmp_path / "evil.model")
    (tmp_path / "garbage.model").write_bytes(b"not a skops file")
    with pytest.raises(ConfigError, match="cannot load"):
        load_pipeline(tmp_path / "garbage.model")


@pytest.fixture(scope="module", name="predictor")
def fixture_predictor(saved_model: Path) -> TopicsPredictor:
    """The served predictor, as the archive loads it."""
    return load_topics_predictor(model_files(TopicsSettings, saved_model.parent, {}, saved_model.name))


def test_predictions_are_one_label_string_each(predictor: TopicsPredictor) -> None:
    requests = [
        predictor.parse({"text": text}) for text in ("nasa shuttle orbit", "rsa cipher key", "pitcher inning")
    ]
    assert predictor.predict(requests) == [
        {"label": "space"},
        {"label": "cryptography"},
        {"label": "baseball"},
    ]


@pytest.mark.parametrize(
    "body",
    [
        {"text": 3},
        {"text": None},
        {"text": True},
        {"text": {"text": "nested"}},
        {"text": ["a list"]},
        {"text": ["a list"], "id": "a"},
        {"text": "\ud800 a lone surrogate"},
        ["text"],
        [{"text": "in a list"}],
        "text",
        None,
    ],
)
def test_bodies_the_specs_schema_refuses_are_its_405(predictor: TopicsPredictor, body: Any) -> None:
    with pytest.raises(SpecValidationFailed) as caught:
        predictor.parse(body)
    assert caught.value.status == 405


@pytest.mark.parametrize(
    ("body", "text"),
    [
        ({"text": "puck goalie", "id": "a"}, "puck goalie"),
        ({"text": "puck goalie", "text_b": 3, "nested": {"x": [1]}}, "puck goalie"),
        ({"id": "a"}, ""),
        ({}, ""),
        ({"text": ""}, ""),
        ({"text": "   "}, "   "),
    ],
    ids=["an id", "unnamed fields", "no text but an id", "{}", "empty text", "blank text"],
)
def test_bodies_the_specs_schema_accepts_are_answered(
    predictor: TopicsPredictor, body: Any, text: str
) -> None:
    # ApiRequest names `text` only, requires nothing and allows other properties (Swagger 2.0):
    # unnamed fields are ignored and a missing text is an empty document.
    request = predictor.parse(body)
    assert request.text == text
    [answer] = predictor.predict([request])
    assert set(answer) == {"label"} and answer["label"] in TOPIC_WORDS


def test_an_empty_document_gets_the_label_of_any_text_without_a_known_word(
    predictor: TopicsPredictor,
) -> None:
    # No word the model knows carries no evidence: "" is labelled as unknown words are.
    answers = predictor.predict([predictor.parse(body) for body in ({}, {"text": ""}, {"text": "zzqx wvvk"})])
    assert answers[0] == answers[1] == answers[2]


def test_the_request_schema_allows_what_the_spec_allows() -> None:
    schema = TopicsRequest.model_json_schema()
    assert schema.get("additionalProperties", True) is not False
    assert "required" not in schema and schema["properties"]["text"]["type"] == "string"
    assert "minLength" not in schema["properties"]["text"]


def test_without_data_and_downloads_the_model_is_skipped_with_how_to_provide_it(tmp_path: Path) -> None:
    entry = Catalogue.load().entry("topics")
    with pytest.raises(SourceUnavailable, match="TOPICS_TRAIN and TOPICS_TEST") as caught:
        resolve_source(entry, {"TOPICS_DATA": "files"}, root=tmp_path / "fresh_clone")
    assert "TOPICS_DATA=files: no 20newsgroups download" in str(caught.value)
    with pytest.raises(ConfigError, match=r"TOPICS_TRAIN=.* is not a file"):
        resolve_source(entry, {"TOPICS_TRAIN": str(tmp_path / "nope.gz")}, root=tmp_path)


def test_bodies_that_are_not_json_are_405_here_too(predictor: TopicsPredictor) -> None:
    from modelserver.serving.batch import BatchAnswerer  # pylint: disable=import-outside-toplevel

    outcomes = BatchAnswerer(predictor, "topics").answer(
        [b"not json", b'{"text": NaN}', b'{"text": "nasa orbit"}', b"", b'["nasa orbit"]', b'{"id": 1}']
    )
    assert [o.status for o in outcomes] == [405, 405, 200, 405, 405, 200]
    assert outcomes[2].body == {"label": "space"}


def test_a_hugging_face_body_is_read_as_its_text(predictor: TopicsPredictor) -> None:
    text = "The goalie stopped the puck in overtime."
    assert predictor.parse({"inputs": text}).text == text
    assert predictor.parse({"inputs": text, "text": "other"}).text == "other"
    assert predictor.parse({"inputs": ["a list is not one text"]}).text == ""

"""Brief 002's POST /prediction through Envoy and TorchServe, to the letter of its spec."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from load_tests.kit.stack import Launcher
from load_tests.kit.topics_corpus import TOPIC_WORDS


def test_prediction_answers_one_label(stack: Launcher) -> None:
    for text, label in [
        ("The goalie stopped the puck and the leafs won the cup", "hockey"),
        ("nasa will launch the shuttle into orbit", "space"),
    ]:
        response = requests.post(f"{stack.url}/prediction", json={"text": text}, timeout=30)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("application/json")
        assert response.json() == {"label": label}


def test_fields_the_spec_does_not_name_are_ignored(stack: Launcher) -> None:
    text = "The goalie stopped the puck and the leafs won the cup"
    for body in ({"text": text, "id": "a"}, {"id": "a", "text": text, "meta": {"lang": "en"}, "n": [1]}):
        response = requests.post(f"{stack.url}/prediction", json=body, timeout=30)
        assert response.status_code == 200, response.text
        assert response.json() == {"label": "hockey"}


def test_bodies_without_text_are_an_empty_document_as_the_spec_allows(stack: Launcher) -> None:
    # ApiRequest requires no property and sets no minLength: {} and "" are valid requests,
    # answered with the label the model gives a text holding no word it knows.
    answers = [
        requests.post(f"{stack.url}/prediction", data=body, timeout=30)
        for body in (b"{}", b'{"text": ""}', b'{"id": "a"}', b'{"text": "zzqx wvvk"}')
    ]
    assert [answer.status_code for answer in answers] == [200] * 4, [a.text for a in answers]
    assert len({answer.text for answer in answers}) == 1
    assert set(answers[0].json()) == {"label"} and answers[0].json()["label"] in TOPIC_WORDS


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[]",
        b'["The goalie stopped the puck"]',
        b'"The goalie stopped the puck"',
        b"null",
        b'{"text": 5}',
        b'{"text": null}',
        b'{"text": true}',
        b'{"text": {"text": "puck"}}',
        b'{"text": ["a", "b"]}',
        b'{"text": ["a", "b"], "id": "a"}',
        b'{"text": NaN}',
        b'{"text": "\\ud800 puck"}',
    ],
)
def test_validation_failures_are_405_json_as_the_spec_documents(stack: Launcher, body: Any) -> None:
    response = requests.post(f"{stack.url}/prediction", data=body, timeout=30)
    assert response.status_code == 405, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error"] and response.json()["code"] == 405
    assert response.json()["type"] == "invalid_input" and response.headers["allow"] == "POST"


def test_other_methods_are_405_too(stack: Launcher) -> None:
    response = requests.get(f"{stack.url}/prediction", timeout=30)
    assert response.status_code == 405 and response.headers["allow"] == "POST"


def test_healthcheck_says_which_data_trained_the_model(stack: Launcher) -> None:
    health = requests.get(f"{stack.url}/healthcheck", timeout=30).json()
    # The session's corpus, by file name only, in the catalogue's order of inputs.
    assert set(health["trained_on"]) == {"topics"}
    assert set(health["trained_on"]["topics"].split(", ")) == {
        "train.jsonl.gz (from TOPICS_TRAIN)",
        "test.jsonl.gz (from TOPICS_TEST)",
    }

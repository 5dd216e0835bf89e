"""Brief 002's POST /prediction through Envoy and TorchServe, to the letter of its spec."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from load_tests.kit.stack import Launcher


def test_prediction_answers_one_label(stack: Launcher) -> None:
    for text, label in [
        ("The goalie stopped the puck and the leafs won the cup", "hockey"),
        ("nasa will launch the shuttle into orbit", "space"),
    ]:
        response = requests.post(f"{stack.url}/prediction", json={"text": text}, timeout=30)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("application/json")
        assert response.json() == {"label": label}


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"{}",
        b'{"text": 5}',
        b'{"text": ""}',
        b'{"text": ["a", "b"]}',
        b'{"text": "ok", "x": 1}',
        b'{"text": NaN}',
    ],
)
def test_validation_failures_are_405_json_as_the_spec_documents(stack: Launcher, body: Any) -> None:
    response = requests.post(f"{stack.url}/prediction", data=body, timeout=30)
    assert response.status_code == 405, response.text
    assert response.json()["error"] and response.json()["code"] == 405


def test_other_methods_are_405_too(stack: Launcher) -> None:
    response = requests.get(f"{stack.url}/prediction", timeout=30)
    assert response.status_code == 405 and response.headers["allow"] == "POST"

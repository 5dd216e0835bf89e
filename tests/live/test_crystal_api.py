"""Brief 003 through Envoy and TorchServe: answers, the error battery, batching neighbours."""

from __future__ import annotations

import json
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from load_tests.kit.routes import BRIEF_ROWS
from load_tests.kit.stack import Launcher
from modelserver.kinds.crystal.worker import load_classifier
from modelserver.serving.headers import HANDLER_ANSWER
from tests.helpers import access_log, answers_close, logged_requests, post

ROUTES = {"/sklearn": "sklearn", "/pytorch": "pytorch"}


def check_answer(answer: dict[str, Any], rows: int) -> None:
    """The brief's response shape: labels, scores summing to 1, prediction = argmax."""
    assert set(answer) == {"prediction", "scores"}
    assert len(answer["prediction"]) == len(answer["scores"]) == rows
    for label, scores in zip(answer["prediction"], answer["scores"], strict=True):
        assert list(scores) == ["blue", "green", "yellow"]
        assert sum(scores.values()) == pytest.approx(1.0, abs=1e-6)
        assert label == max(scores, key=scores.__getitem__)


@pytest.mark.parametrize("path", sorted(ROUTES))
@pytest.mark.parametrize("rows", [BRIEF_ROWS[:1], BRIEF_ROWS])
def test_single_and_batch_predictions(stack: Launcher, path: str, rows: list[list[float]]) -> None:
    response = post(stack, path, {"crystalData": rows})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    check_answer(response.json(), len(rows))


@pytest.mark.parametrize("model", ["sklearn", "pytorch"])
def test_astromech_equals_the_direct_route(stack: Launcher, model: str) -> None:
    body = {"crystalData": BRIEF_ROWS}
    direct = post(stack, f"/{model}", body).json()
    via_astromech = post(stack, "/astromech", {**body, "model": model})
    assert via_astromech.status_code == 200, via_astromech.text
    assert via_astromech.json()["prediction"] == direct["prediction"]
    for got, want in zip(via_astromech.json()["scores"], direct["scores"], strict=True):
        assert got == pytest.approx(want, abs=1e-6)


def test_the_two_models_are_different_models(stack: Launcher) -> None:
    sklearn = post(stack, "/sklearn", {"crystalData": BRIEF_ROWS}).json()["scores"]
    pytorch = post(stack, "/pytorch", {"crystalData": BRIEF_ROWS}).json()["scores"]
    assert not answers_close(sklearn, pytorch)


@pytest.mark.parametrize("framework", ["sklearn", "pytorch"])
def test_served_scores_equal_the_archived_model_file(stack: Launcher, framework: str, tmp_path: Path) -> None:
    """What Envoy returns is what the model file inside the archive gives when loaded directly."""
    name = f"crystal_{framework}"
    with zipfile.ZipFile(stack.workdir / "model_store" / f"{name}.mar") as archive:
        model_file = json.loads(archive.read("MAR-INF/MANIFEST.json"))["model"]["serializedFile"]
        archive.extract(model_file, tmp_path)
    expected = load_classifier(framework, tmp_path / model_file, 1).predict_proba(np.array(BRIEF_ROWS))
    served = post(stack, f"/{framework}", {"crystalData": BRIEF_ROWS}).json()["scores"]
    assert np.array([list(s.values()) for s in served]) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    "content_type",
    ["application/x-www-form-urlencoded", "text/plain", "application/json; charset=utf-8", None],
)
def test_json_is_understood_whatever_the_content_type(stack: Launcher, content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    body = json.dumps({"crystalData": BRIEF_ROWS[:1], "model": "pytorch"})
    for path in ("/sklearn", "/astromech"):
        data = body.replace('"pytorch"', '"sklearn"') if path == "/sklearn" else body
        response = requests.post(f"{stack.url}{path}", data=data, headers=headers, timeout=30)
        assert response.status_code == 200, (path, response.text)
        check_answer(response.json(), 1)


BAD_BODIES: dict[str, bytes] = {
    "not JSON": b"crystalData=0.92,0.12",
    "truncated JSON": b'{"crystalData": [[0.92, 0.12, 0.31',
    "empty body": b"",
    "missing crystalData": b'{"rows": [[0.92, 0.12, 0.31, 0.09]]}',
    "not a list": b'{"crystalData": "0.92,0.12,0.31,0.09"}',
    "empty list": b'{"crystalData": []}',
    "flat row": b'{"crystalData": [0.92, 0.12, 0.31, 0.09]}',
    "nested rows": b'{"crystalData": [[[0.92, 0.12, 0.31, 0.09]]]}',
    "three values": b'{"crystalData": [[0.92, 0.12, 0.31]]}',
    "five values": b'{"crystalData": [[0.92, 0.12, 0.31, 0.09, 0.5]]}',
    "string": b'{"crystalData": [["blue", 0.12, 0.31, 0.09]]}',
    "numeric string": b'{"crystalData": [["0.92", 0.12, 0.31, 0.09]]}',
    "null value": b'{"crystalData": [[null, 0.12, 0.31, 0.09]]}',
    "null data": b'{"crystalData": null}',
    "boolean": b'{"crystalData": [[true, 0.12, 0.31, 0.09]]}',
    "object": b'{"crystalData": [[{"x": 1}, 0.12, 0.31, 0.09]]}',
    "NaN": b'{"crystalData": [[NaN, 0.12, 0.31, 0.09]]}',
    "Infinity": b'{"crystalData": [[Infinity, 0.12, 0.31, 0.09]]}',
    "overflow to infinity": b'{"crystalData": [[1e400, 0.12, 0.31, 0.09]]}',
    "huge integer": b'{"crystalData": [[' + b"9" * 400 + b", 0.12, 0.31, 0.09]]}",
    "integer past the parser digit limit": b'{"crystalData": [[' + b"9" * 5000 + b", 0.12, 0.31, 0.09]]}",
    "extra field": b'{"crystalData": [[0.92, 0.12, 0.31, 0.09]], "extra": 1}',
    "invalid UTF-8": b'{"crystalData": [[0.92, 0.12, 0.31, 0.09]], "x": "\xff"}',
    "top-level list": b"[[0.92, 0.12, 0.31, 0.09]]",
}


def check_422(response: requests.Response, case: str) -> None:
    """A JSON 422 with a sentence saying what is wrong."""
    assert response.status_code == 422, (case, response.text)
    error = response.json()
    assert isinstance(error["error"], str) and error["error"] and error["code"] == 422


@pytest.mark.parametrize("path", sorted(ROUTES))
@pytest.mark.parametrize("case", sorted(BAD_BODIES))
def test_anomalous_data_is_422_json(stack: Launcher, path: str, case: str) -> None:
    check_422(post(stack, path, BAD_BODIES[case]), case)


OBJECT_CASES = sorted(k for k, v in BAD_BODIES.items() if v.startswith(b'{"crystalData"'))


@pytest.mark.parametrize("model", ["sklearn", "pytorch"])
@pytest.mark.parametrize("case", OBJECT_CASES)
def test_astromech_with_a_known_model_and_bad_data_is_422(stack: Launcher, model: str, case: str) -> None:
    """Even when the body is not strict JSON (NaN, truncated), a readable model gets 422."""
    body = BAD_BODIES[case][:-1] + f', "model": "{model}"}}'.encode()
    check_422(post(stack, "/astromech", body), case)


@pytest.mark.parametrize(
    "body",
    [
        {"crystalData": BRIEF_ROWS[:1], "model": "tensorflow"},
        {"crystalData": BRIEF_ROWS[:1]},
        {"crystalData": BRIEF_ROWS[:1], "model": None},
        {"crystalData": BRIEF_ROWS[:1], "model": 3},
        {"crystalData": BRIEF_ROWS[:1], "model": "SKLEARN"},
        {"crystalData": "garbage", "model": "tf"},
        b"not json at all",
    ],
    ids=["unknown", "missing", "null", "number", "wrong case", "bad data too", "not json"],
)
def test_astromech_needs_a_known_model_first(stack: Launcher, body: Any) -> None:
    """The model is checked before the data: 400, even when the data is bad as well."""
    response = post(stack, "/astromech", body)
    assert response.status_code == 400
    assert "sklearn" in response.json()["error"] and "pytorch" in response.json()["error"]


def test_a_model_field_naming_the_other_model_is_400(stack: Launcher) -> None:
    response = post(stack, "/sklearn", {"crystalData": BRIEF_ROWS[:1], "model": "pytorch"})
    assert response.status_code == 400 and "pytorch" in response.json()["error"]


def test_a_model_that_fails_while_predicting_is_500_json_and_is_not_run_again(stack: Launcher) -> None:
    since = len(access_log(stack))
    response = post(stack, "/predictions/crystal_broken", {"crystalData": BRIEF_ROWS[:1]})
    assert response.status_code == 500
    assert "crystal_broken model failed" in response.json()["error"]
    assert HANDLER_ANSWER not in response.headers  # what Envoy's retries read stays inside
    # The model's own 500 is its answer: one try, never a second run of the same input.
    [line] = logged_requests(stack, "/predictions/crystal_broken", since)
    assert line["status"] == 500 and line["attempts"] == 1, line
    bad = post(stack, "/predictions/crystal_broken", {"crystalData": [[1, 2]]})
    assert bad.status_code == 422, "validation still comes first"


def test_concurrent_good_and_bad_requests_keep_their_own_answers(stack: Launcher) -> None:
    """Bad neighbours in a TorchServe batch never change a good request's answer."""
    good = {"crystalData": BRIEF_ROWS}
    expected = {path: post(stack, path, good).json() for path in ROUTES}
    bad_bodies = list(BAD_BODIES.values())
    jobs: list[tuple[str, Any, int]] = []
    for index in range(240):
        path = sorted(ROUTES)[index % 2]
        if index % 3 == 0:
            jobs.append((path, good, 200))
        else:
            jobs.append((path, bad_bodies[index % len(bad_bodies)], 422))
    with ThreadPoolExecutor(max_workers=32) as pool:
        responses = list(pool.map(lambda job: post(stack, job[0], job[1]), jobs))
    for (path, _, status), response in zip(jobs, responses, strict=True):
        assert response.status_code == status, response.text
        if status == 200:
            answer = response.json()
            assert answer["prediction"] == expected[path]["prediction"]
            for got, want in zip(answer["scores"], expected[path]["scores"], strict=True):
                assert got == pytest.approx(want, abs=1e-6)
        else:
            assert response.json()["error"]

"""The clients ML engineers already have, against the live stack: Hugging Face's
`InferenceClient` on the text routes, and `tritonclient.http` on the Open Inference Protocol.

Answers are compared with the routes' own answers to the same input, within float32 rounding
(the two may be computed in different batches).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import requests
import tritonclient.http as triton
from huggingface_hub import InferenceClient
from huggingface_hub.errors import HfHubHTTPError
from tritonclient.utils import InferenceServerException

from load_tests.kit.routes import BRIEF_ROWS
from load_tests.kit.stack import Launcher
from tests.helpers import answers_close

FILL_TEXT = "Hello I'm a [MASK] model."
REVIEW = "I love this movie, it is great."


def own(stack: Launcher, path: str, body: dict[str, Any]) -> Any:
    """The route's own answer (this server's JSON shape)."""
    response = requests.post(f"{stack.url}{path}", json=body, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def records(elements: list[Any]) -> list[dict[str, Any]]:
    """The client's parsed answer objects as plain dicts (they are dataclasses)."""
    return [{key: getattr(e, key) for key in ("score", "token", "token_str", "sequence")} for e in elements]


def strings(tensor: np.ndarray) -> list[str]:
    """A BYTES output as strings (tritonclient gives JSON BYTES as str, binary ones as bytes)."""
    return [item.decode() if isinstance(item, bytes) else str(item) for item in tensor.reshape(-1)]


def test_inference_client_fill_mask_on_inference_and_the_generic_path(stack: Launcher) -> None:
    client = InferenceClient(model=f"{stack.url}/inference")
    answer = client.fill_mask(FILL_TEXT, top_k=2)
    assert len(answer) == 2 and all("hello" in e.sequence.lower() for e in answer)
    assert answers_close(records(answer), own(stack, "/inference", {"text": FILL_TEXT, "top_k": 2}))
    camembert = InferenceClient(model=f"{stack.url}/predictions/camembert").fill_mask(
        "Le camembert est [MASK]."
    )
    assert len(camembert) == 5 and camembert[0].score >= camembert[-1].score


def test_inference_client_text_classification_on_predict(stack: Launcher) -> None:
    labels = InferenceClient(model=f"{stack.url}/predict").text_classification(REVIEW)
    assert {label.label for label in labels} == {"NEGATIVE", "POSITIVE"}
    assert labels[0].score >= labels[1].score
    assert sum(label.score for label in labels) == pytest.approx(1.0, abs=1e-5)
    best = own(stack, "/predict", {"text": REVIEW})
    assert labels[0].label == best["label"] and answers_close(labels[0].score, best["score"])
    [top] = InferenceClient(model=f"{stack.url}/predict").text_classification(REVIEW, top_k=1)
    assert top.label == best["label"]


def test_inference_client_errors_carry_our_json_message(stack: Launcher) -> None:
    client = InferenceClient(model=f"{stack.url}/inference")
    with pytest.raises(HfHubHTTPError) as refused:
        client.fill_mask("there is nothing to fill here")
    assert refused.value.response.status_code == 422
    assert "has no [MASK] to fill" in str(refused.value)
    response = requests.post(
        f"{stack.url}/inference", json={"inputs": FILL_TEXT, "parameters": {"temperature": 0.5}}, timeout=10
    )
    assert response.status_code == 422 and "parameters.temperature" in response.json()["error"]


@pytest.fixture(scope="module", name="v2")
def fixture_v2(stack: Launcher) -> Iterator[triton.InferenceServerClient]:
    """tritonclient's HTTP client on the public port."""
    client = triton.InferenceServerClient(url=stack.url.removeprefix("http://"), connection_timeout=10)
    yield client
    client.close()


def json_output(name: str) -> triton.InferRequestedOutput:
    """An output asked for as JSON."""
    return triton.InferRequestedOutput(name, binary_data=False)


def test_tritonclient_health_and_metadata(v2: triton.InferenceServerClient) -> None:
    assert v2.is_server_live() and v2.is_server_ready()
    assert v2.get_server_metadata()["name"] == "modelserver"
    for name in ("crystal_sklearn", "crystal_pytorch", "fill_mask", "sentiment", "camembert", "topics"):
        assert v2.is_model_ready(name), name
    assert not v2.is_model_ready("no_such_model")
    metadata = v2.get_model_metadata("crystal_sklearn")
    assert metadata["inputs"] == [{"name": "crystalData", "datatype": "FP32", "shape": [-1, 4]}]
    assert [o["name"] for o in metadata["outputs"]] == ["label", "scores"]
    assert v2.get_model_metadata("sentiment")["inputs"][0]["datatype"] == "BYTES"


@pytest.mark.parametrize(
    ("model", "route"), [("crystal_sklearn", "/sklearn"), ("crystal_pytorch", "/pytorch")]
)
def test_tritonclient_infers_crystal_models(
    stack: Launcher, v2: triton.InferenceServerClient, model: str, route: str
) -> None:
    rows = np.array(BRIEF_ROWS, dtype=np.float32)
    tensor = triton.InferInput("crystalData", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows, binary_data=False)
    result = v2.infer(model, [tensor], outputs=[json_output("label"), json_output("scores")], request_id="r7")
    expected = own(stack, route, {"crystalData": rows.tolist()})
    assert strings(result.as_numpy("label")) == expected["prediction"]
    scores = result.as_numpy("scores")
    assert scores.shape == (len(BRIEF_ROWS), 3)
    assert answers_close(
        scores.tolist(), [[float(np.float32(v)) for v in row.values()] for row in expected["scores"]]
    )
    assert result.get_response()["id"] == "r7"
    # No outputs named: tritonclient asks for binary outputs; the answer comes as JSON all the same.
    assert v2.infer(model, [tensor]).as_numpy("scores").shape == (len(BRIEF_ROWS), 3)


def bytes_input(texts: list[str]) -> triton.InferInput:
    """A BYTES tensor of texts, sent as JSON."""
    tensor = triton.InferInput("text", [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=np.object_), binary_data=False)
    return tensor


def test_tritonclient_infers_text_models(stack: Launcher, v2: triton.InferenceServerClient) -> None:
    texts = [REVIEW, "terrible and boring"]
    result = v2.infer("sentiment", [bytes_input(texts)], outputs=[json_output("label"), json_output("score")])
    expected = own(stack, "/predict", {"text": texts})
    assert strings(result.as_numpy("label")) == [e["label"] for e in expected]
    assert answers_close(result.as_numpy("score").tolist(), [float(np.float32(e["score"])) for e in expected])
    filled = v2.infer(
        "fill_mask", [bytes_input([FILL_TEXT])], outputs=[json_output("candidates")], parameters={"top_k": 3}
    )
    [candidates] = [json.loads(item) for item in strings(filled.as_numpy("candidates"))]
    assert answers_close(candidates, own(stack, "/inference", {"text": FILL_TEXT, "top_k": 3}))
    topics = v2.infer("topics", [bytes_input(["the goalie stopped the puck", "the rocket reached orbit"])])
    assert topics.as_numpy("label").shape == (2,)


def test_tritonclient_errors_are_4xx_with_our_message(v2: triton.InferenceServerClient) -> None:
    rows = np.array(BRIEF_ROWS, dtype=np.float32)
    binary = triton.InferInput("crystalData", list(rows.shape), "FP32")
    binary.set_data_from_numpy(rows, binary_data=True)
    with pytest.raises(InferenceServerException, match="binary_data=False") as refused:
        v2.infer("crystal_sklearn", [binary])
    # The client reads the status from the reply (a string) and the sentence from its `error`.
    assert refused.value.status() == "400"
    narrow = triton.InferInput("crystalData", [1, 3], "FP32")
    narrow.set_data_from_numpy(rows[:1, :3], binary_data=False)
    with pytest.raises(InferenceServerException, match=r"must be \[-1, 4\]") as wrong_shape:
        v2.infer("crystal_sklearn", [narrow])
    assert wrong_shape.value.status() == "422"
    with pytest.raises(InferenceServerException, match=r"no model of that name") as unknown:
        v2.infer("no_such_model", [narrow])
    assert unknown.value.status() == "404"
    good = triton.InferInput("crystalData", list(rows.shape), "FP32")
    good.set_data_from_numpy(rows, binary_data=False)
    with pytest.raises(InferenceServerException, match="failed") as failed:
        v2.infer("crystal_broken", [good], outputs=[json_output("label")])
    assert failed.value.status() == "500"


def test_v2_statuses_and_the_protocol_mark_cannot_be_spoofed(stack: Launcher) -> None:
    url = stack.url
    tensor = {"name": "crystalData", "shape": [1, 4], "datatype": "FP32", "data": BRIEF_ROWS[0]}
    assert requests.post(f"{url}/v2/models/crystal_sklearn/infer", json={"inputs": [tensor]}, timeout=10).ok
    versioned = requests.post(
        f"{url}/v2/models/crystal_sklearn/versions/1/infer", json={"inputs": [tensor]}, timeout=10
    )
    assert versioned.status_code == 200 and versioned.json()["outputs"][0]["data"]
    wrong_type = {**tensor, "datatype": "BYTES", "data": ["a", "b", "c", "d"]}
    response = requests.post(
        f"{url}/v2/models/crystal_sklearn/infer", json={"inputs": [wrong_type]}, timeout=10
    )
    assert response.status_code == 422 and "must be FP32" in response.json()["error"]
    not_json = requests.post(f"{url}/v2/models/crystal_sklearn/infer", data=b"{", timeout=10)
    assert not_json.status_code == 422 and not_json.json()["error"]
    assert requests.get(f"{url}/v2/models/crystal_sklearn/infer", timeout=10).status_code == 405
    assert requests.post(f"{url}/v2/health/ready", timeout=10).status_code == 405
    assert requests.get(f"{url}/v2/models/nope/ready", timeout=10).status_code == 404
    # A client sending the worker's mark on an own route is answered in the route's own shape.
    spoofed = requests.post(
        f"{url}/sklearn",
        json={"crystalData": BRIEF_ROWS[:1]},
        headers={"x-inference-protocol": "open-inference-v2"},
        timeout=10,
    )
    assert spoofed.status_code == 200 and "prediction" in spoofed.json()

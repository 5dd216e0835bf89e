"""The Open Inference Protocol (v2): tensor codecs, the handler with a fake context, the
launcher's health and metadata pages. The live stack with tritonclient is in tests/live."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from load_tests.kit.routes import BRIEF_ROWS
from modelserver.errors import BadRequest, InvalidInput
from modelserver.kinds.crystal import CRYSTAL
from modelserver.kinds.fill_mask import FILL_MASK
from modelserver.kinds.registry import KINDS
from modelserver.kinds.topics import TOPICS
from modelserver.launcher.pages.health import Readiness
from modelserver.launcher.pages.open_inference import OpenInferencePages
from modelserver.payload import MAX_TEXTS_PER_REQUEST
from modelserver.protocols.open_inference import PROTOCOL, PROTOCOL_HEADER, parse_infer_request
from tests.helpers import answers_close, crystal_handler

V2 = {PROTOCOL_HEADER: PROTOCOL}


def crystal_infer(rows: list[list[float]], **extra: Any) -> dict[str, Any]:
    """A v2 request as tritonclient sends it with binary_data=False."""
    flat = [value for row in rows for value in row]
    tensor = {"name": "crystalData", "shape": [len(rows), len(rows[0])], "datatype": "FP32", "data": flat}
    return {"inputs": [tensor], **extra}


def text_infer(texts: list[str], **extra: Any) -> dict[str, Any]:
    """A v2 request of BYTES texts."""
    return {"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}], **extra}


def test_every_kind_has_tensors_with_names_datatypes_and_shapes() -> None:
    for name, kind in KINDS.items():
        codec = kind.open_inference
        assert codec is not None, name
        metadata = codec.metadata(name)
        assert metadata["versions"] == ["1"] and metadata["inputs"] and metadata["outputs"]
        for tensor in metadata["inputs"] + metadata["outputs"]:
            assert set(tensor) == {"name", "datatype", "shape"} and tensor["shape"][0] == -1


def test_crystal_rows_round_trip_flat_or_nested() -> None:
    codec = CRYSTAL
    flat = parse_infer_request(crystal_infer(BRIEF_ROWS[:2]))
    nested = parse_infer_request({"inputs": [{**flat.inputs[0].model_dump(), "data": BRIEF_ROWS[:2]}]})
    assert codec.to_bodies(flat) == codec.to_bodies(nested) == [{"crystalData": BRIEF_ROWS[:2]}]
    answer = {"prediction": ["blue", "green"], "scores": [{"blue": 0.7, "green": 0.2, "yellow": 0.1}] * 2}
    response = codec.to_response("crystal_sklearn", flat, [answer], [2, 4])
    assert response["model_name"] == "crystal_sklearn" and "id" not in response
    label, scores = response["outputs"]
    assert label == {"name": "label", "datatype": "BYTES", "shape": [2], "data": ["blue", "green"]}
    assert scores == {"name": "scores", "datatype": "FP32", "shape": [2, 3], "data": [0.7, 0.2, 0.1] * 2}


@pytest.mark.parametrize(
    ("body", "error", "says"),
    [
        (crystal_infer([[1.0, 2.0, 3.0]]), InvalidInput, "must be [-1, 4]"),
        (
            {
                **crystal_infer(BRIEF_ROWS[:1]),
                "inputs": [{**crystal_infer(BRIEF_ROWS[:1])["inputs"][0], "datatype": "BYTES"}],
            },
            InvalidInput,
            "must be FP32",
        ),
        (
            {"inputs": [{"name": "crystalData", "shape": [2, 4], "datatype": "FP32", "data": [1.0] * 7}]},
            InvalidInput,
            "7 values",
        ),
        (
            {"inputs": [{"name": "crystalData", "shape": [4], "datatype": "FP32", "data": [1.0] * 4}]},
            InvalidInput,
            "2 dimensions",
        ),
        (
            {"inputs": [{"name": "rows", "shape": [1, 4], "datatype": "FP32", "data": [1.0] * 4}]},
            InvalidInput,
            "crystalData",
        ),
        (
            {"inputs": [{"name": "crystalData", "shape": [1, 4], "datatype": "FP32", "data": ["a"] * 4}]},
            InvalidInput,
            "number",
        ),
        (crystal_infer(BRIEF_ROWS[:1], parameters={"top_k": 3}), InvalidInput, "top_k"),
        (crystal_infer(BRIEF_ROWS[:1], outputs=[{"name": "probabilities"}]), InvalidInput, "probabilities"),
        (
            crystal_infer(BRIEF_ROWS[:1], outputs=[{"name": "label", "parameters": {"classification": 2}}]),
            InvalidInput,
            "classification",
        ),
        (
            {
                "inputs": [
                    {
                        "name": "crystalData",
                        "shape": [1, 4],
                        "datatype": "FP32",
                        "data": [],
                        "parameters": {"binary_data_size": 16},
                    }
                ]
            },
            BadRequest,
            "binary",
        ),
    ],
)
def test_bad_tensors_are_4xx_naming_the_problem(
    body: dict[str, Any], error: type[Exception], says: str
) -> None:
    codec = CRYSTAL
    with pytest.raises(error) as refused:
        request = parse_infer_request(body)
        codec.requested(request)
        codec.to_bodies(request)
    assert says in str(refused.value)


def test_binary_output_wishes_are_answered_in_json() -> None:
    request = parse_infer_request(
        crystal_infer(
            BRIEF_ROWS[:1],
            parameters={"binary_data_output": True},
            outputs=[{"name": "scores", "parameters": {"binary_data": True}}],
        )
    )
    assert CRYSTAL.requested(request) == ["scores"]
    assert CRYSTAL.to_bodies(request) == [{"crystalData": BRIEF_ROWS[:1]}]


def test_texts_map_to_one_body_per_kind() -> None:
    request = parse_infer_request(text_infer(["a [MASK]", "b [MASK]"], parameters={"top_k": 2}))
    assert FILL_MASK.to_bodies(request) == [{"text": ["a [MASK]", "b [MASK]"], "top_k": 2}]
    topics = parse_infer_request(text_infer(["hockey", "space"]))
    assert TOPICS.to_bodies(topics) == [{"text": "hockey"}, {"text": "space"}]
    with pytest.raises(InvalidInput, match="string"):
        TOPICS.to_bodies(parse_infer_request(text_infer([3])))  # type: ignore[list-item]


def test_the_handler_answers_v2_and_own_requests_in_one_batch(crystal_model_dirs: dict[str, Path]) -> None:
    handler, context = crystal_handler(crystal_model_dirs["sklearn"])
    batch = [
        {"body": json.dumps(crystal_infer(BRIEF_ROWS, id="r1")).encode()},
        {"body": {"crystalData": BRIEF_ROWS}},
        {"body": json.dumps(crystal_infer([[1.0, 2.0]])).encode()},
        {"body": b"not json"},
        # Valid tensors that the model's own validation refuses (no rows): its 422.
        {"body": {"inputs": [{"name": "crystalData", "shape": [0, 4], "datatype": "FP32", "data": []}]}},
    ]
    context.request_headers = {0: V2, 2: V2, 3: V2, 4: dict(V2)}
    bodies = [json.loads(answer) for answer in handler.handle(batch, context)]
    assert [context.status_of(i) for i in range(len(batch))] == [200, 200, 422, 422, 422]
    v2, own = bodies[0], bodies[1]
    assert v2["id"] == "r1" and v2["model_name"] == "crystal_sklearn" and v2["model_version"] == "1"
    label, scores = v2["outputs"]
    assert label["data"] == own["prediction"] and label["shape"] == [len(BRIEF_ROWS)]
    assert answers_close(scores["data"], [s for row in own["scores"] for s in row.values()])
    assert "must be [-1, 4]" in bodies[2]["error"] and "not valid JSON" in bodies[3]["error"]
    assert bodies[4]["code"] == 422 and "crystalData" in bodies[4]["error"]
    assert all(context.headers[i]["x-handler-answer"] == "1" for i in range(len(batch)))


def test_without_the_mark_a_v2_shaped_body_is_an_own_request(crystal_model_dirs: dict[str, Path]) -> None:
    handler, context = crystal_handler(crystal_model_dirs["sklearn"])
    [body] = handler.handle([{"body": json.dumps(crystal_infer(BRIEF_ROWS)).encode()}], context)
    assert context.status_of(0) == 422 and "crystalData" in json.loads(body)["error"]


class _Statuses:
    """A readiness source whose answers a test sets."""

    def __init__(self, states: dict[str, str]) -> None:
        self.states = states

    def __call__(self, name: str) -> str:
        return self.states[name]


def pages(
    states: dict[str, str], skipped: dict[str, str] | None = None
) -> tuple[OpenInferencePages, Readiness]:
    """The v2 pages over a readiness read once from `states`."""
    readiness = Readiness(list(states), _Statuses(states), skipped)
    readiness.refresh()
    codecs = {name: KINDS["crystal"].open_inference for name in [*states, *(skipped or {})]}
    return OpenInferencePages(codecs, readiness), readiness


def test_health_and_model_readiness_are_truthful() -> None:
    v2, readiness = pages(
        {"crystal_sklearn": "ready", "crystal_pytorch": "no READY worker"}, {"topics": "no data"}
    )
    readiness.set_phase("serving")
    assert v2.answer("/v2/health/live") == (200, {"live": True})
    status, body = v2.answer("/v2/health/ready") or (0, {})
    assert status == 503 and body["ready"] is False and "crystal_pytorch" in body["error"]
    assert v2.answer("/v2/models/crystal_sklearn/ready") == (200, {"name": "crystal_sklearn", "ready": True})
    assert v2.answer("/v2/models/crystal_sklearn/versions/1/ready") == (
        200,
        {"name": "crystal_sklearn", "ready": True},
    )
    for name, why in (("crystal_pytorch", "no READY worker"), ("topics", "no data")):
        status, body = v2.answer(f"/v2/models/{name}/ready") or (0, {})
        assert status == 503 and body["ready"] is False and why in body["error"]
    status, body = v2.answer("/v2/models/crystal_sklearn") or (0, {})
    assert status == 200 and body["inputs"] == [{"name": "crystalData", "datatype": "FP32", "shape": [-1, 4]}]
    assert (v2.answer("/v2/models/nope") or (0,))[0] == 404
    assert (v2.answer("/v2/models/crystal_sklearn/versions/2") or (0,))[0] == 404
    assert (v2.answer("/v2/anything") or (0,))[0] == 404
    assert v2.answer("/v2")[1]["name"] == "modelserver"  # type: ignore[index]
    assert v2.answer("/healthcheck") is None and v2.answer("/v2x") is None


def test_a_stopping_server_is_not_ready() -> None:
    v2, readiness = pages({"crystal_sklearn": "ready"})
    readiness.set_phase("serving")
    assert v2.answer("/v2/health/ready") == (200, {"ready": True})
    readiness.set_phase("stopping")
    assert (v2.answer("/v2/health/ready") or (0,))[0] == 503
    assert (v2.answer("/v2/models/crystal_sklearn/ready") or (0,))[0] == 503


def crystal_tensor(datatype: str, data: list[Any], shape: list[int] | None = None) -> dict[str, Any]:
    """A crystal infer body with one input tensor."""
    tensor = {"name": "crystalData", "shape": shape or [1, 4], "datatype": datatype, "data": data}
    return {"inputs": [tensor]}


@pytest.mark.parametrize(
    ("datatype", "data", "says"),
    [
        ("FP32", [1e39, 0, 0, 0], "outside FP32's range"),
        ("FP16", [70000.0, 0, 0, 0], "outside FP16's range"),
        ("INT8", [128, 0, 0, 0], "outside INT8's range (-128 to 127)"),
        ("UINT8", [-1, 0, 0, 0], "outside UINT8's range (0 to 255)"),
        ("INT64", [2**63, 0, 0, 0], "outside INT64's range"),
        ("UINT64", [2**64, 0, 0, 0], "outside UINT64's range"),
        ("INT32", [1.5, 0, 0, 0], "not a whole number"),
        ("UINT16", [0.25, 1, 2, 3], "not a whole number"),
    ],
)
def test_each_datatype_holds_only_its_own_values(datatype: str, data: list[Any], says: str) -> None:
    with pytest.raises(InvalidInput, match="crystalData") as refused:
        CRYSTAL.to_bodies(parse_infer_request(crystal_tensor(datatype, data)))
    assert says in str(refused.value)


@pytest.mark.parametrize(
    ("datatype", "data"),
    [
        ("FP32", [3.4e38, -3.4e38, 0.5, 0]),
        ("FP16", [65504.0, -65504.0, 0.5, 0]),
        ("INT8", [-128, 127, 0, 1]),
        ("UINT8", [0, 255, 1, 2]),
        ("INT64", [-(2**63), 2**63 - 1, 0, 1]),
        ("INT32", [2.0, 3, 0, 1]),  # a whole number written as a float is still one
    ],
)
def test_values_at_a_datatypes_limits_are_taken(datatype: str, data: list[Any]) -> None:
    (body,) = CRYSTAL.to_bodies(parse_infer_request(crystal_tensor(datatype, data)))
    assert len(body["crystalData"]) == 1


def test_nested_data_must_follow_the_declared_shape() -> None:
    rows = [[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]]
    assert (
        len(CRYSTAL.to_bodies(parse_infer_request(crystal_tensor("FP32", rows, [2, 4])))[0]["crystalData"])
        == 2
    )
    deeper = [[[0.1, 0.2], [0.3, 0.4]], [[0.5, 0.6], [0.7, 0.8]]]  # 8 values, but 3 levels for 2
    ragged = [[0.1, 0.2, 0.3], [0.4, 0.5, 0.6, 0.7, 0.8]]  # 8 values in rows of 3 and 5
    for data in (deeper, ragged):
        with pytest.raises(InvalidInput, match="does not follow its shape"):
            CRYSTAL.to_bodies(parse_infer_request(crystal_tensor("FP32", data, [2, 4])))


def test_a_huge_integer_or_too_many_texts_are_422_not_a_crash() -> None:
    huge = {"name": "crystalData", "shape": [1, 4], "datatype": "FP32", "data": [10**310, 0, 0, 0]}
    with pytest.raises(InvalidInput, match="finite number"):
        CRYSTAL.to_bodies(parse_infer_request({"inputs": [huge]}))
    many = parse_infer_request(text_infer(["x"] * (MAX_TEXTS_PER_REQUEST + 1)))
    with pytest.raises(InvalidInput, match="at most 64 elements"):
        TOPICS.to_bodies(many)


def test_a_codec_failure_costs_its_request_only(
    crystal_model_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    handler, context = crystal_handler(crystal_model_dirs["sklearn"])

    def broken(*_: Any) -> Any:
        raise ZeroDivisionError

    monkeypatch.setattr(handler, "_codec", dataclasses.replace(CRYSTAL, answers=broken))
    batch = [{"body": crystal_infer(BRIEF_ROWS)}, {"body": {"crystalData": BRIEF_ROWS}}]
    context.request_headers = {0: V2}
    bodies = [json.loads(answer) for answer in handler.handle(batch, context)]
    assert [context.status_of(0), context.status_of(1)] == [500, 200]
    assert "output tensors" in bodies[0]["error"] and len(bodies[1]["prediction"]) == len(BRIEF_ROWS)


def test_a_nan_in_a_json_answer_is_a_500() -> None:
    from modelserver.errors import ModelFailure  # pylint: disable=import-outside-toplevel

    request = parse_infer_request(text_infer(["a [MASK]"]))
    with pytest.raises(ModelFailure):
        FILL_MASK.to_response("fill_mask", request, [[[{"score": float("nan")}]]], [1])

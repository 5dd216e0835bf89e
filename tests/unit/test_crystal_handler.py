"""The TorchServe handler with a fake context: per-request statuses inside one batch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from handlers.model_handler import ModelHandler
from load_tests.kit.routes import BRIEF_ROWS
from modelserver.kinds.crystal import worker as crystal_worker
from tests.helpers import FakeContext, answers_close, crystal_handler

GOOD = json.dumps({"crystalData": BRIEF_ROWS[:1]}).encode()


def decode(answers: list[bytes]) -> list[Any]:
    """The JSON bodies TorchServe would send."""
    return [json.loads(answer) for answer in answers]


@pytest.mark.parametrize("framework", ["sklearn", "pytorch"])
def test_one_batch_mixes_good_and_bad_requests(crystal_model_dirs: dict[str, Path], framework: str) -> None:
    handler, context = crystal_handler(crystal_model_dirs[framework], framework)
    other = "pytorch" if framework == "sklearn" else "sklearn"
    batch = [
        {"body": GOOD},
        {"body": b'{"crystalData": [[0.1, 0.2]]}'},
        {"body": bytearray(b"not json")},
        {"body": {"crystalData": BRIEF_ROWS, "model": framework}},  # TorchServe-decoded dict
        {"body": json.dumps({"crystalData": BRIEF_ROWS[:1], "model": other}).encode()},
        {"data": GOOD},
    ]
    bodies = decode(handler.handle(batch, context))
    assert [context.status_of(i) for i in range(len(batch))] == [200, 422, 422, 200, 400, 200]
    assert set(context.content_types.values()) == {"application/json"} and len(context.content_types) == 6
    assert answers_close(bodies[0], bodies[5])  # two rows of one batch may round apart
    assert len(bodies[3]["prediction"]) == 3
    assert "crystalData[0] has 2 values" in bodies[1]["error"]
    assert bodies[2]["code"] == 422 and "not valid JSON" in bodies[2]["error"]
    assert other in bodies[4]["error"]


def test_bad_requests_do_not_change_good_answers(crystal_model_dirs: dict[str, Path]) -> None:
    handler, context = crystal_handler(crystal_model_dirs["pytorch"], "pytorch")
    alone = decode(handler.handle([{"body": GOOD}], context))[0]
    mixed = decode(handler.handle([{"body": b"{}"}, {"body": GOOD}, {"body": b"[NaN]"}], context))
    assert mixed[1]["prediction"] == alone["prediction"]
    assert mixed[1]["scores"][0] == pytest.approx(alone["scores"][0], abs=1e-6)


class Boom(RuntimeError):
    """A model crash."""


def test_a_model_that_raises_gives_500_to_valid_requests_only(
    crystal_model_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    handler, context = crystal_handler(crystal_model_dirs["sklearn"], "sklearn")

    def explode(_self: Any, _rows: Any) -> Any:
        raise Boom("kaput")

    classifier = "modelserver.kinds.crystal.sklearn_classifier.SklearnClassifier"
    monkeypatch.setattr(f"{classifier}.predict_proba", explode)
    bodies = decode(handler.handle([{"body": GOOD}, {"body": b"{}"}, {"body": GOOD}], context))
    assert [context.status_of(i) for i in range(3)] == [500, 422, 500]
    assert "crystal_sklearn model failed" in bodies[0]["error"] and "Boom" in bodies[0]["error"]
    assert "kaput" not in bodies[0]["error"]


def test_a_poison_request_fails_alone(
    crystal_model_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the batched call fails, each request is retried alone: only the culprit gets 500."""
    handler, context = crystal_handler(crystal_model_dirs["sklearn"], "sklearn")
    real = crystal_worker.CrystalPredictor.predict

    def fragile(
        self: crystal_worker.CrystalPredictor, requests: list[crystal_worker.CrystalRequest]
    ) -> list[Any]:
        if any(request.crystalData[0][0] == 0.5 for request in requests):
            raise Boom("poison")
        return real(self, requests)

    monkeypatch.setattr(crystal_worker.CrystalPredictor, "predict", fragile)
    poison = json.dumps({"crystalData": [[0.5, 0.5, 0.5, 0.5]]}).encode()
    bodies = decode(handler.handle([{"body": GOOD}, {"body": poison}, {"body": GOOD}], context))
    assert [context.status_of(i) for i in range(3)] == [200, 500, 200]
    assert bodies[0] == bodies[2] and "prediction" in bodies[0]


def test_a_bad_archive_fails_initialize(crystal_model_dirs: dict[str, Path]) -> None:
    context = FakeContext(
        crystal_model_dirs["sklearn"],
        "crystal",
        {"framework": "sklearn", "labels_file": "nope.json"},
        serialized_file="sklearn.model",
    )
    with pytest.raises(ValueError, match=r"nope\.json"):
        ModelHandler().initialize(context)


def test_the_handler_module_defines_exactly_one_class() -> None:
    """TorchServe refuses a handler module with more than one class of its own."""
    import inspect  # pylint: disable=import-outside-toplevel

    from handlers import model_handler  # pylint: disable=import-outside-toplevel

    own = [
        c
        for _, c in inspect.getmembers(model_handler, inspect.isclass)
        if c.__module__ == model_handler.__name__
    ]
    assert own == [ModelHandler]


def test_a_validation_bug_costs_only_its_own_request(
    crystal_model_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    handler, context = crystal_handler(crystal_model_dirs["sklearn"], "sklearn")
    real = crystal_worker.CrystalPredictor.parse

    def buggy(self: crystal_worker.CrystalPredictor, payload: Any) -> crystal_worker.CrystalRequest:
        if payload.get("trip"):
            raise KeyError("bug")
        return real(self, payload)

    monkeypatch.setattr(crystal_worker.CrystalPredictor, "parse", buggy)
    trip = json.dumps({"crystalData": BRIEF_ROWS[:1], "trip": 1}).encode()
    bodies = decode(handler.handle([{"body": GOOD}, {"body": trip}], context))
    assert [context.status_of(i) for i in range(2)] == [200, 500]
    assert "prediction" in bodies[0] and bodies[1]["error"]

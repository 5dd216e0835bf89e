"""The crystal model kind without TorchServe: loading, validation, prediction."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
import torch

from load_tests.kit.routes import BRIEF_ROWS
from modelserver.errors import BadRequest, ConfigError, InvalidInput, ModelFailure
from modelserver.kinds.crystal import CrystalSettings
from modelserver.kinds.crystal.torch_classifier import CrystalNet
from modelserver.kinds.crystal.worker import CrystalPredictor, load_classifier, load_crystal_predictor
from tests.helpers import SEED_CRYSTAL, answers_close, model_files

FRAMEWORKS = ("sklearn", "pytorch")
SETTINGS = {"labels_file": "crystal_labels.json"}


def predictor(dirs: dict[str, Path], framework: str, **settings: Any) -> CrystalPredictor:
    """A predictor for one of the default models."""
    config = {**SETTINGS, "framework": framework, **settings}
    return load_crystal_predictor(model_files(CrystalSettings, dirs[framework], config, f"{framework}.model"))


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_answers_follow_the_brief(crystal_model_dirs: dict[str, Path], framework: str) -> None:
    model = predictor(crystal_model_dirs, framework)
    answer = model.predict([model.parse({"crystalData": BRIEF_ROWS})])[0]
    assert len(answer["prediction"]) == len(answer["scores"]) == 3
    for label, scores in zip(answer["prediction"], answer["scores"], strict=True):
        assert list(scores) == ["blue", "green", "yellow"]
        assert sum(scores.values()) == pytest.approx(1.0, abs=1e-6)
        assert label == max(scores, key=scores.__getitem__)
        assert all(0.0 <= p <= 1.0 for p in scores.values())


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_batch_gives_each_request_its_own_answer(
    crystal_model_dirs: dict[str, Path], framework: str
) -> None:
    model = predictor(crystal_model_dirs, framework)
    requests = [model.parse({"crystalData": [row]}) for row in BRIEF_ROWS]
    batched = model.predict(requests)
    alone = [model.predict([request])[0] for request in requests]
    assert [a["prediction"] for a in batched] == [a["prediction"] for a in alone]
    for got, want in zip(batched, alone, strict=True):
        assert got["scores"][0] == pytest.approx(want["scores"][0], abs=1e-6)


def test_defaults_tell_the_classes_apart(crystal_model_dirs: dict[str, Path]) -> None:
    """The default models are trained, not random: scaled iris rows of each class are recognised."""
    rows = [[0.22, 0.62, 0.07, 0.04], [0.56, 0.38, 0.58, 0.54], [0.72, 0.46, 0.84, 0.92]]
    for framework in FRAMEWORKS:
        model = predictor(crystal_model_dirs, framework)
        answer = model.predict([model.parse({"crystalData": rows})])[0]
        assert answer["prediction"] == ["blue", "green", "yellow"], framework


ANOMALIES = {
    "not an object": [[0.1, 0.2, 0.3, 0.4]],
    "missing crystalData": {"data": [[0.1, 0.2, 0.3, 0.4]]},
    "extra field": {"crystalData": [[0.1, 0.2, 0.3, 0.4]], "colour": "red"},
    "not a list": {"crystalData": "0.1,0.2,0.3,0.4"},
    "empty list": {"crystalData": []},
    "empty row": {"crystalData": [[]]},
    "flat row": {"crystalData": [0.1, 0.2, 0.3, 0.4]},
    "nested rows": {"crystalData": [[[0.1, 0.2, 0.3, 0.4]]]},
    "short row": {"crystalData": [[0.1, 0.2, 0.3]]},
    "long row": {"crystalData": [[0.1, 0.2, 0.3, 0.4, 0.5]]},
    "second row bad": {"crystalData": [[0.1, 0.2, 0.3, 0.4], [0.1, 0.2]]},
    "string": {"crystalData": [["a", 0.2, 0.3, 0.4]]},
    "numeric string": {"crystalData": [["0.1", 0.2, 0.3, 0.4]]},
    "null": {"crystalData": [[None, 0.2, 0.3, 0.4]]},
    "null data": {"crystalData": None},
    "boolean": {"crystalData": [[True, 0.2, 0.3, 0.4]]},
    "object": {"crystalData": [[{"v": 1}, 0.2, 0.3, 0.4]]},
    "nan": {"crystalData": [[float("nan"), 0.2, 0.3, 0.4]]},
    "infinity": {"crystalData": [[float("inf"), 0.2, 0.3, 0.4]]},
    "huge integer": {"crystalData": [[10**400, 0.2, 0.3, 0.4]]},
    "model not a string": {"crystalData": [[0.1, 0.2, 0.3, 0.4]], "model": 3},
}


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("case", sorted(ANOMALIES))
def test_anomalies_are_invalid_input(crystal_model_dirs: dict[str, Path], framework: str, case: str) -> None:
    model = predictor(crystal_model_dirs, framework)
    with pytest.raises(InvalidInput) as caught:
        model.parse(ANOMALIES[case])
    assert caught.value.status == 422
    assert caught.value.message


def test_row_limit_is_enforced(crystal_model_dirs: dict[str, Path]) -> None:
    model = predictor(crystal_model_dirs, "sklearn", max_rows=2)
    with pytest.raises(InvalidInput, match="at most 2 rows"):
        model.parse({"crystalData": BRIEF_ROWS})


def test_a_model_field_for_another_model_is_a_bad_request(crystal_model_dirs: dict[str, Path]) -> None:
    model = predictor(crystal_model_dirs, "sklearn")
    assert model.parse({"crystalData": BRIEF_ROWS, "model": "sklearn"}).model == "sklearn"
    with pytest.raises(BadRequest, match="pytorch") as caught:
        model.parse({"crystalData": BRIEF_ROWS, "model": "pytorch"})
    assert caught.value.status == 400


def test_non_finite_model_output_is_a_model_failure(
    crystal_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    net = CrystalNet()
    with torch.no_grad():
        net.layer3.weight.fill_(float("nan"))
    torch.save(net.state_dict(), tmp_path / "nan.model")
    shutil.copy(crystal_model_dirs["pytorch"] / "crystal_labels.json", tmp_path)
    model = load_crystal_predictor(
        model_files(CrystalSettings, tmp_path, {**SETTINGS, "framework": "pytorch"}, "nan.model")
    )
    answers = model.predict([model.parse({"crystalData": BRIEF_ROWS})])
    answer = answers[0]
    assert len(answers) == 1 and isinstance(answer, ModelFailure) and "not finite" in str(answer)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy's overflow: the point here
@pytest.mark.parametrize(("framework", "huge"), [("pytorch", 1e39), ("sklearn", 1e308)])
def test_values_too_large_to_score_fail_only_their_request_with_422(
    crystal_model_dirs: dict[str, Path], framework: str, huge: float
) -> None:
    model = predictor(crystal_model_dirs, framework)
    good = model.parse({"crystalData": BRIEF_ROWS})
    bad = model.parse({"crystalData": [[huge, huge, huge, huge]]})
    alone = model.predict([good])[0]
    answers = model.predict([bad, good])
    assert len(answers) == 2
    overflowed, answered = answers[0], answers[1]
    assert isinstance(overflowed, InvalidInput) and overflowed.status == 422
    assert "too large" in str(overflowed)
    assert answers_close(answered, alone)  # batched with `bad`: its own rounding, same answer


def test_labels_must_match_the_classes(crystal_model_dirs: dict[str, Path], tmp_path: Path) -> None:
    shutil.copy(crystal_model_dirs["sklearn"] / "sklearn.model", tmp_path)
    (tmp_path / "crystal_labels.json").write_text(json.dumps(["blue", "green"]))
    with pytest.raises(ConfigError, match="2 labels for a model with 3 classes"):
        load_crystal_predictor(
            model_files(CrystalSettings, tmp_path, {**SETTINGS, "framework": "sklearn"}, "sklearn.model")
        )


@pytest.mark.parametrize(
    "settings",
    [{"framework": "tensorflow"}, {"framework": "sklearn", "threads": 0}, {"framework": "sklearn", "x": 1}],
)
def test_bad_settings_fail_the_load(crystal_model_dirs: dict[str, Path], settings: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="bad handler settings"):
        load_crystal_predictor(
            model_files(CrystalSettings, crystal_model_dirs["sklearn"], settings, "sklearn.model")
        )


def test_torch_loading_refuses_pickled_objects(tmp_path: Path) -> None:
    """`weights_only=True`: a file that would run code on load is refused, not executed."""
    torch.save(
        {"layer1.weight": torch.zeros(50, 4), "extra": CrystalSettings(framework="sklearn")},
        tmp_path / "evil.model",
    )
    with pytest.raises(ConfigError, match=r"cannot load evil\.model"):
        load_classifier("pytorch", tmp_path / "evil.model", 1)


def test_torch_state_dict_must_fit_the_architecture(tmp_path: Path) -> None:
    torch.save({"fc.weight": torch.zeros(3, 4)}, tmp_path / "other.model")
    with pytest.raises(ConfigError, match="not a crystal MLP"):
        load_classifier("pytorch", tmp_path / "other.model", 1)
    state = CrystalNet().state_dict()
    state["layer2.weight"] = torch.zeros(7, 7)
    torch.save(state, tmp_path / "misfit.model")
    with pytest.raises(ConfigError, match="does not fit"):
        load_classifier("pytorch", tmp_path / "misfit.model", 1)


def test_sklearn_loading_requires_a_fitted_classifier(tmp_path: Path) -> None:
    joblib.dump({"not": "a model"}, tmp_path / "dict.model")
    with pytest.raises(ConfigError, match="predict_proba"):
        load_classifier("sklearn", tmp_path / "dict.model", 1)
    (tmp_path / "garbage.model").write_bytes(b"not a joblib file")
    with pytest.raises(ConfigError, match=r"cannot load garbage\.model"):
        load_classifier("sklearn", tmp_path / "garbage.model", 1)


@pytest.mark.skipif(not SEED_CRYSTAL.exists(), reason="../shared/seed_data/crystal is absent (fresh clone)")
def test_the_briefs_own_model_files_load_and_answer_as_the_brief_says() -> None:
    rows = np.array(BRIEF_ROWS)
    sklearn_model = load_classifier("sklearn", SEED_CRYSTAL / "sklearn.model", 1)
    # The brief's sample answers for these rows (its README, batch example, first two rows).
    expected = [
        [0.9927769331813387, 0.007223053394387628, 1.3424273700413213e-8],
        [0.9924667517303258, 0.007533175370560812, 7.28991131694263e-8],
    ]
    assert sklearn_model.predict_proba(rows)[:2] == pytest.approx(np.array(expected), abs=1e-9)
    torch_model = load_classifier("pytorch", SEED_CRYSTAL / "pytorch.model", 1)
    assert (torch_model.n_features, torch_model.n_classes) == (4, 3)
    assert torch_model.predict_proba(rows).sum(axis=1) == pytest.approx(np.ones(3), abs=1e-6)

"""Bring your own model: the brief's original files served through CRYSTAL_*_MODEL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests

from load_tests.kit.routes import BRIEF_ROWS
from load_tests.kit.stack import Launcher, running
from modelserver.kinds.crystal.worker import load_classifier
from tests.helpers import SEED_CRYSTAL

pytestmark = pytest.mark.skipif(
    not SEED_CRYSTAL.exists(), reason="../shared/seed_data/crystal is absent (fresh clone): nothing to bring"
)


@pytest.fixture(scope="module", name="seed_stack")
def fixture_seed_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launcher]:
    """A stack serving the brief's own model files, brought in through the environment."""
    env = {
        "CRYSTAL_SKLEARN_MODEL": str(SEED_CRYSTAL / "sklearn.model"),
        "CRYSTAL_PYTORCH_MODEL": str(SEED_CRYSTAL / "pytorch.model"),
    }
    launcher = Launcher(
        tmp_path_factory.mktemp("seed"), env=env, models=("crystal_sklearn", "crystal_pytorch")
    )
    with running(launcher) as live:
        yield live


@pytest.mark.parametrize("framework", ["sklearn", "pytorch"])
def test_served_scores_equal_the_model_file_loaded_directly(seed_stack: Launcher, framework: str) -> None:
    expected = load_classifier(framework, SEED_CRYSTAL / f"{framework}.model", 1).predict_proba(
        np.array(BRIEF_ROWS)
    )
    for path, extra in ((f"/{framework}", {}), ("/astromech", {"model": framework})):
        response = requests.post(
            f"{seed_stack.url}{path}", json={"crystalData": BRIEF_ROWS, **extra}, timeout=10
        )
        assert response.status_code == 200, response.text
        answer = response.json()
        served = np.array([[s["blue"], s["green"], s["yellow"]] for s in answer["scores"]])
        assert served == pytest.approx(expected, abs=1e-6)
        assert answer["prediction"] == [["blue", "green", "yellow"][i] for i in expected.argmax(axis=1)]


def test_the_briefs_sample_answer(seed_stack: Launcher) -> None:
    """Brief 003's batch example, first two rows, from its own sklearn model."""
    response = requests.post(f"{seed_stack.url}/sklearn", json={"crystalData": BRIEF_ROWS[:2]}, timeout=10)
    answer = response.json()
    assert answer["prediction"] == ["blue", "blue"]
    assert answer["scores"][0] == pytest.approx(
        {"blue": 0.9927769331813387, "green": 0.007223053394387628, "yellow": 1.3424273700413213e-08},
        abs=1e-9,
    )
    assert answer["scores"][1]["blue"] == pytest.approx(0.9924667517303258, abs=1e-9)


def test_the_archives_record_where_the_models_came_from(seed_stack: Launcher) -> None:
    records = seed_stack.workdir / "model_store" / ".builds"
    for name in ("crystal_sklearn", "crystal_pytorch"):
        assert "from CRYSTAL_" in (records / f"{name}.json").read_text()
    assert Path(seed_stack.workdir / "model_store" / "crystal_sklearn.mar").exists()

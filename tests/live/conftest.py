"""The live stack: the real launcher, TorchServe and Envoy, once per test session.

Archives are built in a temporary folder from the project's catalogue, plus one model that
raises while predicting (`crystal_broken`) so the 500 path is exercised for real.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from load_tests.kit.stack import Launcher, running, write_catalogue
from load_tests.kit.topics_corpus import write_corpus


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test in this folder starts the stack: `pytest -m "not live"` runs the rest."""
    live = Path(__file__).parent
    for item in items:
        if live in item.path.parents:
            item.add_marker(pytest.mark.live)


def write_broken_model(path: Path) -> Path:
    """A fitted LogisticRegression whose coefficients no longer fit its inputs: predict raises."""
    rng = np.random.default_rng(0)
    model = LogisticRegression().fit(rng.random((30, 4)), np.arange(30) % 3)
    model.coef_ = np.zeros((3, 5))
    joblib.dump(model, path)
    return path


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_hf_models: dict[str, Path]) -> Iterator[Launcher]:
    """A running stack on free loopback ports: every catalogue model (the language models from
    tiny folders, brought in through their variables) plus one that raises."""
    workdir = tmp_path_factory.mktemp("stack")
    broken = {
        "crystal_broken": {
            "kind": "crystal",
            "source": {"default": str(write_broken_model(workdir / "broken.model"))},
            "extra_files": ["modelserver/kinds/crystal_labels.json"],
            "handler_config": {"framework": "sklearn", "labels_file": "crystal_labels.json"},
            "torchserve": {"batchSize": 4, "maxBatchDelay": 5},
        }
    }
    # One text per streamed chunk, so a streamed answer is many chunks even on tiny models.
    streaming = {"stream_chunk": 1, "max_request_tokens": 8192}
    catalogue = write_catalogue(workdir / "models.yaml", broken, handler_config={"fill_mask": streaming})
    env = {f"{name.upper()}_MODEL": str(folder) for name, folder in tiny_hf_models.items()}
    train, test = write_corpus(workdir / "topics")
    env.update(TOPICS_TRAIN=str(train), TOPICS_TEST=str(test))
    launcher = Launcher(workdir, catalogue=catalogue, env=env)
    with running(launcher) as live:
        yield live


@pytest.fixture(name="crystal_stack", scope="module")
def crystal_stack_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launcher]:
    """A stack of the module's own on the two crystal models only (they load in seconds), for
    tests that break it or flood it and so must not share the session's stack."""
    with running(
        Launcher(tmp_path_factory.mktemp("crystal"), models=("crystal_sklearn", "crystal_pytorch"))
    ) as live:
        yield live

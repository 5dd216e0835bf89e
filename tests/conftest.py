"""Fixtures shared by every test layer: the project's default crystal models, trained once."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from modelserver.build.export import export
from modelserver.kinds.text import TextModelSettings
from modelserver.project import PROJECT_ROOT
from modelserver.tools.tiny_models import (
    make_bert_fill_mask,
    make_camembert_fill_mask,
    make_distilbert_sentiment,
)
from modelserver.training import run_recipe

TINY_KINDS = {"fill_mask": "fill_mask", "camembert": "fill_mask", "sentiment": "text_classification"}
LABELS_FILE = PROJECT_ROOT / "modelserver" / "kinds" / "crystal_labels.json"


@pytest.fixture(scope="session")
def crystal_model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Unpacked-archive-like folders (model file + labels) for both default crystal models."""
    dirs = {}
    for framework in ("sklearn", "pytorch"):
        folder = tmp_path_factory.mktemp(f"crystal_{framework}")
        run_recipe(f"crystal_{framework}_iris", folder / f"{framework}.model")
        shutil.copy(LABELS_FILE, folder / "crystal_labels.json")
        dirs[framework] = folder
    return dirs


@pytest.fixture(scope="session")
def tiny_hf_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny from_pretrained folders: BERT and CamemBERT masked LMs, a DistilBERT classifier,
    each exported to the compiled runtime (and parity-checked) as the archive build does."""
    root = tmp_path_factory.mktemp("tiny_hf")
    # Each in <name>/model: the layout of an unpacked archive, so predictors load them directly.
    folders = {
        "fill_mask": make_bert_fill_mask(root / "bert" / "model"),
        "camembert": make_camembert_fill_mask(root / "camembert" / "model"),
        "sentiment": make_distilbert_sentiment(root / "sentiment" / "model"),
    }
    for name, folder in folders.items():
        report = export(TINY_KINDS[name], folder.parent, TextModelSettings())
        assert report.passed, (name, report.problems)
    return folders


@pytest.fixture(scope="session", name="pipelines")
def fixture_pipelines(tiny_hf_models: dict[str, Path]) -> dict[str, Any]:
    """The reference: transformers pipelines on the very tiny folders the predictors and the stack serve."""
    from transformers import pipeline  # pylint: disable=import-outside-toplevel

    tasks = {"fill_mask": "fill-mask", "camembert": "fill-mask", "sentiment": "text-classification"}
    return {
        name: pipeline(task, model=str(tiny_hf_models[name]), tokenizer=str(tiny_hf_models[name]))
        for name, task in tasks.items()
    }

"""Training recipes: models the project trains itself when no model is brought.

`RECIPES` maps a catalogue `recipe:` name to the module whose `train(path)` writes the model.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

RECIPES: dict[str, str] = {
    "crystal_sklearn_iris": "modelserver.training.crystal_sklearn_iris",
    "crystal_pytorch_iris": "modelserver.training.crystal_pytorch_iris",
    "topics_newsgroups": "modelserver.training.topics",
}


def run_recipe(name: str, output: Path, inputs: dict[str, Path] | None = None) -> dict[str, Any]:
    """Train with recipe `name` (on `inputs`, for recipes that read data), write the model to
    `output`, return what the recipe reports about it."""
    module = importlib.import_module(RECIPES[name])
    return module.train(output, inputs) if inputs else module.train(output)

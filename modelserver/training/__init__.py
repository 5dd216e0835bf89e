"""Training recipes: models the project trains itself when no model is brought.

`RECIPES` maps a catalogue `recipe:` name to the module whose `train(path)` writes the model.
"""

from __future__ import annotations

import importlib
from pathlib import Path

RECIPES: dict[str, str] = {
    "crystal_sklearn_iris": "modelserver.training.crystal_sklearn_iris",
    "crystal_pytorch_iris": "modelserver.training.crystal_pytorch_iris",
}


def run_recipe(name: str, output: Path) -> dict[str, float]:
    """Train with recipe `name`, write the model to `output`, return its evaluation."""
    return importlib.import_module(RECIPES[name]).train(output)

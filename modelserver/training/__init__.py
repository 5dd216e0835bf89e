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


def recipe_module_file(name: str) -> Path:
    """The source file of a recipe, so a changed recipe rebuilds its archive."""
    spec = importlib.util.find_spec(RECIPES[name])
    if spec is None or spec.origin is None:
        raise KeyError(name)
    return Path(spec.origin)


def run_recipe(name: str, output: Path) -> dict[str, float]:
    """Train with recipe `name`, write the model to `output`, return its evaluation."""
    return importlib.import_module(RECIPES[name]).train(output)

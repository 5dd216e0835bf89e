"""The model catalogue (`models.yaml`), parsed once into typed entries."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from modelserver.errors import ConfigError
from modelserver.training import RECIPES
from modelserver.validation import first_problem

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CATALOGUE = PROJECT_ROOT / "models.yaml"


class SourceSpec(BaseModel):
    """Where a model comes from: a user's variable, else a default path/id, else a recipe."""

    model_config = ConfigDict(extra="forbid")

    env: str | None = None
    default: str | None = None
    recipe: str | None = None

    @model_validator(mode="after")
    def _has_fallback(self) -> SourceSpec:
        if (self.default is None) == (self.recipe is None):
            raise ValueError("give exactly one of 'default' or 'recipe'")
        if self.recipe is not None and self.recipe not in RECIPES:
            raise ValueError(f"unknown recipe {self.recipe!r}; known: {sorted(RECIPES)}")
        return self


class TorchServeSettings(BaseModel):
    """TorchServe's per-model settings, written into model-config.yaml as they are."""

    model_config = ConfigDict(extra="forbid")

    minWorkers: int = Field(default=1, ge=1)
    maxWorkers: int = Field(default=1, ge=1)
    batchSize: int = Field(default=1, ge=1)
    maxBatchDelay: int = Field(default=5, ge=1)  # 0 is silently turned into 100 by TorchServe
    responseTimeout: int = Field(default=30, ge=1)

    @model_validator(mode="after")
    def _workers_in_order(self) -> TorchServeSettings:
        if self.maxWorkers < self.minWorkers:  # TorchServe would ignore minWorkers
            raise ValueError("maxWorkers must be >= minWorkers")
        return self


class ModelEntry(BaseModel):
    """One catalogue entry: everything needed to build and serve one model."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    handler: str
    source: SourceSpec
    extra_files: list[str] = Field(default_factory=list)
    handler_config: dict[str, Any] = Field(default_factory=dict)
    torchserve: TorchServeSettings = Field(default_factory=TorchServeSettings)
    archive_format: Literal["default", "no-archive"] = "default"


@dataclass(frozen=True)
class Source:
    """A resolved source: a file or folder to package, or a recipe to run."""

    path: Path | None = None
    recipe: str | None = None
    origin: str = "default"

    def describe(self) -> str:
        """Human wording for logs and build records."""
        what = f"recipe {self.recipe}" if self.recipe else str(self.path)
        return f"{what} ({self.origin})"


def resolve_source(entry: ModelEntry, environ: Mapping[str, str], root: Path = PROJECT_ROOT) -> Source:
    """Pick the model source: `$ENV` if set (it must exist), else the catalogue default."""
    spec = entry.source
    chosen = environ.get(spec.env, "") if spec.env else ""
    if chosen:
        path = Path(chosen).expanduser().resolve()
        if not path.exists():
            raise ConfigError(f"{spec.env}={chosen} does not exist")
        return Source(path=path, origin=f"from {spec.env}")
    if spec.recipe:
        return Source(recipe=spec.recipe, origin="trained by the project")
    return Source(path=(root / str(spec.default)).resolve(), origin="catalogue default")


class Catalogue(BaseModel):
    """All models, by name."""

    model_config = ConfigDict(extra="forbid")

    models: dict[str, ModelEntry]

    @classmethod
    def load(cls, path: Path = DEFAULT_CATALOGUE) -> Catalogue:
        """Parse and validate a catalogue file; a bad one fails with the first problem."""
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as error:
            raise ConfigError(f"cannot read catalogue {path}: {error}") from None
        if isinstance(raw, dict) and isinstance(raw.get("models"), dict):
            for name, entry in raw["models"].items():
                if isinstance(entry, dict):
                    entry.setdefault("name", name)
        try:
            return cls.model_validate(raw)
        except ValidationError as error:
            raise ConfigError(f"{path}: {first_problem(error)}") from None

    def entry(self, name: str) -> ModelEntry:
        """The entry called `name`, or a `ConfigError` listing the known ones."""
        if name not in self.models:
            raise ConfigError(f"no model {name!r} in the catalogue; known: {sorted(self.models)}")
        return self.models[name]


def environment() -> dict[str, str]:
    """A snapshot of the process environment, read once by the CLI entry points."""
    return dict(os.environ)

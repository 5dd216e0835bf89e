"""Model kinds: one package per kind (`crystal`, `fill_mask`, `text_classification`, `topics`).

A kind's package top level is framework-free (settings, request and answer schemas, v2 codec,
example, errors and its `Kind` declaration); its `worker` module (and, for a compiled kind, its
`export` module) turns an unpacked archive into a predictor. `registry.py` lists the kinds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from pydantic import BaseModel

MODEL_SUBDIR = "model"  # where a folder model (from_pretrained format) sits inside an archive

SettingsT = TypeVar("SettingsT", bound=BaseModel)


@dataclass(frozen=True)
class ModelFiles(Generic[SettingsT]):
    """What a kind's loader gets from an unpacked archive, whatever the server."""

    model_dir: Path
    settings: SettingsT  # the `handler:` section, parsed once by the kind's settings model
    model_file: str = ""  # the serialized file's name; '' for a folder model under model/
    names: tuple[str, ...] = ()  # names a request may use for this model, served name first
    gpu_id: int | None = None  # the GPU the server gave this worker, if any

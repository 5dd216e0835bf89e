"""Model kinds: each module turns an unpacked archive into a runtime that parses and predicts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MODEL_SUBDIR = "model"  # where a folder model (from_pretrained format) sits inside an archive


@dataclass(frozen=True)
class ModelFiles:
    """What a kind's loader gets from an unpacked archive, whatever the server."""

    model_dir: Path
    model_file: str = ""  # the serialized file's name; '' for a folder model under model/
    settings: dict[str, Any] = field(default_factory=dict)  # the `handler:` section
    names: tuple[str, ...] = ()  # names a request may use for this model, served name first
    gpu_id: int | None = None  # the GPU the server gave this worker, if any

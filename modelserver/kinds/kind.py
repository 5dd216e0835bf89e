"""What a model kind declares: everything the launcher, the catalogue, the OpenAPI document, the
archive build and the one generic handler need to know of it.

Framework-free: the worker part of a kind (which may import torch) and its build-time export
are named as "module:function" strings and imported only when called, in a model worker or in
the build's export child.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel

from modelserver.kinds import ModelFiles
from modelserver.kinds.comparison import Compare
from modelserver.protocols.open_inference import TensorCodec


def _imported(target: str) -> Any:
    """The function a "module:function" string names, its module imported now."""
    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)


class ExportReport(Protocol):
    """What a kind's export returns: whether the compiled graph may serve, and why not."""

    @property
    def passed(self) -> bool:
        """Whether the compiled forward pass may serve."""

    @property
    def first_problem(self) -> str:
        """Why it may not serve."""

    def as_json(self) -> dict[str, Any]:
        """The report as the build prints it."""


@dataclass(frozen=True)
class Kind:  # pylint: disable=too-many-instance-attributes  # a declaration: one field per fact
    """One model kind: how a worker loads it, how the build compiles it, and what the public API
    says about it."""

    loader: str  # "module:function" taking `ModelFiles`, returning the kind's `Predictor`
    settings: type[BaseModel]  # the `handler_config` / model-config.yaml `handler:` section
    request: type[BaseModel]
    answer: type[BaseModel]
    errors: dict[int, str]  # documented failures, besides the ones every route has
    example: dict[str, Any]  # a request body for the API document
    # "module:function" taking (archive folder, settings) and returning an `ExportReport`, for
    # a kind whose forward pass compiles at build (run in the build's export child only).
    export: str | None = None
    # The Hugging Face Inference API's body (`inputs`, `parameters`) and its answer, for the
    # kinds that also take that shape.
    hf_request: type[BaseModel] | None = None
    hf_answer: type[BaseModel] | None = None
    # Its tensors and their mapping in the Open Inference Protocol (/v2/models/{name}/infer).
    open_inference: TensorCodec | None = None
    # How a candidate's answer compares with the primary's to the same request (shadow traffic).
    compare: Compare | None = None

    def load(self, files: ModelFiles[Any]) -> Any:
        """Import the kind's worker part (only now: it may load torch) and build its predictor."""
        return _imported(self.loader)(files)

    def compile(self, archive_dir: Path, settings: BaseModel) -> ExportReport:
        """Export the forward pass into `archive_dir` and check its parity with eager (build
        time only: the export imports torch and OpenVINO)."""
        if self.export is None:
            raise ValueError("this kind has no compiled forward pass")
        report: ExportReport = _imported(self.export)(archive_dir, settings)
        return report

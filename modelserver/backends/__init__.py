"""Backends: where a transformer's forward pass runs, PyTorch eager or OpenVINO compiled at build.

This package's top level imports neither torch nor OpenVINO: the archive builder reads these
facts to decide what to compile; only a model worker (or the export child) loads a framework.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

BackendName = Literal["torch", "openvino"]
# OpenVINO was measured fastest of the fp32 backends on the same weights (docs/BENCHMARKS.md).
DEFAULT_BACKEND: BackendName = "openvino"
COMPILED_SUBDIR = "compiled"  # beside model/ inside an archive: the exported graph and its parity report
PARITY_REPORT = "parity.json"


@dataclass(frozen=True)
class Placement:
    """The backend and device a worker uses, and why (logged once at load)."""

    backend: BackendName
    device: str
    reason: str


def place(requested: BackendName, gpu_id: int | None, cuda_available: bool) -> Placement:
    """A worker TorchServe gave a GPU runs on it; otherwise the requested backend on the CPU.

    The compiled backend is CPU-only here (OpenVINO's GPU plugin drives Intel GPUs, not the
    CUDA devices TorchServe hands out), so on a CUDA GPU the model runs in PyTorch on it.
    """
    if gpu_id is None:
        return Placement(requested, "cpu", "no GPU given to this worker")
    if not cuda_available:
        return Placement(requested, "cpu", f"GPU {gpu_id} assigned but CUDA is not available; on the CPU")
    return Placement("torch", f"cuda:{gpu_id}", f"GPU {gpu_id} assigned: PyTorch on CUDA")


@runtime_checkable
class BackendSettings(Protocol):
    """The settings of a kind whose forward pass runs on a backend (and so may be compiled)."""

    backend: BackendName

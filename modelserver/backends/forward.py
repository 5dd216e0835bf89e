"""A model's forward pass behind one call, whatever runs it: token ids and mask in, a tensor out.

`TorchForward` runs a torch module (on the CPU or a CUDA device); `OpenVinoForward` runs a
graph exported at archive build. Both take and return torch tensors, so the kinds' code around
them (softmax, top-k, formatting) is the same for every backend. A worker that runs compiled
graphs never builds the PyTorch model nor imports its modelling code, which is most of a text
worker's start time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch

from modelserver.backends import COMPILED_SUBDIR, Placement
from modelserver.errors import ConfigError

log = logging.getLogger(__name__)

OPENVINO_FILE = "openvino_model.xml"
# Fill-mask's masked-LM head: hidden states at the mask positions to vocabulary logits.
OPENVINO_HEAD_FILE = "openvino_head.xml"


class Forward(Protocol):
    """(input_ids, attention_mask) -> the graph's one output, on `device`."""

    device: torch.device

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Run the graph on one padded batch."""


class Graph(torch.nn.Module):
    """The exported part of a Hugging Face model: ids and mask to one named output, so the
    same module runs eagerly and is what the compiled backend converts."""

    def __init__(self, model: torch.nn.Module, output: str) -> None:
        super().__init__()
        self.model = model
        self.output = output

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The named output (`last_hidden_state`, `logits`) of the wrapped model."""
        return getattr(self.model(input_ids=input_ids, attention_mask=attention_mask), self.output)


class TorchForward:
    """PyTorch eager, in inference mode, on the placement's device."""

    def __init__(self, graph: Graph, device: str) -> None:
        self.device = torch.device(device)
        self.graph = graph.to(self.device).eval()

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.graph(input_ids.to(self.device), attention_mask.to(self.device))


class OpenVinoForward:
    """A graph OpenVINO compiled from the archive's export, in fp32, with `threads` threads
    and one stream (a worker never takes every core of the machine): its inputs in order, its
    one output."""

    device = torch.device("cpu")

    def __init__(self, xml: Path, threads: int) -> None:
        import openvino  # pylint: disable=import-outside-toplevel

        if not xml.is_file():
            raise ConfigError(
                f"runtime openvino: no exported graph {xml.parent.name}/{xml.name} in the archive; "
                "rebuild it (make archives) or set runtime: torch"
            )
        compiled = openvino.Core().compile_model(
            str(xml),
            "CPU",
            {
                "INFERENCE_NUM_THREADS": threads,
                "NUM_STREAMS": 1,
                "PERFORMANCE_HINT": "LATENCY",
                # Several single-thread workers on one machine must not be pinned to one core.
                "ENABLE_CPU_PINNING": False,
                # Without the hint a CPU with bf16 or AMX would run the graph in bf16.
                "INFERENCE_PRECISION_HINT": "f32",
            },
        )
        self._request = compiled.create_infer_request()

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        # The inputs are read in place; the output is copied out of the request's buffer,
        # which the next call reuses.
        outputs = self._request.infer([tensor.contiguous().numpy() for tensor in inputs], share_inputs=True)
        return torch.from_numpy(next(iter(outputs.values())))


def compiled_graph(model_dir: Path, name: str = OPENVINO_FILE) -> Path:
    """Where an archive holds an exported OpenVINO graph."""
    return model_dir / COMPILED_SUBDIR / name


def load_forward(
    placement: Placement, model_dir: Path, threads: int, eager_graph: Callable[[], Graph]
) -> Forward:
    """The forward pass the placement asks for (logged once: which backend, where, why); the
    eager graph, and so the PyTorch model, is built only when PyTorch runs it."""
    log.info("forward pass: %s on %s (%s)", placement.backend, placement.device, placement.reason)
    if placement.backend == "openvino":
        return OpenVinoForward(compiled_graph(model_dir), threads)
    return TorchForward(eager_graph(), placement.device)

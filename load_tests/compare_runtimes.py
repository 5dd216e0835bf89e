"""ONNX Runtime against OpenVINO against PyTorch eager on the same weights: the measurement
behind the default compiled runtime.

    .venv/bin/python -m load_tests.compare_runtimes [--seconds 3] [--rounds 3] [--out FILE]

The bert-base-uncased-shaped encoder (random weights, fp32, 2 threads, 14-token sentences) at
batch 1 / 8 / 16, each runtime in turn within every round (so a shared machine's drift hits all
alike); medians over rounds, and the largest difference of the last hidden state from eager.
ONNX Runtime is not a dependency of the server: install it for this measurement only
(`pip install onnxruntime==1.32.0 onnx==1.23.2 onnxscript==0.7.2`); without it that column is
left out and the script says so. Prints a table, writes JSON with the CPU and its ISA flags.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from load_tests.bench.report import machine
from load_tests.bench.timing_model import build_timing_model
from modelserver.backends.forward import Graph, OpenVinoForward
from modelserver.kinds.text.export import convert

Run = Callable[[np.ndarray, np.ndarray], np.ndarray]
BATCHES = (1, 8, 16)
TOKENS = 14
THREADS = 2


def onnxruntime_run(graph: Graph, example: tuple[torch.Tensor, torch.Tensor], work: Path) -> Run:
    """The graph exported by torch.onnx (dynamic batch and length), in ONNX Runtime with every
    graph optimisation, 2 intra-op threads."""
    import onnxruntime  # pylint: disable=import-outside-toplevel,import-error  # optional: see above

    path = work / "encoder.onnx"
    dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("tokens")}
    torch.onnx.export(
        graph,
        example,
        str(path),
        input_names=["input_ids", "attention_mask"],
        dynamic_shapes={"input_ids": dims, "attention_mask": dims},
        dynamo=True,
    )
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = THREADS, 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda ids, mask: session.run(None, {"input_ids": ids, "attention_mask": mask})[0]


def runtimes(work: Path) -> dict[str, Run]:
    """Every runtime to measure, on the same weights."""
    from transformers import AutoModelForMaskedLM  # pylint: disable=import-outside-toplevel

    torch.set_num_threads(THREADS)
    model = AutoModelForMaskedLM.from_pretrained(build_timing_model(work / "bert")).eval()
    graph = Graph(model.base_model, "last_hidden_state").eval()
    # A padded example, as the archive build exports with: the mask stays in the graph.
    example = (torch.randint(1000, 2000, (2, 9)), torch.tensor([[1] * 9, [1] * 5 + [0] * 4]))

    def eager(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return graph(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()

    found: dict[str, Run] = {"torch eager": eager}
    if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnxscript"):
        found["onnxruntime"] = onnxruntime_run(graph, example, work)
    else:
        print("onnxruntime (or onnxscript) is not installed: its column is left out")
    convert(graph, example, work / "openvino" / "encoder.xml", None)
    openvino = OpenVinoForward(work / "openvino" / "encoder.xml", THREADS)
    found["openvino"] = lambda ids, mask: openvino(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    return found


def rate(run: Run, ids: np.ndarray, mask: np.ndarray, seconds: float) -> float:
    """Sentences per second of `run` on one batch."""
    run(ids, mask)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        run(ids, mask)
        done += 1
    return done * len(ids) / (time.perf_counter() - start)


def measure(found: dict[str, Run], rounds: int, seconds: float) -> list[dict[str, Any]]:
    """Every runtime at every batch size, interleaved within each round; then its largest
    difference from eager on a padded batch (real tokens only)."""
    rng = np.random.default_rng(0)
    rates: dict[str, dict[int, list[float]]] = {name: {b: [] for b in BATCHES} for name in found}
    for _ in range(rounds):
        for batch in BATCHES:
            ids = rng.integers(1000, 2000, (batch, TOKENS)).astype(np.int64)
            for name, run in found.items():
                rates[name][batch].append(rate(run, ids, np.ones_like(ids), seconds))
    ids = rng.integers(1000, 2000, (4, 20)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[1, 12:], mask[2, 6:] = 0, 0
    reference, real = found["torch eager"](ids, mask), mask.astype(bool)
    return [
        {
            "runtime": name,
            **{f"b{b}": round(statistics.median(rates[name][b]), 1) for b in BATCHES},
            "max_abs_diff_vs_eager": float(np.abs(run(ids, mask) - reference)[real].max()),
        }
        for name, run in found.items()
    ]


def main() -> None:
    """Measure, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("load_tests/results/compare_runtimes.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="runtimes-") as work:
        rows = measure(runtimes(Path(work)), args.rounds, args.seconds)
    print("| runtime | " + " | ".join(f"b={b}" for b in BATCHES) + " | max abs diff vs eager |")
    print("|---|" + "---|" * len(BATCHES) + "---|")
    for row in rows:
        cells = " | ".join(str(row[f"b{b}"]) for b in BATCHES)
        print(f"| {row['runtime']} | {cells} | {row['max_abs_diff_vs_eager']:.1e} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    results = {"machine": machine(), "threads": THREADS, "tokens": TOKENS, "rounds": args.rounds}
    args.out.write_text(json.dumps({**results, "rows": rows}, indent=2), encoding="utf-8")
    print(f"sentences/s, medians of {args.rounds} rounds; machine: {results['machine']}; wrote {args.out}")


if __name__ == "__main__":
    main()

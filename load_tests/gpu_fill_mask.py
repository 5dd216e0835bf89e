"""Serve fill-mask on a GPU through the whole stack and compare its answers with the CPU's.

    .venv/bin/python -m load_tests.gpu_fill_mask [--model DIR] [--tolerance 1e-4]

For a person with an NVIDIA GPU machine: the machines this project is built and tested on have
no GPU, so here the script says so and exits 2. On a GPU machine TorchServe hands each worker
a `gpu_id`; the worker then runs the model in PyTorch on that CUDA device (the compiled runtime
is CPU-only). The script starts the stack with fill-mask only (a tiny BERT built on the spot,
or DIR, a bert-base-uncased folder), checks the worker's log says it runs on CUDA, sends the
probe texts to /inference, and compares every answer with the same model's on the CPU in this
process, with the build's parity rule: scores within 1e-5 (GPU kernels sum in another order;
TF32 is off by default for matmuls), tokens equal except near-tie swaps. Exit 0 when they
agree, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import requests
import torch

from load_tests.kit.stack import Launcher, running
from modelserver.kinds import ModelFiles
from modelserver.kinds.fill_mask.export import FILL_MASK_PROBES
from modelserver.kinds.fill_mask.worker import load_fill_mask_predictor
from modelserver.kinds.text import TextModelSettings
from modelserver.kinds.text.export import answers_differ
from modelserver.tools.tiny_models import make_bert_fill_mask


def main() -> int:
    """Start the stack on the GPU, compare, print one line per probe."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a fill-mask folder (from_pretrained format)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(
            "no CUDA GPU on this machine (the project's build and test machines have none): run this on one"
        )
        return 2
    with tempfile.TemporaryDirectory(prefix="gpu-") as work:
        folder = args.model or make_bert_fill_mask(Path(work) / "bert" / "model")
        cpu = load_fill_mask_predictor(
            ModelFiles(folder.parent, TextModelSettings.model_validate({"runtime": "torch", "threads": 2}))
        )
        launcher = Launcher(Path(work) / "stack", env={"FILL_MASK_MODEL": str(folder)}, models=("fill_mask",))
        with running(launcher) as stack:
            worker_log = stack.runtime_dir / "torchserve" / "logs" / "model_log.log"
            placed = "forward pass: torch on cuda:" in worker_log.read_text(
                encoding="utf-8", errors="replace"
            )
            print(f"worker on CUDA: {placed}")
            failed = not placed
            for text in FILL_MASK_PROBES:
                reply = requests.post(f"{stack.url}/inference", json={"text": text}, timeout=60)
                [expected] = cpu.predict([cpu.parse({"text": text})])
                if reply.status_code == 200:
                    problem = answers_differ(expected, reply.json())
                else:
                    problem = f"HTTP {reply.status_code}: {reply.text[:200]}"
                failed = failed or problem is not None
                print(f"{'ok' if problem is None else 'DIFFERS'}: {text!r} {problem or ''}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

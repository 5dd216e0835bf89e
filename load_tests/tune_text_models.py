"""Choose torch threads, batch size and quantisation for the BERT-sized fill-mask worker.

    .venv/bin/python -m load_tests.tune_text_models [--out load_tests/results/text_tuning.json]

Runs the server's own fill-mask runtime (tokenise once, encoder once, head at the masks) on a
bert-base-uncased-shaped model (110M parameters, vocabulary 30,522) with random weights: the Hub
is not reachable here, and timing does not depend on the weights. Prints a table, writes JSON.
Quantisation fidelity on random weights only says the int8 path works; see the README.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from load_tests.bench.timing_model import build_timing_model
from modelserver.kinds import MODEL_SUBDIR, ModelFiles
from modelserver.kinds.fill_mask import FillMaskRuntime, load_fill_mask_runtime
from tests.tiny_models import ENGLISH

SENTENCES = [text.replace(text.split()[1], "[MASK]", 1) for text in ENGLISH] * 4


def throughput(runtime: FillMaskRuntime, batch: int, repeats: int) -> float:
    """Median sentences per second answering SENTENCES in requests batched `batch` at a time."""
    requests = [runtime.parse({"text": text}) for text in SENTENCES]
    runtime.predict(requests[:batch])  # warm-up
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for first in range(0, len(requests), batch):
            runtime.predict(requests[first : first + batch])
        rates.append(len(requests) / (time.perf_counter() - start))
    return statistics.median(rates)


def top1(runtime: FillMaskRuntime) -> list[int]:
    """The top candidate token for each sentence."""
    answers = runtime.predict([runtime.parse({"text": text, "top_k": 1}) for text in SENTENCES])
    return [answer[0]["token"] for answer in answers]


def main() -> None:
    """Measure every combination and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("load_tests/results/text_tuning.json"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work)
        build_timing_model(folder / MODEL_SUBDIR)
        reference: list[int] = []
        for quantize in ("none", "dynamic-int8"):
            for threads in (1, 2):
                runtime = load_fill_mask_runtime(
                    ModelFiles(folder, settings={"threads": threads, "quantize": quantize})
                )
                tokens = top1(runtime)
                reference = reference or tokens
                agreement = sum(a == b for a, b in zip(tokens, reference, strict=True)) / len(tokens)
                for batch in (1, 8):
                    rate = throughput(runtime, batch, args.repeats)
                    rows.append(
                        {
                            "quantize": quantize,
                            "threads": threads,
                            "batch": batch,
                            "sentences_per_s": round(rate, 1),
                            "top1_agreement_vs_fp32": agreement,
                        }
                    )
                    print(
                        f"{quantize:13} threads={threads} batch={batch}: {rate:6.1f} sentences/s, "
                        f"top-1 agreement with fp32 {agreement:.2f}",
                        flush=True,
                    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"model": "bert-base-uncased shape, random weights", "rows": rows}, indent=2)
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

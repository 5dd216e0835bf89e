"""Choose the runtime, threads, batch size and quantisation for the BERT-sized fill-mask worker.

    .venv/bin/python -m load_tests.tune_text_models [--out load_tests/results/text_tuning.json]

Runs the server's own fill-mask runtime (tokenise once, encoder once, head at the masks) on a
bert-base-uncased-shaped model (110M parameters, vocabulary 30,522) with random weights: the Hub
is not reachable here, and timing does not depend on the weights. Prints a table, writes JSON.
Each runtime (PyTorch eager, OpenVINO fp32, OpenVINO int8) at 1 and 2 threads; agreement is
measured against eager fp32: top-1 tokens and the largest score difference.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from load_tests.bench.raw import RUNTIMES, runtime_for
from load_tests.bench.timing_model import build_timing_model
from modelserver.kinds import MODEL_SUBDIR
from modelserver.kinds.fill_mask.worker import FillMaskPredictor
from modelserver.tools.tiny_models import ENGLISH

SENTENCES = [text.replace(text.split()[1], "[MASK]", 1) for text in ENGLISH] * 4


def throughput(runtime: FillMaskPredictor, batch: int, repeats: int) -> float:
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


def top1(runtime: FillMaskPredictor) -> tuple[list[int], list[float]]:
    """The top candidate token and its score for each sentence."""
    answers = runtime.predict([runtime.parse({"text": text, "top_k": 1}) for text in SENTENCES])
    return [answer[0]["token"] for answer in answers], [answer[0]["score"] for answer in answers]


def agreement_with(
    reference: tuple[list[int], list[float]], tokens: list[int], scores: list[float]
) -> tuple[float, float]:
    """Top-1 agreement with the reference and the largest difference of the top-1 score."""
    agreement = sum(a == b for a, b in zip(tokens, reference[0], strict=True)) / len(tokens)
    return agreement, max(abs(a - b) for a, b in zip(scores, reference[1], strict=True))


def main() -> None:
    """Measure every combination and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("load_tests/results/text_tuning.json"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work) / "timing"
        build_timing_model(folder / MODEL_SUBDIR)
        reference: tuple[list[int], list[float]] = ([], [])
        for label, settings in RUNTIMES.items():
            for threads in (1, 2):
                runtime = runtime_for(folder / MODEL_SUBDIR, Path(work), {**settings, "threads": threads})
                found = top1(runtime)
                reference = reference if reference[0] else found
                agreement, score_diff = agreement_with(reference, *found)
                for batch in (1, 8):
                    rate = throughput(runtime, batch, args.repeats)
                    rows.append(
                        {
                            "runtime": label,
                            "threads": threads,
                            "batch": batch,
                            "sentences_per_s": round(rate, 1),
                            "top1_agreement_vs_eager_fp32": agreement,
                            "largest_top1_score_diff": score_diff,
                        }
                    )
                    print(
                        f"{label:10} threads={threads} batch={batch}: {rate:6.1f} sentences/s, "
                        f"top-1 agreement with eager fp32 {agreement:.2f}, score diff {score_diff:.1e}",
                        flush=True,
                    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"model": "bert-base-uncased shape, random weights", "rows": rows}, indent=2)
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""The physical limit: the model call in a loop, no server, in a process of its own.

    python -m load_tests.bench.raw --bert DIR --threads 2 --batches 1,2,4,8,16 --crystal FILE

BERT: the masked LM's whole forward pass (`model(**inputs)`, inference mode) on the benchmark's
sentences, tokenised ahead of time and padded per batch, with the torch threads our worker uses,
in fp32 and with dynamic int8 quantisation of the Linear layers (as `quantize: dynamic-int8`).
Crystal: `predict_proba` on one row, as one request costs. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import torch
from threadpoolctl import threadpool_limits
from transformers import AutoModelForMaskedLM, AutoTokenizer

from load_tests.bench.scenarios import CRYSTAL_ROWS, SENTENCES


def bert_throughput(
    folder: Path, threads: int, batches: list[int], seconds: float, quantize: bool
) -> dict[str, float]:
    """Sentences per second of the bare forward pass at each batch size."""
    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForMaskedLM.from_pretrained(folder).eval()
    if quantize:
        model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    rates = {}
    with torch.inference_mode():
        for batch in batches:
            texts = [SENTENCES[i % len(SENTENCES)] for i in range(batch * 8)]
            inputs = [
                tokenizer(texts[i : i + batch], padding=True, return_tensors="pt")
                for i in range(0, len(texts), batch)
            ]
            model(**inputs[0])  # warm-up
            done, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                model(**inputs[done % len(inputs)])
                done += 1
            rates[str(batch)] = done * batch / (time.perf_counter() - start)
    return rates


def crystal_latency(path: Path, repeats: int = 2000) -> dict[str, float]:
    """Median and p99 microseconds of one `predict_proba` call on one row."""
    threadpool_limits(1)
    model = joblib.load(path)
    rows = [np.asarray([row], dtype=np.float64) for row in CRYSTAL_ROWS]
    timings = []
    for i in range(repeats):
        start = time.perf_counter()
        model.predict_proba(rows[i % len(rows)])
        timings.append((time.perf_counter() - start) * 1e6)
    timings.sort()
    return {"p50_us": statistics.median(timings), "p99_us": timings[int(len(timings) * 0.99)]}


def main() -> None:
    """Parse the options, measure, print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bert", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", default="1,2,4,8,16")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--crystal", type=Path)
    args = parser.parse_args()
    result: dict[str, Any] = {}
    if args.bert:
        batches = sorted({int(b) for b in args.batches.split(",")})
        result["bert_sentences_per_s"] = {
            precision: bert_throughput(args.bert, args.threads, batches, args.seconds, precision == "int8")
            for precision in ("fp32", "int8")
        }
    if args.crystal:
        result["crystal_call"] = crystal_latency(args.crystal)
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()

"""The physical limit: the model call in a loop, no server, in a process of its own.

    python -m load_tests.bench.raw --bert DIR --threads 2 --batches 1,2,4,8,16 --crystal FILE

BERT: what a fill-mask worker computes for one batch (the forward pass and the masked-LM head
at the mask positions, `FillMaskPredictor.mask_probabilities`) on the benchmark's sentences,
tokenised ahead of time, with the threads our worker uses, on each runtime: PyTorch eager fp32,
OpenVINO fp32 (the default) and OpenVINO int8 (`quantize: int8`), each exported and gated as the
archive build does. Crystal: `predict_proba` on one row, as one request costs. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from threadpoolctl import threadpool_limits

from load_tests.bench.scenarios import SENTENCES
from load_tests.kit.routes import BRIEF_ROWS
from load_tests.kit.stats import percentile
from modelserver.build.export import export
from modelserver.kinds import MODEL_SUBDIR, ModelFiles
from modelserver.kinds.fill_mask.worker import FillMaskPredictor, load_fill_mask_predictor
from modelserver.kinds.text import PUBLIC_MASK, TextModelSettings

# Label in the results -> the handler settings that select it.
RUNTIMES: dict[str, dict[str, Any]] = {
    "torch_fp32": {"runtime": "torch"},
    "fp32": {"runtime": "openvino"},
    "int8": {"runtime": "openvino", "quantize": "int8"},
}


def runtime_for(
    folder: Path, work: Path, settings: dict[str, Any], parity: dict[str, Any] | None = None
) -> FillMaskPredictor:
    """The fill-mask runtime on `folder`'s weights, exported first if it is a compiled one
    (its parity report, against eager on these weights, goes into `parity`)."""
    archive = work / "-".join(f"{k}-{v}" for k, v in sorted(settings.items()))
    archive.mkdir()
    (archive / MODEL_SUBDIR).symlink_to(folder.resolve(), target_is_directory=True)
    if settings.get("runtime") != "torch":
        report = export("fill_mask", archive, TextModelSettings.model_validate(settings))
        sys.stderr.write(f"{settings}: {report.summary()}\n")
        if parity is not None:
            parity.update(report.as_json())
    return load_fill_mask_predictor(ModelFiles(archive, TextModelSettings.model_validate(settings)))


def bert_throughput(runtime: FillMaskPredictor, batches: list[int], seconds: float) -> dict[str, float]:
    """Sentences per second of the model call at each batch size."""
    mask = runtime.tokenizer.mask_token
    rates = {}
    for batch in batches:
        texts = [SENTENCES[i % len(SENTENCES)].replace(PUBLIC_MASK, mask) for i in range(batch * 8)]
        encoded = runtime.tokenizer(texts)["input_ids"]
        groups = [encoded[i : i + batch] for i in range(0, len(encoded), batch)]
        runtime.mask_probabilities(groups[0])  # warm-up
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            runtime.mask_probabilities(groups[done % len(groups)])
            done += 1
        rates[str(batch)] = done * batch / (time.perf_counter() - start)
    return rates


def crystal_latency(path: Path, repeats: int = 2000) -> dict[str, float | None]:
    """Median and p99 microseconds of one `predict_proba` call on one row."""
    threadpool_limits(1)
    model = joblib.load(path)
    rows = [np.asarray([row], dtype=np.float64) for row in BRIEF_ROWS]
    timings = []
    for i in range(repeats):
        start = time.perf_counter()
        model.predict_proba(rows[i % len(rows)])
        timings.append((time.perf_counter() - start) * 1e6)
    return {"p50_us": percentile(timings, 50), "p99_us": percentile(timings, 99)}


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
        result["bert_sentences_per_s"], result["parity"] = {}, {}
        with tempfile.TemporaryDirectory(prefix="raw-") as work:
            for label, settings in RUNTIMES.items():
                parity = result["parity"].setdefault(label, {})
                runtime = runtime_for(args.bert, Path(work), {**settings, "threads": args.threads}, parity)
                result["bert_sentences_per_s"][label] = bert_throughput(runtime, batches, args.seconds)
    if args.crystal:
        result["crystal_call"] = crystal_latency(args.crystal)
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()

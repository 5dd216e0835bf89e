"""`make bench`: our stack against the naive peers and the real serving libraries (MLServer,
LitServe), same weights, same client, same run.

    python -m load_tests.bench [--runs 3] [--levels 1,4,16,64] [--duration 20] [--warmup 5]
                               [--scenarios fill_mask,sentiment,crystal] [--peer-grid] [--skip-raw]
                               [--model /path/to/bert-base-uncased] [--quick] [--out DIR] [--envs DIR]

Order: build the weights; install the real peers' virtualenvs (once, under --envs; a peer that
cannot be installed is skipped with the reason); start every server; for each round, each
scenario, each concurrency level, drive each server in turn (interleaved, so drift on a shared
machine hits all alike); then the raw model call; then cold starts. Medians over rounds go in the report
(results.json, results.md, throughput.png under --out); the performance targets are checked.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from load_tests.bench.report import summarise, write_report
from load_tests.bench.servers import PEER_GRID, PEERS, Server, Weights, all_servers, wait_all_idle
from load_tests.bench.timing_model import (
    RANDOM_WEIGHTS,
    SENTIMENT_RANDOM_WEIGHTS,
    build_sentiment_timing_model,
    build_timing_model,
)
from load_tests.kit.stack import Launcher
from modelserver.project import PROJECT_ROOT
from modelserver.tools.tiny_models import make_bert_fill_mask, make_distilbert_sentiment
from modelserver.training.crystal_sklearn_iris import train as train_crystal

DRIVE = [sys.executable, "-m", "load_tests.bench.drive"]


def drive(server: Server, scenario: str, users: int, args: argparse.Namespace) -> dict[str, Any]:
    """One measured run against one server, with its CPU, peak RSS and (ours) batch sizes."""
    command = [
        *DRIVE,
        "--host",
        server.url,
        "--scenario",
        server.requests.get(scenario, scenario),
        "--users",
        str(users),
        "--warmup",
        str(args.warmup),
        "--duration",
        str(args.duration),
        "--client",
        args.client,
    ]
    if scenario in server.paths:
        command += ["--path", server.paths[scenario]]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=PROJECT_ROOT) as process:
        assert process.stdout is not None
        cpu_start: float | None = None
        batches_start = (0.0, 0.0)
        result: dict[str, Any] = {}
        for line in process.stdout:
            if line.startswith("window-start"):
                cpu_start, batches_start = server.usage.cpu_seconds(), server.batch_counters(scenario)
                server.usage.reset_peak()
            elif line.startswith("window-end") and cpu_start is not None:
                result["cpu_cores"] = (server.usage.cpu_seconds() - cpu_start) / args.duration
                result["peak_rss_mb"] = server.usage.peak_rss / 2**20
                batches, items = server.batch_counters(scenario)
                if batches > batches_start[0]:
                    result["mean_batch"] = (items - batches_start[1]) / (batches - batches_start[0])
            elif line.startswith("{"):
                result.update(json.loads(line))
    if "requests" not in result:
        raise RuntimeError(f"the load run against {server.name} failed")
    return result


def raw_limits(weights: Weights, formed: list[float], args: argparse.Namespace) -> dict[str, Any]:
    """The model call with no server, in its own process (nothing else running), in fp32 and
    int8, at the usual batch sizes and at those the server formed."""
    batches = {1, 2, 4, 8, 16} if not args.quick else {1, 4}
    batches |= {max(1, round(batch)) for batch in formed}
    # The BERT's raw figures only beside a fill-mask run (or the smoke run, which checks them).
    bert = ["--bert", str(weights.bert)] if args.quick or "fill_mask" in args.scenarios else []
    command = [
        sys.executable,
        "-m",
        "load_tests.bench.raw",
        *bert,
        "--threads",
        "2",
        "--batches",
        ",".join(map(str, sorted(batches))),
        "--crystal",
        str(weights.crystal),
        "--seconds",
        "1" if args.quick else "5",
    ]
    output = subprocess.run(command, capture_output=True, text=True, check=True, cwd=PROJECT_ROOT)
    return json.loads(output.stdout.strip().splitlines()[-1])


def cold_starts(work: Path, weights: Weights, args: argparse.Namespace) -> list[float]:
    """Seconds from starting the launcher (archives built) to a healthy /healthcheck: every
    catalogue model, fill-mask and sentiment on the benchmark's weights through the compiled
    runtime (the Hub-only CamemBERT is skipped here)."""
    store = work / "cold"
    models = ("crystal_sklearn", "crystal_pytorch") if args.quick else ()
    env = {"FILL_MASK_MODEL": str(weights.bert), "SENTIMENT_MODEL": str(weights.sentiment)}
    Launcher(store, models=models, env=env).start().wait_healthy(timeout_s=900).stop()  # builds once
    timings = []
    for _ in range(1 if args.quick else args.runs):
        launcher = Launcher(store, models=models, env=env)
        start = time.monotonic()
        launcher.start().wait_healthy(timeout_s=300)
        timings.append(time.monotonic() - start)
        launcher.stop()
    return timings


def measures_cold_start(args: argparse.Namespace) -> bool:
    """Whether this run times cold starts: not with --skip-raw, nor without the text models'
    real shapes (a crystal-only run has tiny ones), except in the smoke run."""
    return not args.skip_raw and (args.quick or "fill_mask" in args.scenarios)


def prepare_weights(work: Path, args: argparse.Namespace) -> Weights:
    """The BERT every fill-mask server loads, the sentiment classifier, the crystal joblib file."""
    crystal = work / "crystal_sklearn.joblib"
    train_crystal(crystal)
    if args.quick or not {"fill_mask", "sentiment"} & set(args.scenarios):
        tiny = "tiny 2-layer BERT and DistilBERT (smoke run)" if args.quick else "crystal only"
        return Weights(
            make_bert_fill_mask(work / "bert"), tiny, crystal, make_distilbert_sentiment(work / "sst2")
        )
    sentiment = build_sentiment_timing_model(work / "sst2")
    if args.model:
        kind = f"real checkpoint from {args.model}; sentiment: {SENTIMENT_RANDOM_WEIGHTS}"
        return Weights(args.model, kind, crystal, sentiment)
    return Weights(
        build_timing_model(work / "bert"),
        f"{RANDOM_WEIGHTS}; sentiment: {SENTIMENT_RANDOM_WEIGHTS}",
        crystal,
        sentiment,
    )


def measured_run(
    server: Server, scenario: str, users: int, round_index: int, args: argparse.Namespace
) -> dict[str, Any]:
    """One server, one scenario, one level: its figures, printed as they come."""
    if server.busy_when_idle:
        server.signal_tree(signal.SIGCONT)
        time.sleep(1)  # its workers' poll loops catch up before the warm-up starts
    try:
        result = drive(server, scenario, users, args)
    finally:
        if server.busy_when_idle:
            server.signal_tree(signal.SIGSTOP)
    print(
        f"round {round_index + 1} {scenario:9} {server.name:18} {users:3} clients: "
        f"{result['throughput_rps']:8.1f} req/s, p99 {result['p99_ms'] or 0:7.1f} ms, "
        f"{result['errors']} errors",
        flush=True,
    )
    return {"round": round_index, "scenario": scenario, "server": server.name, "users": users, **result}


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Every run of the benchmark, raw and aggregated."""
    weights = prepare_weights(work, args)
    runs: list[dict[str, Any]] = []
    peers = {**PEERS, **PEER_GRID} if args.peer_grid else PEERS
    with all_servers(weights, work, args.scenarios, peers, args.envs) as (servers, skipped):
        for round_index in range(args.runs):
            for scenario in args.scenarios:
                for users in args.levels:
                    for server in servers:
                        if server.answers(scenario):
                            wait_all_idle(servers)
                            runs.append(measured_run(server, scenario, users, round_index, args))
        descriptions = {server.name: server.description for server in servers}
    summary = summarise(runs)
    formed = [
        row["mean_batch"] for key, row in summary.items() if key[0] == "fill_mask" and row["mean_batch"]
    ]
    return {
        "weights": weights.bert_kind,
        "runs": runs,
        "descriptions": descriptions,
        "skipped": skipped,
        "raw": {} if args.skip_raw else raw_limits(weights, formed, args),
        # A cold start is measured with the text models' real shapes (or in the smoke run).
        "cold_start_s": cold_starts(work, weights, args) if measures_cold_start(args) else [],
    }


def main() -> None:
    """Parse the options, measure, write the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--levels", default="1,4,16,64")
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--scenarios", default="fill_mask,sentiment,crystal")
    parser.add_argument("--client", choices=["fast", "locust"], default="fast")
    parser.add_argument("--model", type=Path, help="a real bert-base-uncased folder (else random weights)")
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run (CI)")
    parser.add_argument(
        "--peer-grid", action="store_true", help="also every MLServer and LitServe setting tried"
    )
    parser.add_argument("--skip-raw", action="store_true", help="no raw model call and no cold starts")
    parser.add_argument(
        "--envs",
        type=Path,
        default=PROJECT_ROOT / "load_tests" / "results" / "bench" / "peer-envs",
        help="where the MLServer and LitServe virtualenvs are installed (once, then reused)",
    )
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "load_tests" / "results" / "bench")
    args = parser.parse_args()
    args.levels = [int(level) for level in args.levels.split(",")]
    args.scenarios = args.scenarios.split(",")
    if args.quick:
        args.runs, args.warmup, args.duration = 1, 1.0, 2.0
    # Stopped with SIGTERM, still stop every server it started (the `finally` of all_servers).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="bench-") as work:
        results = measure(args, Path(work))
    results["options"] = {k: str(v) for k, v in vars(args).items()}
    print(write_report(results, args.out))


if __name__ == "__main__":
    main()

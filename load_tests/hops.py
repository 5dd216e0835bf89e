"""`make hops`: where a lone request's time goes, and a crowd's, hop by hop.

    python -m load_tests.hops [--requests 3000] [--levels 1,64] [--warmup-s 45]
                              [--torchserve KEY=VALUE] [--out load_tests/results/hops]

Serves crystal_sklearn on the real stack and sends `/sklearn` requests of one row from
`clients` keep-alive clients, then splits each level's median time per request into hops from
three sources that see the same requests: the client's own clock; Envoy's access log (`request_us`
in Envoy before TorchServe got the first byte, `upstream_us` at TorchServe, `response_us` back);
TorchServe's counters (its frontend's time per request, the job queue) and the handler's phase
histograms (decode and validate, predict, encode), as deltas over the level's requests; and the
CPU time each part of the stack spent per request. A table goes to stdout, the figures to
`results.json` with the CPU and its ISA flags.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import requests

from load_tests.bench.report import machine
from load_tests.kit.routes import BRIEF_ROWS
from load_tests.kit.stack import Launcher, component_of, running, write_catalogue
from modelserver.launcher.pages.metrics import SHARED_FOR_S
from modelserver.project import PROJECT_ROOT

MODEL = "crystal_sklearn"
MIN_PER_CLIENT = 150  # so a crowd's level lasts seconds, not a fraction of one
PATH = "/sklearn"
BODY = json.dumps({"crystalData": BRIEF_ROWS[:1]})
COUNTERS = {
    "frontend_us": ("ts_inference_latency_microseconds", f'model_name="{MODEL}"'),
    "queue_us": ("ts_queue_latency_microseconds", f'model_name="{MODEL}"'),
    "requests": ("ts_inference_requests_total", f'model_name="{MODEL}"'),
    "decode_s": ("HandlerPreprocessSeconds_sum", f'ModelName="{MODEL}"'),
    "predict_s": ("HandlerInferenceSeconds_sum", f'ModelName="{MODEL}"'),
    "encode_s": ("HandlerPostprocessSeconds_sum", f'ModelName="{MODEL}"'),
    "batches": ("HandlerBatches", f'ModelName="{MODEL}"'),
}


def counters(stack: Launcher) -> dict[str, float]:
    """TorchServe's and the handler's cumulative figures for the model, from one scrape."""
    text = requests.get(stack.metrics_url, timeout=10).text
    found = dict.fromkeys(COUNTERS, 0.0)
    for line in text.splitlines():
        for key, (name, label) in COUNTERS.items():
            if line.startswith(name + "{") and label in line:
                found[key] += float(line.rsplit(" ", 1)[1])
    return found


def cpu_seconds(stack: Launcher) -> dict[str, float]:
    """CPU seconds so far of each part of the stack (Envoy, TorchServe's Java, the worker...)
    and of this process, which runs the clients."""
    assert stack.process is not None
    root = psutil.Process(stack.process.pid)
    used: dict[str, float] = {"client (this process)": time.process_time()}
    for process in [root, *root.children(recursive=True)]:
        try:
            name = component_of(process.pid, process.cmdline(), root.pid, {})
            times = process.cpu_times()
        except psutil.Error:
            continue
        used[name] = used.get(name, 0.0) + times.user + times.system
    return used


def drive(port: int, clients: int, per_client: int) -> list[float]:
    """`clients` keep-alive clients, `per_client` requests each; every latency in seconds."""
    latencies: list[float] = []
    lock = threading.Lock()

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine = []
        for _ in range(per_client):
            start = time.perf_counter()
            connection.request("POST", PATH, BODY, {"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            mine.append(time.perf_counter() - start)
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}")
        connection.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies


def access_lines(stack: Launcher, count: int) -> list[dict[str, Any]]:
    """The last `count` access-log lines of the model route (Envoy flushes every second)."""
    time.sleep(1.5)
    lines = (stack.runtime_dir / "envoy" / "access.log").read_text(encoding="utf-8").splitlines()
    routed = [json.loads(line) for line in lines if f'"path":"{PATH}"' in line]
    return routed[-count:]


def measured(stack: Launcher, clients: int, per_client: int) -> tuple[list[float], float, dict[str, float]]:
    """The latencies of `clients` x `per_client` requests, their span in seconds, and the
    counters' deltas over them (each read fresh: /metrics shares one reading for a second)."""
    time.sleep(SHARED_FOR_S + 0.1)
    before, cpu_before = counters(stack), cpu_seconds(stack)
    started = time.perf_counter()
    latencies = drive(stack.ports.public, clients, per_client)
    elapsed = time.perf_counter() - started
    cpu_after = cpu_seconds(stack)
    time.sleep(SHARED_FOR_S + 0.1)
    after = counters(stack)
    delta = {key: after[key] - before[key] for key in COUNTERS}
    delta |= {f"cpu:{part}": used - cpu_before.get(part, 0.0) for part, used in cpu_after.items()}
    return latencies, elapsed, delta


def warm_up(stack: Launcher, seconds: float) -> None:
    """Load the stack until the JVM has compiled TorchServe's hot code: its C2 compiler thread
    spent 430 µs of CPU per request in the first 10 s after start, still 60-160 µs at 40 s,
    taking cores from the worker and Envoy (measured per thread from /proc)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        drive(stack.ports.public, 8, 100)


def level(stack: Launcher, clients: int, total: int) -> dict[str, Any]:
    """One level: warm up, then `total` requests; the median hops per request, in microseconds."""
    drive(stack.ports.public, clients, max(1, 200 // clients))
    latencies, elapsed, delta = measured(stack, clients, max(MIN_PER_CLIENT, total // clients))
    sent = len(latencies)
    log = access_lines(stack, sent)
    envoy = {
        key: statistics.median(float(entry[key]) for entry in log)
        for key in ("request_us", "upstream_us", "response_us")
    }
    handler = {phase: 1e6 * delta[f"{phase}_s"] / sent for phase in ("decode", "predict", "encode")}
    queue_us = delta["queue_us"] / max(delta["requests"], 1)
    client_us = 1e6 * statistics.median(latencies)
    return {
        "clients": clients,
        "requests": sent,
        "throughput_rps": sent / elapsed,
        "client_p50_us": client_us,
        "client_p99_us": 1e6 * sorted(latencies)[int(0.99 * (sent - 1))],
        "mean_batch": delta["requests"] / max(delta["batches"], 1),
        "hops_us": {
            "client and kernel (client's time outside Envoy)": client_us - sum(envoy.values()),
            "Envoy: request in, filters, to TorchServe": envoy["request_us"],
            "TorchServe frontend to worker and back, outside the handler": envoy["upstream_us"]
            - queue_us
            - sum(handler.values()),
            "TorchServe job queue (incl. waiting for a batch to fill)": queue_us,
            "handler: decode and validate": handler["decode"],
            "handler: predict": handler["predict"],
            "handler: encode, headers": handler["encode"],
            "Envoy: answer back to the client": envoy["response_us"],
        },
        "frontend_mean_us": delta["frontend_us"] / max(delta["requests"], 1),
        # CPU per request: what caps a crowd's throughput on a machine of few cores.
        "cpu_us": {
            key.removeprefix("cpu:"): 1e6 * value / sent
            for key, value in sorted(delta.items())
            if key.startswith("cpu:") and value > 0
        },
    }


def table(levels: list[dict[str, Any]]) -> str:
    """The hops as a Markdown table, one column per level."""
    header = "| hop | " + " | ".join(f"{row['clients']} client(s), µs" for row in levels) + " |"
    lines = [header, "|---|" + "---:|" * len(levels)]
    for hop in levels[0]["hops_us"]:
        lines.append(f"| {hop} | " + " | ".join(f"{row['hops_us'][hop]:.0f}" for row in levels) + " |")
    for key, title in (("client_p50_us", "client's median"), ("client_p99_us", "client's p99")):
        lines.append(f"| **{title}** | " + " | ".join(f"**{row[key]:.0f}**" for row in levels) + " |")
    lines.append(
        "| throughput, req/s | " + " | ".join(f"{row['throughput_rps']:.0f}" for row in levels) + " |"
    )
    lines.append("| mean batch | " + " | ".join(f"{row['mean_batch']:.1f}" for row in levels) + " |")
    for part in levels[0]["cpu_us"]:
        lines.append(
            f"| CPU per request, {part} | "
            + " | ".join(f"{row['cpu_us'].get(part, 0.0):.0f}" for row in levels)
            + " |"
        )
    return "\n".join(lines)


def main() -> int:
    """Measure each level, print the table, write the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--levels", default="1,64")
    parser.add_argument("--warmup-s", type=float, default=45.0, help="load before measuring (the JVM's JIT)")
    parser.add_argument(
        "--torchserve",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a TorchServe setting of the model for this run (e.g. maxBatchDelay=0); repeatable",
    )
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "load_tests" / "results" / "hops")
    args = parser.parse_args()
    settings = {key: int(value) for key, _, value in (item.partition("=") for item in args.torchserve)}
    with tempfile.TemporaryDirectory(prefix="hops-") as work:
        catalogue = write_catalogue(Path(work) / "models.yaml", torchserve={MODEL: settings})
        with running(Launcher(Path(work), catalogue=catalogue, models=(MODEL,))) as stack:
            warm_up(stack, args.warmup_s)
            levels = [level(stack, int(clients), args.requests) for clients in args.levels.split(",")]
    print(table(levels))
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"machine": machine(), "torchserve": settings, "levels": levels}
    (args.out / "results.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

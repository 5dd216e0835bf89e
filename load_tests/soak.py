"""`make soak`: the real stack under a steady, moderate, mixed load for minutes.

    python -m load_tests.soak [--duration 600] [--users 8] [--think 0.1] [--sample-every 10]
                              [--warmup 60] [--models NAME ...] [--out load_tests/results/soak]

Starts the stack the way the benchmark does (the launcher `make run` runs, on free loopback
ports, through the kit's `load_tests.kit.stack.Launcher`), the language models from tiny local
checkpoints (`modelserver/tools/tiny_models.py`: the Hub is unreachable here) unless their
variables name real ones. N closed-loop clients with a short, jittered think time each send
requests to every served public route in turn at random; every answer is checked by the kit's
check of its route (status 200 and the route's JSON shape), anything else is an error, by
reason. Every `--sample-every` seconds the resident memory of the stack's process tree is
sampled per component (launcher, TorchServe's CLI and Java frontend, each model's worker,
Envoy), with the requests and latency percentiles of the interval.

RSS growth = median of the last 10% of the samples / median of as many samples just after the
warm-up - 1, per component and in total, so start-up allocation does not count as growth.
Writes results.json and samples.csv under --out; exits 1 on any error, a total growth >= 5%,
or one component growing by 5% and over 10 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import datetime
import itertools
import json
import random
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import psutil

from load_tests.bench.client import TIMEOUT_S
from load_tests.bench.scenarios import SCENARIOS, Scenario
from load_tests.kit.http import KeepAliveClient, PreparedRequest, prepare_requests
from load_tests.kit.routes import (
    answer_failure,
    crystal_answer_is_right,
    fill_mask_answer_is_right,
    sentiment_answer_is_right,
    topics_answer_is_right,
)
from load_tests.kit.stack import Launcher, component_of, running
from load_tests.kit.stats import percentile
from load_tests.kit.topics_corpus import write_corpus
from modelserver.catalogue import Catalogue, SourceUnavailable, resolve_source
from modelserver.launcher.manage import Management, ManagementError
from modelserver.project import PROJECT_ROOT, environment
from modelserver.tools.tiny_models import (
    ENGLISH,
    make_bert_fill_mask,
    make_camembert_fill_mask,
    make_distilbert_sentiment,
)

MAX_GROWTH = 0.05
# One component leaking is not hidden by the total (5% of ~2.9 GB is twice Envoy's whole RSS):
# each fails on its own past MAX_GROWTH, once its growth is also past a few MB of jitter.
MAX_COMPONENT_JITTER_MB = 10.0
TAIL = 0.1  # the share of samples, at the end, that gives the final RSS

# Tiny local checkpoints for the models that come from the Hub (random weights, real tokenizers).
TINY_MODELS: dict[str, Callable[[Path], Path]] = {
    "fill_mask": make_bert_fill_mask,
    "camembert": make_camembert_fill_mask,
    "sentiment": make_distilbert_sentiment,
}
FRENCH_MASKED = [
    "Le camembert est <mask>.",
    "Paris est la <mask> de la France.",
    "J'aime ce [MASK].",
    "Le chat dort sur le <mask>.",
    "Il fait [MASK] aujourd'hui.",
    "Elle lit un <mask> au jardin.",
]
TOPIC_TEXTS = [
    "The goalie stopped the puck and the Leafs won the Stanley Cup playoff game on ice.",
    "The pitcher threw a perfect inning and the Mets hit a homerun against the Yankees.",
    "NASA will launch the shuttle to put a new satellite in orbit around the moon.",
    "Solder the resistor and the capacitor to the circuit, then check the voltage.",
    "The clipper chip and RSA encryption keys raise privacy questions about the NSA.",
    "Congress and the president disagree about the new tax law before the election.",
]


def _astromech_body() -> dict[str, Any]:
    return {**SCENARIOS["crystal"].body(), "model": random.choice(["sklearn", "pytorch"])}


def _camembert_body() -> dict[str, Any]:
    return {"text": random.choice(FRENCH_MASKED)}


def _model_name_body() -> dict[str, Any]:
    """The model chosen by name in the body, through /predict."""
    return {"model_name": "camembert-base", "task": "fill-mask", "text": random.choice(FRENCH_MASKED)}


def _sentiment_body() -> dict[str, Any]:
    return {"text": random.choice(ENGLISH)}


def _topics_body() -> dict[str, Any]:
    return {"text": random.choice(TOPIC_TEXTS)}


@dataclass(frozen=True)
class Route:
    """One kind of request the clients send, and the models it needs to be served."""

    scenario: Scenario
    models: tuple[str, ...]

    @property
    def name(self) -> str:
        """The label in the report."""
        return self.scenario.name


_CRYSTAL, _FILL_MASK = SCENARIOS["crystal"], SCENARIOS["fill_mask"]
ROUTES = [
    Route(Scenario("/sklearn", "/sklearn", _CRYSTAL.body, crystal_answer_is_right), ("crystal_sklearn",)),
    Route(Scenario("/pytorch", "/pytorch", _CRYSTAL.body, crystal_answer_is_right), ("crystal_pytorch",)),
    Route(
        Scenario("/astromech", "/astromech", _astromech_body, crystal_answer_is_right),
        ("crystal_sklearn", "crystal_pytorch"),
    ),
    Route(Scenario("/inference", "/inference", _FILL_MASK.body, fill_mask_answer_is_right), ("fill_mask",)),
    Route(Scenario("/predict", "/predict", _sentiment_body, sentiment_answer_is_right), ("sentiment",)),
    Route(
        Scenario("/predict model_name", "/predict", _model_name_body, fill_mask_answer_is_right),
        ("sentiment", "camembert"),
    ),
    Route(
        Scenario(
            "/predictions/camembert", "/predictions/camembert", _camembert_body, fill_mask_answer_is_right
        ),
        ("camembert",),
    ),
    Route(Scenario("/prediction", "/prediction", _topics_body, topics_answer_is_right), ("topics",)),
]


def served_routes(models: Iterable[str]) -> list[Route]:
    """The routes every model of which is served."""
    return [route for route in ROUTES if set(route.models) <= set(models)]


# ---------------------------------------------------------------------------------------------
# Pure parts: what a sample is, growth, intervals (tests/unit/test_soak_parts.py).


@dataclass(frozen=True)
class RequestOutcome:
    """One finished request: seconds since the load started, route, latency, failure ("" = ok)."""

    at_s: float
    route: str
    latency_ms: float
    failure: str


@dataclass(frozen=True)
class Growth:
    """Resident memory just after the warm-up and at the end, and the relative growth."""

    start: float
    end: float

    @property
    def ratio(self) -> float:
        """end / start - 1."""
        return self.end / self.start - 1


def growth(times: Sequence[float], values: Sequence[float | None], warmup_s: float) -> Growth | None:
    """Median of the last `TAIL` of the samples against the median of as many samples taken
    from the end of the warm-up on. Missing values (a component absent then) are left out;
    None when nothing was sampled after the warm-up."""
    present = [(t, v) for t, v in zip(times, values, strict=True) if v is not None]
    count = max(1, round(len(present) * TAIL))
    after = [v for t, v in present if t >= warmup_s]
    if not after:
        return None
    return Growth(statistics.median(after[:count]), statistics.median([v for _, v in present[-count:]]))


def summarise(outcomes: Iterable[RequestOutcome]) -> dict[str, Any]:
    """Requests answered right, errors by reason, and latency percentiles of the right ones."""
    latencies, failures = [], Counter[str]()
    for outcome in outcomes:
        if outcome.failure:
            failures[outcome.failure] += 1
        else:
            latencies.append(outcome.latency_ms)
    return {
        "requests": len(latencies),
        "errors": sum(failures.values()),
        "error_reasons": dict(failures.most_common()),
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
    }


def intervals(outcomes: Sequence[RequestOutcome], edges: Sequence[float]) -> list[dict[str, Any]]:
    """`summarise` for each interval (edges[i - 1], edges[i]]; the first edge opens the first."""
    ordered = sorted(outcomes, key=lambda o: o.at_s)
    rows, position = [], 0
    for start, end in itertools.pairwise(edges):
        inside = []
        while position < len(ordered) and ordered[position].at_s <= end:
            if ordered[position].at_s > start:
                inside.append(ordered[position])
            position += 1
        rows.append({"from_s": start, "to_s": end, **summarise(inside)})
    return rows


# ---------------------------------------------------------------------------------------------
# The stack and its memory.


class StackMemory:
    """RSS of every process under the launcher, summed per component."""

    def __init__(self, launcher: Launcher, models: Sequence[str]) -> None:
        assert launcher.process is not None
        self._root = psutil.Process(launcher.process.pid)
        self._management = Management(launcher.runtime_dir, timeout_s=10)
        self._models = models
        self._workers: dict[int, str] = {}

    def _learn_workers(self) -> None:
        """Worker pid -> model, from TorchServe's management API (a replaced worker is new)."""
        for model in self._models:
            with contextlib.suppress(ManagementError, LookupError, TypeError, ValueError):
                for version in self._management.call("GET", f"/models/{model}"):
                    for worker in version.get("workers", []):
                        self._workers[int(worker["pid"])] = model

    def sample(self) -> dict[str, int]:
        """Bytes resident per component now."""
        processes = [self._root]
        with contextlib.suppress(psutil.Error):
            processes += self._root.children(recursive=True)
        rss: dict[str, int] = defaultdict(int)
        for process in processes:
            with contextlib.suppress(psutil.Error):
                cmdline = process.cmdline()
                if "model_service_worker" in " ".join(cmdline) and process.pid not in self._workers:
                    self._learn_workers()
                name = component_of(process.pid, cmdline, self._root.pid, self._workers)
                rss[name] += process.memory_info().rss
        return dict(rss)


def model_sources(models: Sequence[str], work: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(variables for the launcher, a description of each model's source). A Hub model whose
    variable is unset gets a tiny local checkpoint; topics without data gets the tests' corpus."""
    catalogue, environ = Catalogue.load(), environment()
    env: dict[str, str] = {}
    described: dict[str, str] = {}
    for name in models:
        variable = catalogue.entry(name).source.env
        if name in TINY_MODELS and variable and not environ.get(variable):
            env[variable] = str(TINY_MODELS[name](work / "tiny" / name))
            described[name] = (
                f"tiny local checkpoint (modelserver/tools/tiny_models.py, random weights) via {variable}"
            )
    if "topics" in models:
        try:
            resolve_source(catalogue.entry("topics"), environ)
        except SourceUnavailable:
            train, test = write_corpus(work / "topics_corpus")
            env.update(TOPICS_TRAIN=str(train), TOPICS_TEST=str(test))
    for name in set(models) - set(described):
        source = resolve_source(catalogue.entry(name), {**environ, **env})
        inputs = ", ".join(f"{key} {path}" for key, path in source.inputs.items())
        described[name] = source.describe() + (f": {inputs}" if inputs else "")
    return env, dict(sorted(described.items()))


# ---------------------------------------------------------------------------------------------
# The load.


def failure_reason(route: Route, request: dict[str, Any], status: int, body: bytes) -> str:
    """Why one answer to `request` is not right, named by its route (with the start of the body
    of an error answer), or "" when it is right."""
    failure = answer_failure(route.scenario.answer_is_right, request, status, body)
    if not failure:
        return ""
    if status != 200:
        failure += f" {body[:120].decode(errors='replace')}"
    return f"{route.name}: {failure}"


class Load:
    """Closed-loop clients with a think time, each picking a served route at random per request."""

    def __init__(self, url: str, routes: Sequence[Route], think_s: float) -> None:
        parts = urlsplit(url)
        self._host, self._port = parts.hostname or "127.0.0.1", parts.port or 80
        self._routes = routes
        self._think_s = think_s
        self._prepared: dict[str, list[PreparedRequest]] = {
            route.name: prepare_requests(route.scenario.path, route.scenario.body, parts.netloc)
            for route in routes
        }
        self.outcomes: list[RequestOutcome] = []
        self.started = time.monotonic()
        self.stop = asyncio.Event()

    def _record(self, route: Route, sent: float, failure: str) -> None:
        now = time.monotonic()
        self.outcomes.append(RequestOutcome(now - self.started, route.name, (now - sent) * 1000, failure))

    async def user(self, seed: int) -> None:
        """One client until `stop`: send, check, think, again; reconnect after a failure."""
        rng = random.Random(seed)
        client = KeepAliveClient(self._host, self._port)
        while not self.stop.is_set():
            route = rng.choice(self._routes)
            request = rng.choice(self._prepared[route.name])
            sent = time.monotonic()
            try:
                reply = await asyncio.wait_for(client.exchange(request.wire), TIMEOUT_S)
                self._record(route, sent, failure_reason(route, request.body, reply.status, reply.body))
            except (OSError, TimeoutError) as error:  # the client reconnects for the next request
                self._record(route, sent, f"{route.name}: {type(error).__name__} {error}"[:160])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), self._think_s * rng.uniform(0.5, 1.5))
        client.close()


async def soak(load: Load, memory: StackMemory, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Run the clients for the duration; sample memory at 0, N, 2N ... s (and at the end)."""
    users = [asyncio.ensure_future(load.user(seed)) for seed in range(args.users)]
    times = [*np.arange(0, args.duration, args.sample_every).tolist(), float(args.duration)]
    samples = []
    for due in sorted(set(times)):
        await asyncio.sleep(max(0.0, load.started + due - time.monotonic()))
        rss = await asyncio.to_thread(memory.sample)
        samples.append({"t_s": time.monotonic() - load.started, "rss": rss})
        done = sum(1 for o in load.outcomes if not o.failure)
        errors = len(load.outcomes) - done
        print(
            f"{samples[-1]['t_s']:6.0f} s  RSS {sum(rss.values()) / 2**20:8.1f} MB  "
            f"{done:7d} answered  {errors} errors",
            flush=True,
        )
    load.stop.set()
    await asyncio.wait(users, timeout=TIMEOUT_S + 5)
    return samples


# ---------------------------------------------------------------------------------------------
# The report.


def _mb(value: float | None) -> float | None:
    return None if value is None else round(value / 2**20, 3)


def memory_growth(samples: Sequence[dict[str, Any]], warmup_s: float) -> dict[str, dict[str, Any]]:
    """Per component and in total (bytes in, MB out): the first sample, RSS just after the
    warm-up and at the end, and the growth between them. A sample is {"t_s", "rss": {name: bytes}}."""
    times = [s["t_s"] for s in samples]
    components = sorted({name for s in samples for name in s["rss"]})
    series = {name: [s["rss"].get(name) for s in samples] for name in components}
    series["total"] = [sum(s["rss"].values()) for s in samples]
    memory = {}
    for name, values in series.items():
        found = growth(times, values, warmup_s)
        memory[name] = {
            "first_sample_mb": _mb(next((v for v in values if v is not None), None)),
            "start_mb": _mb(found.start) if found else None,
            "end_mb": _mb(found.end) if found else None,
            "growth": found.ratio if found else None,
            "series_mb": [_mb(v) for v in values],
        }
    return memory


def growing_components(memory: dict[str, dict[str, Any]]) -> list[str]:
    """The components (not the total) whose RSS grew by MAX_GROWTH and more than the jitter."""
    return [
        name
        for name, row in sorted(memory.items())
        if name != "total"
        and row["growth"] is not None
        and row["growth"] >= MAX_GROWTH
        and row["end_mb"] - row["start_mb"] > MAX_COMPONENT_JITTER_MB
    ]


def report(
    samples: list[dict[str, Any]],
    outcomes: list[RequestOutcome],
    args: argparse.Namespace,
    meta: dict[str, Any],
) -> dict[str, Any]:
    """Everything the run measured, and whether it passed."""
    times = [s["t_s"] for s in samples]
    memory = memory_growth(samples, args.warmup)
    by_route = defaultdict(list)
    for outcome in outcomes:
        by_route[outcome.route].append(outcome)
    overall = summarise(outcomes)
    overall["rate_rps"] = overall["requests"] / args.duration
    total_growth = memory["total"]["growth"]
    return {
        **meta,
        "overall": overall,
        "by_route": {name: summarise(found) for name, found in sorted(by_route.items())},
        "memory": {name: {k: v for k, v in row.items() if k != "series_mb"} for name, row in memory.items()},
        "intervals": intervals(outcomes, times),
        "samples": [
            {"t_s": round(t, 3), **{name: row["series_mb"][i] for name, row in memory.items()}}
            for i, t in enumerate(times)
        ],
        "growing_components": growing_components(memory),
        "passed": (
            overall["errors"] == 0
            and total_growth is not None
            and total_growth < MAX_GROWTH
            and not growing_components(memory)
        ),
    }


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(results: dict[str, Any]) -> str:
    """The human summary."""
    overall = results["overall"]
    lines = [
        f"soak {results['duration_s']:.0f} s, {results['users']} clients, think {results['think_s']} s, "
        f"models: {', '.join(results['models'])}",
        f"requests answered {overall['requests']} ({overall['rate_rps']:.1f}/s), errors {overall['errors']}",
        *(f"  {count:6d}  {reason}" for reason, count in overall["error_reasons"].items()),
        "",
        f"{'route':26} {'requests':>9} {'errors':>7} {'p50 ms':>8} {'p99 ms':>8}",
    ]
    for name, row in results["by_route"].items():
        lines.append(
            f"{name:26} {row['requests']:9d} {row['errors']:7d} "
            f"{_fmt(row['p50_ms'], '8.1f')} {_fmt(row['p99_ms'], '8.1f')}"
        )
    lines += ["", f"{'component':26} {'first MB':>9} {'start MB':>9} {'end MB':>9} {'growth':>8}"]
    for name, row in results["memory"].items():
        lines.append(
            f"{name:26} {_fmt(row['first_sample_mb'], '9.1f')} {_fmt(row['start_mb'], '9.1f')} "
            f"{_fmt(row['end_mb'], '9.1f')} {_fmt(row['growth'], '+8.2%')}"
        )
    lines += ["", f"{'interval s':>12} {'req/s':>7} {'errors':>7} {'p50 ms':>8} {'p99 ms':>8} {'RSS MB':>8}"]
    for row, sample in zip(results["intervals"], results["samples"][1:], strict=True):
        rate = row["requests"] / max(row["to_s"] - row["from_s"], 1e-9)
        lines.append(
            f"{row['from_s']:5.0f}-{row['to_s']:<6.0f} {rate:7.1f} {row['errors']:7d} "
            f"{_fmt(row['p50_ms'], '8.1f')} {_fmt(row['p99_ms'], '8.1f')} {sample['total']:8.1f}"
        )
    total = results["memory"]["total"]["growth"]
    verdict = "PASS" if results["passed"] else "FAIL"
    lines.append(
        f"\n{verdict}: total RSS growth {_fmt(total, '+.2%')} (limit {MAX_GROWTH:.0%}), "
        f"components growing past it: {', '.join(results['growing_components']) or 'none'}, "
        f"{overall['errors']} errors"
    )
    return "\n".join(lines)


def write(results: dict[str, Any], out: Path) -> None:
    """results.json (everything) and samples.csv (one row per sample, with its interval)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    columns = list(results["samples"][0])
    figures = ("requests", "errors", "p50_ms", "p99_ms")
    with (out / "samples.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["t_s", *[f"{c}_mb" for c in columns[1:]], *figures])
        for index, sample in enumerate(results["samples"]):
            row = results["intervals"][index - 1] if index else {}
            writer.writerow([*(sample[c] for c in columns), *(row.get(k) for k in figures)])


def source_tree() -> dict[str, Any]:
    """The commit the stack ran from, and the files that differed from it (read-only git calls)."""
    git = ["git", "--no-optional-locks", "-C", str(PROJECT_ROOT)]
    try:
        commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        status = subprocess.run([*git, "status", "--porcelain"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {"commit": commit.stdout.strip(), "uncommitted": status.stdout.splitlines()}


# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    served = sorted({model for route in ROUTES for model in route.models})
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load (600)")
    parser.add_argument("--users", type=int, default=8, help="closed-loop clients (8)")
    parser.add_argument("--think", type=float, default=0.1, help="mean pause between requests, s (0.1)")
    parser.add_argument("--sample-every", type=float, default=10.0, help="seconds between samples (10)")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds before the baseline (60)")
    parser.add_argument("--models", nargs="+", default=served, help=f"models to serve ({' '.join(served)})")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "load_tests" / "results" / "soak")
    args = parser.parse_args(argv)
    if args.warmup >= args.duration:
        parser.error("--warmup must be shorter than --duration")
    return args


def main(argv: list[str] | None = None) -> int:
    """Start the stack, soak it, stop it, report; 0 when it passed."""
    args = parse_args(argv)
    routes = served_routes(args.models)
    if not routes:
        sys.exit(f"no public route is served by {args.models}")
    work = args.out.resolve() / "work"  # the stack's archives, runtime folder and logs
    env, sources = model_sources(args.models, work)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the stack on a kill too
    launcher = Launcher(work, env=env, models=tuple(args.models))
    began, tree = datetime.datetime.now(datetime.UTC), source_tree()  # what the stack starts from
    with running(launcher, timeout_s=900):
        print(f"stack ready at {launcher.url} (runtime {launcher.runtime_dir}); soaking", flush=True)
        memory = StackMemory(launcher, args.models)
        load = Load(launcher.url, routes, args.think)
        samples = asyncio.run(soak(load, memory, args))
    meta = {
        "date": began.isoformat(timespec="seconds"),
        "command": " ".join(["python -m load_tests.soak", *(argv if argv is not None else sys.argv[1:])]),
        "duration_s": args.duration,
        "users": args.users,
        "think_s": args.think,
        "sample_every_s": args.sample_every,
        "warmup_s": args.warmup,
        "models": args.models,
        "sources": sources,
        "routes": [route.name for route in routes],
        "cpus": psutil.cpu_count(),
        "source_tree": tree,
        "launcher_log": str(launcher.log_file),
    }
    results = report(samples, load.outcomes, args, meta)
    write(results, args.out)
    print(table(results))
    print(f"results: {args.out / 'results.json'}, {args.out / 'samples.csv'}")
    return 0 if results["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())

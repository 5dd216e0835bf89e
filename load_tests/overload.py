"""`make overload`: offer a model four times the load it can sustain, and watch what happens.

    python -m load_tests.overload [--factor 4] [--phase 20] [--model /path/to/bert-base-uncased]
                                  [--out load_tests/results/overload]

The model is fill-mask on bert-base's shapes (the benchmark's timing model unless `--model`),
served by the real stack with the catalogue's admission limits. First its capacity is measured
(closed loop, 16 clients, the benchmark's driver); then an open-loop client offers requests at
a fixed rate, whatever the answers, in three phases: half the capacity, `factor` times it, and
half again. Every answer is checked: a correct 200, or a 503 that says the model is at capacity
with Retry-After; anything else, and any request without an answer in 60 s, is an error.
/healthcheck is polled throughout and the stack's RSS sampled. Then hostile crowds, one after
the other: one client holding 1,100 idle connections (reopening each one closed), then 128
clients polling /metrics, /openapi.json and /v2/health/ready in turn, then one client (an address
of its own) dripping its headers on 8,300 connections, then one holding 560 unfinished 1 MiB
bodies; meanwhile health and model probes, each on a new connection, must be answered right
within 1 s (the slow crowds: at least 95% of /healthcheck probes, on both ports). A table goes to stdout,
the figures to `results.json`; the exit status says whether every expectation held.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil
import requests
import uvloop

from load_tests.bench.scenarios import SCENARIOS
from load_tests.bench.servers import tree_rss
from load_tests.bench.timing_model import build_timing_model
from load_tests.kit.floods import (
    SLOW_HEADER_CONNECTIONS,
    SLOW_HEADER_DRIP,
    UNFINISHED_BODIES,
    UNFINISHED_BODY_BYTES,
    Probes,
    idle_connections,
    page_crowd,
    probe_for,
    slow_headers_opening,
    slow_senders,
    unfinished_body_opening,
)
from load_tests.kit.http import ClientPool, PreparedRequest, Reply, prepare_requests
from load_tests.kit.routes import answer_failure
from load_tests.kit.stack import Launcher, running
from load_tests.kit.stats import percentile
from modelserver.catalogue import Catalogue
from modelserver.launcher.processes import raise_open_files_limit
from modelserver.project import PROJECT_ROOT

TIMEOUT_S = 60.0
SCENARIO = SCENARIOS["fill_mask"]
IDLE_CONNECTIONS = 1100
CROWD_CLIENTS = 128
PROBE_EVERY_S = 0.25
PROBE_DEADLINE_S = 1.0


@dataclass
class Phase:
    """One phase of the run: its offered rate and everything observed during it."""

    name: str
    rate: float
    answered_ms: list[float] = field(default_factory=list)
    answered_sent_s: list[float] = field(default_factory=list)  # when each was sent, into the phase
    refused_ms: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    health_ms: list[float] = field(default_factory=list)
    health_failures: int = 0
    rss_mb: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0  # from the first request to the last answer

    def error(self, reason: str) -> None:
        """Count an outcome that is neither a correct answer nor a proper refusal."""
        self.errors[reason] = self.errors.get(reason, 0) + 1

    def summary(self) -> dict[str, Any]:
        """The phase's figures, latencies as p50/p99 in ms, rates over the phase's whole span."""
        return {
            "phase": self.name,
            "offered_rps": self.rate,
            "answered_rps": len(self.answered_ms) / self.elapsed_s,
            "refused_rps": len(self.refused_ms) / self.elapsed_s,
            "answered": len(self.answered_ms),
            "refused": len(self.refused_ms),
            "errors": sum(self.errors.values()),
            "error_reasons": self.errors,
            "answered_p50_ms": percentile(self.answered_ms, 50),
            "answered_p99_ms": percentile(self.answered_ms, 99),
            "refused_p50_ms": percentile(self.refused_ms, 50),
            "refused_p99_ms": percentile(self.refused_ms, 99),
            "health_max_ms": max(self.health_ms, default=None),
            "health_failures": self.health_failures,
            "rss_max_mb": max(self.rss_mb, default=None),
            # The five slowest answers as (seconds into the phase when sent, latency ms).
            "slowest": sorted(zip(self.answered_sent_s, self.answered_ms, strict=True), key=lambda x: -x[1])[
                :5
            ],
        }


def is_refusal(reply: Reply) -> bool:
    """A proper refusal: 503, Retry-After, and a JSON error saying the model is at capacity."""
    if reply.status != 503 or not reply.headers.get("retry-after"):
        return False
    try:
        answer = json.loads(reply.body)
    except ValueError:
        return False
    return isinstance(answer, dict) and "capacity" in str(answer.get("error", ""))


async def one(pool: ClientPool, request: PreparedRequest, phase: Phase, offset_s: float) -> None:
    """One request of the open loop (sent `offset_s` into the phase), classified."""
    start = time.perf_counter()
    try:
        reply = await asyncio.wait_for(pool.exchange(request.wire), TIMEOUT_S)
    except TimeoutError:
        phase.error("no answer in 60 s")
        return
    except OSError as error:
        phase.error(f"connection: {type(error).__name__}")
        return
    took_ms = (time.perf_counter() - start) * 1000
    failure = answer_failure(SCENARIO.answer_is_right, request.body, reply.status, reply.body)
    if not failure:
        phase.answered_ms.append(took_ms)
        phase.answered_sent_s.append(offset_s)
    elif is_refusal(reply):
        phase.refused_ms.append(took_ms)
    else:
        phase.error(failure)


async def offer(url: str, phase: Phase, seconds: float) -> None:
    """Start requests at `phase.rate` per second for `seconds`, never waiting for answers."""
    pool = ClientPool(url)
    prepared = prepare_requests(SCENARIO.path, SCENARIO.body, urlsplit(url).netloc)
    tasks = []
    start = time.perf_counter()
    for sent in range(int(phase.rate * seconds)):
        delay = start + sent / phase.rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        request = prepared[sent % len(prepared)]
        tasks.append(asyncio.ensure_future(one(pool, request, phase, time.perf_counter() - start)))
    await asyncio.gather(*tasks)
    phase.elapsed_s = time.perf_counter() - start


def watch(url: str, pid: int, phase: Phase, stop: asyncio.Event) -> Any:
    """Poll /healthcheck and sample the stack's RSS every half second until `stop`."""
    root = psutil.Process(pid)

    async def loop() -> None:
        while not stop.is_set():
            start = time.perf_counter()
            try:
                status = await asyncio.to_thread(health_status, url)
            except OSError:
                status = 0
            phase.health_ms.append((time.perf_counter() - start) * 1000)
            phase.health_failures += status != 200
            phase.rss_mb.append(tree_rss(root) / 2**20)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)

    return loop()


def health_status(url: str) -> int:
    """The public /healthcheck's status."""
    try:
        with urllib.request.urlopen(f"{url}/healthcheck", timeout=10) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as error:
        return error.code


def capacity(url: str, seconds: float) -> float:
    """What the model sustains: the benchmark's closed-loop driver, 16 clients."""
    command = [sys.executable, "-m", "load_tests.bench.drive", "--host", url, "--scenario", "fill_mask"]
    command += ["--users", "16", "--warmup", "3", "--duration", str(seconds)]
    output = subprocess.run(command, check=True, capture_output=True, text=True, cwd=PROJECT_ROOT).stdout
    result = json.loads(output.strip().splitlines()[-1])
    if result["errors"]:
        raise RuntimeError(f"errors while measuring capacity: {result['error_reasons']}")
    return float(result["throughput_rps"])


async def run_phases(url: str, pid: int, phases: list[Phase], seconds: float) -> None:
    """Each phase in turn, with the watcher running beside it."""
    for phase in phases:
        stop = asyncio.Event()
        watcher = asyncio.ensure_future(watch(url, pid, phase, stop))
        await offer(url, phase, seconds)
        stop.set()
        await watcher


def verdicts(summaries: list[dict[str, Any]], admitted: int, capacity_rps: float) -> list[tuple[str, bool]]:
    """What must hold, each with whether it did. Bounds come from the capacity measured before
    the phases, never from the overload phase itself (a collapse must not loosen its own bar):
    an accepted request waits behind at most the `admitted` others, served at capacity (Little's
    law), with a factor 2 for uneven batches."""
    normal, overload, after = summaries
    limit_s = 2 * admitted / capacity_rps
    health_ms = max((s["health_max_ms"] or 0) for s in summaries)
    return [
        ("no request failed or went unanswered", all(s["errors"] == 0 for s in summaries)),
        ("load beyond capacity was refused", overload["refused_rps"] > 0),
        ("refusals were immediate (p99 < 100 ms)", (overload["refused_p99_ms"] or 0) < 100),
        (
            f"accepted requests waited at most the admitted queue (p99 < {limit_s:.1f} s)",
            (overload["answered_p99_ms"] or 0) < limit_s * 1000,
        ),
        (
            "the model kept at least 80% of its capacity under overload",
            overload["answered_rps"] >= 0.8 * capacity_rps,
        ),
        (
            f"/healthcheck answered 200 throughout, within 1 s (slowest {health_ms:.0f} ms)",
            all(s["health_failures"] == 0 for s in summaries) and health_ms < 1000,
        ),
        (
            "memory under overload within 10% of normal",
            (overload["rss_max_mb"] or 0) <= 1.10 * (normal["rss_max_mb"] or 0),
        ),
        ("back to normal afterwards: nothing refused", after["refused_rps"] == 0),
        (
            "back to normal afterwards: p99 within 2x the normal phase's",
            (after["answered_p99_ms"] or 0) <= 2 * (normal["answered_p99_ms"] or 0),
        ),
    ]


def flood_probes(url: str, seconds: float, operations_health: str = "") -> dict[str, Probes]:
    """Health and model probes (and the operations port's health, given its URL), taking turns
    for `seconds`, each on a new connection."""
    body = json.dumps(SCENARIO.body())

    def health() -> requests.Response:
        return get_on_new_connection(f"{url}/healthcheck")

    def model() -> requests.Response:
        return post_on_new_connection(f"{url}{SCENARIO.path}", body)

    def model_right(response: requests.Response) -> bool:
        return response.status_code == 200 and SCENARIO.answer_is_right(json.loads(body), response.json())

    share = seconds / (3 if operations_health else 2)
    probes = {
        "health": probe_for(share, PROBE_EVERY_S, health, lambda r: r.status_code == 200, PROBE_DEADLINE_S),
        "model": probe_for(share, PROBE_EVERY_S, model, model_right, PROBE_DEADLINE_S),
    }
    if operations_health:
        probes["operations health"] = probe_for(
            share,
            PROBE_EVERY_S,
            lambda: get_on_new_connection(operations_health),
            lambda r: r.status_code == 200,
            PROBE_DEADLINE_S,
        )
    return probes


def get_on_new_connection(url: str) -> requests.Response:
    """A GET on a new connection, as a kubelet probes."""
    return requests.get(url, timeout=2 * PROBE_DEADLINE_S, headers={"Connection": "close"})


def post_on_new_connection(url: str, body: str) -> requests.Response:
    """A JSON POST on a new connection."""
    headers = {"Connection": "close", "Content-Type": "application/json"}
    return requests.post(url, data=body, timeout=2 * PROBE_DEADLINE_S, headers=headers)


# The pages a crowd polls in turn: /metrics (its own port), the API's documents, the v2 health page.
CROWDED_PAGES = ("/metrics", "/openapi.json", "/v2/health/ready")
# Slow senders: their share of /healthcheck probes answered within PROBE_DEADLINE_S at least.
SLOW_CROWD_ANSWERED = 0.95
SLOW_CROWD_SETTLE_S = 6.0  # the crowd opens its connections and fills them
# The unfinished bodies go where Envoy takes a whole 1 MiB (any other name on the generic path):
# a language model's route refuses such a body at once (its own, smaller limit).
UNFINISHED_PATH = "/predictions/no_such_model"


def slow_crowds(live: Launcher, seconds: float) -> tuple[dict[str, Any], list[tuple[str, bool]]]:
    """One client dripping its headers, then one holding unfinished bodies; the probes meanwhile."""
    crowds = {
        f"{SLOW_HEADER_CONNECTIONS} connections dripping headers": (
            SLOW_HEADER_CONNECTIONS,
            slow_headers_opening(SCENARIO.path),
            SLOW_HEADER_DRIP,
        ),
        f"{UNFINISHED_BODIES} unfinished 1 MiB bodies": (
            UNFINISHED_BODIES,
            unfinished_body_opening(UNFINISHED_PATH, UNFINISHED_BODY_BYTES),
            b"",
        ),
    }
    figures: dict[str, Any] = {}
    checks = []
    for name, (count, opening, drip) in crowds.items():
        with slow_senders(
            live.ports.public, count, opening, seconds + SLOW_CROWD_SETTLE_S, drip=drip
        ) as crowd:
            time.sleep(SLOW_CROWD_SETTLE_S)
            during = flood_probes(live.url, seconds - 2, live.health_url)
        figures[name] = {**vars(crowd), "answers": dict(crowd.answers), **_probe_figures(during)}
        healths = [during["health"], during["operations health"]]
        checks.append(
            (
                f"{name}: at least {SLOW_CROWD_ANSWERED:.0%} of /healthcheck probes (both ports) answered "
                f"within {PROBE_DEADLINE_S:g} s ({_answered(during)})",
                all(p.total > 0 and p.answered >= SLOW_CROWD_ANSWERED * p.total for p in healths)
                and crowd.held_at_most >= count,
            )
        )
    return figures, checks


def floods(live: Launcher, seconds: float) -> tuple[dict[str, Any], list[tuple[str, bool]]]:
    """The hostile crowds in turn, what the probes saw meanwhile, and the verdicts."""
    raise_open_files_limit(max(IDLE_CONNECTIONS, SLOW_HEADER_CONNECTIONS) + 512)
    with idle_connections(live.ports.public, IDLE_CONNECTIONS) as idle:
        during_idle = flood_probes(live.url, seconds)
    figures: dict[str, Any] = {"idle_connections": {**vars(idle), **_probe_figures(during_idle)}}
    checks = [
        (
            f"{IDLE_CONNECTIONS} idle connections: every probe answered within {PROBE_DEADLINE_S:g} s "
            f"({_answered(during_idle)})",
            all(not p.failures and p.total > 0 for p in during_idle.values())
            and idle.held_at_most >= IDLE_CONNECTIONS,
        )
    ]
    for page in CROWDED_PAGES:
        url = live.metrics_url if page == "/metrics" else f"{live.url}{page}"
        with page_crowd(url, CROWD_CLIENTS, seconds) as crowd:
            time.sleep(1.0)  # let the crowd arrive
            during = flood_probes(live.url, seconds - 2)
        figures[f"crowd on {page}"] = {
            "statuses": dict(crowd.statuses),
            "right_answers": crowd.right_answers,
            "failures": len(crowd.failures),
            **_probe_figures(during),
        }
        checks += [
            (
                # Health only: the crowd's 128 client threads share this machine's cores with the
                # model, so a model probe's time says more about the client than the server.
                f"{CROWD_CLIENTS} clients on {page}: every /healthcheck answered within "
                f"{PROBE_DEADLINE_S:g} s ({_answered(during)})",
                not during["health"].failures and during["health"].total > 0,
            ),
            (
                f"the {page} crowd got the page or JSON 503 with Retry-After, nothing else",
                not crowd.failures and crowd.right_answers > 0,
            ),
        ]
    slow_figures, slow_checks = slow_crowds(live, seconds)
    return {**figures, **slow_figures}, checks + slow_checks


def _probe_figures(probes: dict[str, Probes]) -> dict[str, Any]:
    return {
        f"{name}_probes": {
            "answered": p.answered,
            "total": p.total,
            "p99_ms": _ms(percentile(p.latencies_s, 99)),
        }
        for name, p in probes.items()
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def _answered(probes: dict[str, Probes]) -> str:
    return ", ".join(f"{name} {p.answered}/{p.total}" for name, p in probes.items())


def deadline_figures(live: Launcher) -> dict[str, float]:
    """Requests Envoy gave up on (the route's wait ran out) and those the workers then found
    late and never computed (`ExpiredRequests`), from one scrape after the phases."""
    text = requests.get(live.metrics_url, timeout=10).text

    def total(name: str, label: str) -> float:
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(name) and label in line
        )

    return {
        "envoy_timeouts": total("envoy_cluster_upstream_rq_timeout", 'envoy_cluster_name="model_fill_mask"'),
        "expired_in_workers": total("ExpiredRequests_total", 'ModelName="fill_mask"'),
    }


def print_verdicts(
    checks: list[tuple[str, bool]], deadlines: dict[str, float], summaries: list[dict[str, Any]]
) -> None:
    """Each verdict, the deadline figures and each phase's slowest answers, a line each."""
    for text, held in checks:
        print(f"{'yes' if held else 'NO '}  {text}")
    print(
        f"deadlines: Envoy timed out {deadlines['envoy_timeouts']:g} requests to the model; workers"
        f" answered {deadlines['expired_in_workers']:g} late ones 504 without computing them"
    )
    for row in summaries:
        slowest = ", ".join(f"{ms:.0f} ms at {at:.1f} s" for at, ms in row["slowest"])
        print(f"slowest answers, {row['phase']}: {slowest}")


def stack(work: Path, model: Path | None) -> contextlib.AbstractContextManager[Launcher]:
    """The real stack serving fill_mask on bert-base's shapes."""
    weights = model or build_timing_model(work / "bert")
    launcher = Launcher(work / "stack", env={"FILL_MASK_MODEL": str(weights)}, models=("fill_mask",))
    return running(launcher, timeout_s=600)


def table(summaries: list[dict[str, Any]]) -> str:
    """The phases as a Markdown table."""
    columns = [
        ("phase", "phase"),
        ("offered req/s", "offered_rps"),
        ("answered req/s", "answered_rps"),
        ("refused req/s", "refused_rps"),
        ("errors", "errors"),
        ("answered p50 ms", "answered_p50_ms"),
        ("answered p99 ms", "answered_p99_ms"),
        ("refused p99 ms", "refused_p99_ms"),
        ("health max ms", "health_max_ms"),
        ("RSS max MB", "rss_max_mb"),
    ]
    lines = ["| " + " | ".join(title for title, _ in columns) + " |", "|" + "---|" * len(columns)]
    for row in summaries:
        cells = [row[key] if isinstance(row[key], str) else f"{row[key] or 0:.1f}" for _, key in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def admission_limits() -> tuple[int, int]:
    """fill_mask's admission limits (concurrency, queue) from the catalogue."""
    limits = Catalogue.load().entry("fill_mask").admission
    assert limits.concurrency is not None and limits.queue is not None
    return limits.concurrency, limits.queue


def main() -> int:
    """Measure capacity, run the three phases, report; 1 if an expectation failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--factor", type=float, default=4.0)
    parser.add_argument("--phase", type=float, default=20.0, help="seconds per phase")
    parser.add_argument("--model", type=Path, help="a bert-base-uncased folder instead of random weights")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "load_tests" / "results" / "overload")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="overload-") as tmp, stack(Path(tmp), args.model) as live:
        assert live.process is not None
        sustained = capacity(live.url, args.phase)
        phases = [Phase("normal", sustained / 2), Phase("overload", sustained * args.factor)]
        phases.append(Phase("after", sustained / 2))
        uvloop.run(run_phases(live.url, live.process.pid, phases, args.phase))
        deadlines = deadline_figures(live)
        flooded = floods(live, args.phase)
    summaries = [phase.summary() for phase in phases]
    entry = admission_limits()
    checks = verdicts(summaries, sum(entry), sustained) + flooded[1]
    print(f"capacity (16 closed-loop clients): {sustained:.1f} req/s; admission {entry[0]} + {entry[1]}")
    print(table(summaries))
    print_verdicts(checks, deadlines, summaries)
    args.out.mkdir(parents=True, exist_ok=True)
    result = {
        "capacity_rps": sustained,
        "factor": args.factor,
        "phase_s": args.phase,
        "admission": {"concurrency": entry[0], "queue": entry[1]},
        "phases": summaries,
        "floods": flooded[0],
        "deadlines": deadlines,
        "checks": dict(checks),
    }
    (args.out / "results.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    return 0 if all(held for _, held in checks) else 1


if __name__ == "__main__":
    sys.exit(main())

"""The benchmark's outputs: medians over rounds, the issue's targets, JSON, Markdown and a chart."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import psutil
import torch

Key = tuple[str, str, int]  # scenario, server, clients
CRYSTAL_SERVERS = ("ours", "ours_v2", "fastapi")
MEDIAN_FIELDS = ("throughput_rps", "p50_ms", "p95_ms", "p99_ms", "cpu_cores", "mean_batch")


def summarise(runs: list[dict[str, Any]]) -> dict[Key, dict[str, Any]]:
    """Median of each figure over the rounds; errors summed; peak RSS the largest seen;
    throughput per round kept, so ratios can pair runs of the same round."""
    grouped: dict[Key, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        grouped[(run["scenario"], run["server"], run["users"])].append(run)
    summary = {}
    for key, group in grouped.items():
        row: dict[str, Any] = {"rounds": len(group), "errors": sum(r["errors"] for r in group)}
        row["by_round"] = {r.get("round", i): r["throughput_rps"] for i, r in enumerate(group)}
        for name in MEDIAN_FIELDS:
            values = [r[name] for r in group if r.get(name) is not None]
            row[name] = statistics.median(values) if values else None
        row["peak_rss_mb"] = max((r.get("peak_rss_mb") or 0.0) for r in group)
        summary[key] = row
    return summary


def paired_ratio(ours: dict[str, Any], peer: dict[str, Any]) -> float:
    """Median over rounds of ours / peer, each pair measured in the same round (minutes apart,
    so a shared machine's drift cancels); falls back to the ratio of medians."""
    pairs = [ours["by_round"][r] / peer["by_round"][r] for r in ours["by_round"] if peer["by_round"].get(r)]
    return statistics.median(pairs) if pairs else ours["throughput_rps"] / peer["throughput_rps"]


def _target(name: str, measured: float | None, goal: str, passed: bool | None, detail: str) -> dict[str, Any]:
    return {"target": name, "measured": measured, "goal": goal, "passed": passed, "detail": detail}


# The served throughput's least share of the model call alone at the batch the server formed.
RAW_SHARE_FLOOR = {"fp32": 0.90, "int8": 0.85}


def faster_than(
    label: str, ours: dict[str, Any] | None, peer: dict[str, Any] | None, goal: float
) -> list[dict[str, Any]]:
    """`ours` serves at least `goal` times `peer`'s throughput (paired by round); nothing when
    either was not measured (a peer skipped, a level not run)."""
    if not (ours and peer):
        return []
    ratio = paired_ratio(ours, peer)
    return [
        _target(
            label,
            ratio,
            f">= {goal:g}x",
            ratio >= goal,
            f"{ours['throughput_rps']:.1f} vs {peer['throughput_rps']:.1f} req/s",
        )
    ]


def fill_mask_targets(summary: dict[Key, dict[str, Any]], raw: dict[str, Any]) -> list[dict[str, Any]]:
    """/inference at 16 clients, fp32 and int8, against the tuned Flask peer and the raw model."""
    targets = []
    flask = summary.get(("fill_mask", "flask_tuned", 16))
    for server, precision in (("ours", "fp32"), ("ours_int8", "int8")):
        ours = summary.get(("fill_mask", server, 16))
        if not (ours and flask):
            continue
        label = f"/inference 16 clients, {precision}"
        ratio = paired_ratio(ours, flask)
        targets.append(
            _target(
                f"{label}: throughput vs tuned Flask",
                ratio,
                ">= 4x",
                ratio >= 4,
                f"{ours['throughput_rps']:.1f} vs {flask['throughput_rps']:.1f} req/s",
            )
        )
        targets.append(
            _target(
                f"{label}: p99 vs tuned Flask",
                ours["p99_ms"],
                "<= half the peer's",
                ours["p99_ms"] <= flask["p99_ms"] / 2,
                f"peer {flask['p99_ms']:.0f} ms",
            )
        )
        targets.append(_target(f"{label}: errors", ours["errors"], "0", ours["errors"] == 0, ""))
        targets += faster_than(
            f"{label}: throughput vs LitServe", ours, summary.get(("fill_mask", "litserve", 16)), 1
        )
        rates = raw.get("bert_sentences_per_s", {}).get(precision, {})
        batch = ours.get("mean_batch")
        if batch and rates:
            closest = min(rates, key=lambda b, formed=batch: abs(int(b) - formed))
            share = ours["throughput_rps"] / rates[closest]
            floor = RAW_SHARE_FLOOR[precision]
            targets.append(
                _target(
                    f"{label}: share of the raw forward",
                    share,
                    f">= {floor:.2f}",
                    share >= floor,
                    f"mean batch formed {batch:.1f}; raw {precision} at batch {closest}: "
                    f"{rates[closest]:.1f}/s",
                )
            )
    return targets


def sentiment_targets(summary: dict[Key, dict[str, Any]]) -> list[dict[str, Any]]:
    """/predict at 16 clients against its tuned Flask peer."""
    ours, flask = summary.get(("sentiment", "ours", 16)), summary.get(("sentiment", "flask_sentiment", 16))
    if not (ours and flask):
        return []
    ratio = paired_ratio(ours, flask)
    return [
        _target(
            "/predict 16 clients: throughput vs tuned Flask",
            ratio,
            ">= 4x",
            ratio >= 4,
            f"{ours['throughput_rps']:.1f} vs {flask['throughput_rps']:.1f} req/s",
        ),
        _target("/predict 16 clients: errors", ours["errors"], "0", ours["errors"] == 0, ""),
        *faster_than(
            "/predict 16 clients: throughput vs LitServe",
            ours,
            summary.get(("sentiment", "litserve_sentiment", 16)),
            1,
        ),
    ]


def best_mlserver(summary: dict[Key, dict[str, Any]], users: int) -> dict[str, Any] | None:
    """MLServer as a user would keep it: of the settings run, the fastest at this level."""
    tried = [
        row
        for (scenario, server, level), row in summary.items()
        if scenario == "crystal" and level == users and server.startswith("mlserver")
    ]
    return max(tried, key=lambda row: row["throughput_rps"], default=None)


def crystal_targets(summary: dict[Key, dict[str, Any]]) -> list[dict[str, Any]]:
    """/sklearn against FastAPI and MLServer at 1 and 64 clients, and against our own v2 route."""
    cell = {
        (server, users): summary.get(("crystal", server, users))
        for server in CRYSTAL_SERVERS
        for users in (1, 64)
    }
    targets = []
    for users, versus_fastapi in ((1, 0.5), (64, 1.5)):
        level = f"/sklearn {users} client{'s' if users > 1 else ''}"
        targets += faster_than(
            f"{level}: throughput vs FastAPI", cell["ours", users], cell["fastapi", users], versus_fastapi
        )
        targets += faster_than(
            f"{level}: throughput vs MLServer's best", cell["ours", users], best_mlserver(summary, users), 1
        )
    for users in (1, 64):
        # "No slower": within the 5% two runs of one server differ by on this machine.
        targets += faster_than(
            f"/sklearn {users} client(s): throughput vs our v2 route",
            cell["ours", users],
            cell["ours_v2", users],
            0.95,
        )
    ours, fastapi = cell["ours", 64], cell["fastapi", 64]
    if ours and fastapi:
        targets.append(
            _target(
                "/sklearn 64 clients: p99 vs FastAPI's",
                ours["p99_ms"],
                "<= the peer's",
                ours["p99_ms"] <= fastapi["p99_ms"],
                f"FastAPI {fastapi['p99_ms']:.1f} ms",
            )
        )
    if ours:
        targets.append(
            _target("/sklearn 64 clients: p99", ours["p99_ms"], "<= 100 ms", ours["p99_ms"] <= 100, "")
        )
        targets.append(_target("/sklearn 64 clients: errors", ours["errors"], "0", ours["errors"] == 0, ""))
    return targets


def check_targets(
    summary: dict[Key, dict[str, Any]], raw: dict[str, Any], cold: list[float]
) -> list[dict[str, Any]]:
    """The performance targets, each with the figure that decides it (None: not measured)."""
    targets = fill_mask_targets(summary, raw) + sentiment_targets(summary) + crystal_targets(summary)
    ours, call = summary.get(("crystal", "ours", 1)), raw.get("crystal_call")
    if ours and call:
        overhead = ours["p50_ms"] - call["p50_us"] / 1000
        targets.append(
            _target(
                "/sklearn 1 client: serving overhead p50",
                overhead,
                "<= 5 ms",
                overhead <= 5,
                f"p50 {ours['p50_ms']:.2f} ms, model call {call['p50_us']:.0f} us",
            )
        )
    if cold:
        median = statistics.median(cold)
        targets.append(
            _target(
                "cold start to healthy (archives built)",
                median,
                "<= 20 s",
                median <= 20,
                "runs: " + ", ".join(f"{c:.1f}" for c in cold),
            )
        )
    return targets


# The instruction sets that decide fp32 and int8 speed: machines of one kind differ in them,
# so only ratios measured in one run compare.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile")


def cpu_facts(cpuinfo: str) -> dict[str, Any]:
    """The CPU model and which of ISA_FLAGS it has, from /proc/cpuinfo's text."""
    cpu, flags = platform.processor() or "unknown", set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and cpu in ("unknown", platform.processor()):
            cpu = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    return {"cpu": cpu, "isa": [flag for flag in ISA_FLAGS if flag in flags]}


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        cpuinfo = ""
    facts = cpu_facts(cpuinfo)
    return {
        "cpu": facts["cpu"],
        "isa": " ".join(facts["isa"]) or "none of " + " ".join(ISA_FLAGS),
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "openvino": importlib.metadata.version("openvino"),
        "kernel": platform.release(),
    }


def _fmt(value: Any, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def side_by_side(summary: dict[Key, dict[str, Any]], scenario: str) -> list[str]:
    """One scenario's servers in columns, the client counts in rows: req/s and p99 in ms."""
    servers = sorted(
        {key[1] for key in summary if key[0] == scenario}, key=lambda name: (name != "ours", name)
    )
    levels = sorted({key[2] for key in summary if key[0] == scenario})
    lines = [
        f"**{scenario}**, req/s (p99 ms):",
        "",
        "| clients | " + " | ".join(servers) + " |",
        "|---" * (len(servers) + 1) + "|",
    ]
    for users in levels:
        cells = []
        for server in servers:
            row = summary.get((scenario, server, users))
            cells.append(f"{row['throughput_rps']:,.1f} ({_fmt(row['p99_ms'], 1)})" if row else "-")
        lines.append(f"| {users} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def every_run(summary: dict[Key, dict[str, Any]]) -> list[str]:
    """Each scenario, server and level with all its figures."""
    lines = [
        "| scenario | server | clients | req/s | p50 ms | p95 ms | p99 ms | errors | CPU cores | "
        "peak RSS MB | mean batch |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (scenario, server, users), row in sorted(summary.items()):
        lines.append(
            f"| {scenario} | {server} | {users} | {_fmt(row['throughput_rps'])} | {_fmt(row['p50_ms'], 2)} "
            f"| {_fmt(row['p95_ms'], 2)} | {_fmt(row['p99_ms'], 2)} | {row['errors']} | "
            f"{_fmt(row['cpu_cores'], 2)} | {_fmt(row['peak_rss_mb'], 0)} | {_fmt(row['mean_batch'])} |"
        )
    return lines


def markdown(results: dict[str, Any], summary: dict[Key, dict[str, Any]]) -> str:
    """The tables a reader needs: servers side by side, every run, targets, raw limits, machine."""
    lines = [
        f"Weights: {results['weights']}. Medians of {results['options']['runs']} interleaved rounds.",
        "",
    ]
    for scenario in sorted({key[0] for key in summary}):
        lines += side_by_side(summary, scenario)
    for name, reason in results.get("skipped", {}).items():
        lines += [f"Skipped **{name}**: {reason}", ""]
    lines += every_run(summary)
    lines += ["", "| target | measured | goal | met | detail |", "|---|---|---|---|---|"]
    for target in results["targets"]:
        met = {True: "yes", False: "NO", None: "-"}[target["passed"]]
        lines.append(
            f"| {target['target']} | {_fmt(target['measured'], 2)} | {target['goal']} | {met} | "
            f"{target['detail']} |"
        )
    lines.append("")
    for precision, rates in results["raw"].get("bert_sentences_per_s", {}).items():
        lines.append(
            f"Raw model call {precision} (no server, 2 threads), sentences/s by batch size: "
            + ", ".join(f"{b}: {r:.1f}" for b, r in sorted(rates.items(), key=lambda x: int(x[0])))
            + "."
        )
    for label, parity in results["raw"].get("parity", {}).items():
        if parity:
            lines.append(f"Gate of {label} against eager on these weights: {parity['summary']}.")
    call = results["raw"].get("crystal_call")
    if call:
        lines.append(
            f"Raw crystal `predict_proba`, one row: p50 {call['p50_us']:.0f} us, p99 {call['p99_us']:.0f} us."
        )
    lines += [
        "",
        "Servers: " + "; ".join(f"**{k}**: {v}" for k, v in results["descriptions"].items()),
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in results["machine"].items()),
    ]
    return "\n".join(lines) + "\n"


def chart(summary: dict[Key, dict[str, Any]], path: Path) -> None:
    """Throughput and p99 against clients, one panel per scenario."""
    import matplotlib  # pylint: disable=import-outside-toplevel

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

    scenarios = sorted({key[0] for key in summary})
    figure, axes = plt.subplots(2, len(scenarios), figsize=(6 * len(scenarios), 8), squeeze=False)
    for column, scenario in enumerate(scenarios):
        for server in sorted({key[1] for key in summary if key[0] == scenario}):
            points = sorted((key[2], row) for key, row in summary.items() if key[:2] == (scenario, server))
            clients = [p[0] for p in points]
            axes[0][column].plot(clients, [p[1]["throughput_rps"] for p in points], marker="o", label=server)
            axes[1][column].plot(clients, [p[1]["p99_ms"] for p in points], marker="o", label=server)
        for row, label in ((0, "requests/s"), (1, "p99 latency, ms")):
            axis = axes[row][column]
            axis.set_xscale("log", base=2)
            axis.set_xlabel("concurrent clients")
            axis.set_ylabel(label)
            axis.set_title(f"{scenario}: {label}")
            axis.grid(alpha=0.3)
            axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def write_report(results: dict[str, Any], out: Path) -> str:
    """Write results.json, results.md and throughput.png into `out`; return the Markdown."""
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(results["runs"])
    results["machine"] = machine()
    results["targets"] = check_targets(summary, results["raw"], results["cold_start_s"])
    results["summary"] = [
        {"scenario": k[0], "server": k[1], "clients": k[2], **v} for k, v in sorted(summary.items())
    ]
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
    text = markdown(results, summary)
    (out / "results.md").write_text(text, encoding="utf-8")
    chart(summary, out / "throughput.png")
    return text

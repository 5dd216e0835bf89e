"""`make bench` in miniature: the whole harness on tiny models, for seconds, so it cannot rot.

Starts our stack and every peer, drives each at two concurrency levels with the light client
and one level with locust, measures the raw model and a cold start, and writes the report.
No speed is asserted (CI machines are shared); shapes, answers and error counts are.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from load_tests.kit.stack import Launcher
from modelserver.project import PROJECT_ROOT

pytestmark = pytest.mark.timeout(900)


def test_quick_benchmark_writes_a_complete_report(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    command = [sys.executable, "-m", "load_tests.bench", "--quick", "--levels", "1,4", "--out", str(out)]
    finished = subprocess.run(
        command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=840, check=False
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    cells = {(r["scenario"], r["server"], r["clients"]): r for r in results["summary"]}
    expected = {("fill_mask", s) for s in ("ours", "ours_int8", "ours_1x2", "flask_default", "flask_tuned")}
    expected |= {("crystal", s) for s in ("ours", "ours_v2", "fastapi")}
    expected |= {("sentiment", s) for s in ("ours", "flask_sentiment")}
    # The real serving libraries, each in a virtualenv the bench installs from the package
    # index: run, or skipped with pip's reason (no index reachable), never silently absent.
    real = {("fill_mask", "litserve"), ("sentiment", "litserve_sentiment")}
    real |= {("crystal", "mlserver"), ("crystal", "mlserver_batch")}
    skipped = results["skipped"]
    assert set(skipped) <= {server for _, server in real}
    assert all("pip" in reason or "install" in reason for reason in skipped.values()), skipped
    expected |= {(scenario, server) for scenario, server in real if server not in skipped}
    assert {(scenario, server) for scenario, server, _ in cells} == expected
    for (_, server, clients), cell in cells.items():
        assert cell["throughput_rps"] > 0, (server, clients)
        assert cell["errors"] == 0, (server, clients, cell)
        assert cell["cpu_cores"] is not None and cell["peak_rss_mb"] > 0
    assert cells[("crystal", "ours", 4)]["mean_batch"] >= 1
    assert set(results["raw"]["bert_sentences_per_s"]) == {"torch_fp32", "fp32", "int8"}
    assert results["machine"]["cpu"] and "openvino" in results["machine"]
    assert results["cold_start_s"] and all(s > 0 for s in results["cold_start_s"])
    assert {t["target"] for t in results["targets"]} >= {"/sklearn 1 client: serving overhead p50"}
    report = (out / "results.md").read_text(encoding="utf-8")
    assert "| crystal | ours | 4 |" in report
    assert all(f"Skipped **{name}**" in report for name in skipped)
    assert (out / "throughput.png").read_bytes().startswith(b"\x89PNG")


def drive(stack: Launcher, *options: str) -> tuple[list[str], dict[str, Any]]:
    """One `load_tests.bench.drive` run on the crystal scenario: its output lines and result."""
    command = [sys.executable, "-m", "load_tests.bench.drive", "--host", stack.url, "--scenario", "crystal"]
    finished = subprocess.run(
        [*command, *options], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    lines = finished.stdout.splitlines()
    return lines, json.loads(lines[-1])


@pytest.mark.parametrize("client", ["fast", "locust"])
def test_both_clients_measure_the_live_stack(stack: Launcher, client: str) -> None:
    lines, result = drive(stack, "--users", "4", "--warmup", "0.5", "--duration", "1.5", "--client", client)
    assert lines[:2] == ["window-start", "window-end"]
    assert result["requests"] > 10
    assert result["errors"] == 0, result["error_reasons"]
    assert 0 < result["p50_ms"] <= result["p95_ms"] <= result["p99_ms"]


def test_a_wrong_answer_counts_as_an_error(stack: Launcher) -> None:
    # The same scenario on another crystal model passes; on an unknown model every answer fails.
    window = ("--users", "1", "--warmup", "0", "--duration", "1")
    _, ok = drive(stack, "--path", "/predictions/crystal_pytorch", *window)
    assert ok["errors"] == 0 and ok["requests"] > 0
    _, bad = drive(stack, "--path", "/predictions/no_such_model", *window)
    assert bad["requests"] == 0
    assert bad["errors"] > 0 and list(bad["error_reasons"]) == ["HTTP 404"]


def test_the_hop_breakdown_adds_up_to_the_clients_time(tmp_path: Path) -> None:
    """`make hops` in miniature: every hop measured, none negative but the remainders' noise,
    and the hops sum to the client's median (the client's share is what is left of it)."""
    out = tmp_path / "hops"
    command = [
        sys.executable,
        "-m",
        "load_tests.hops",
        "--requests",
        "300",
        "--levels",
        "1,8",
        "--warmup-s",
        "2",
        "--out",
        str(out),
    ]
    finished = subprocess.run(
        command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600, check=False
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    levels = json.loads((out / "results.json").read_text(encoding="utf-8"))["levels"]
    assert [row["clients"] for row in levels] == [1, 8]
    for row in levels:
        hops = row["hops_us"]
        assert abs(sum(hops.values()) - row["client_p50_us"]) < 1, row
        for measured in (
            "Envoy: request in, filters, to TorchServe",
            "handler: predict",
            "Envoy: answer back to the client",
        ):
            assert hops[measured] > 0, (measured, row)
        assert row["throughput_rps"] > 0 and row["mean_batch"] >= 1
        # The CPU each part spent per request: Envoy, TorchServe's Java and the worker at least.
        assert {"envoy", "torchserve_java", "worker:?"} <= set(row["cpu_us"]), row["cpu_us"]
    assert levels[0]["mean_batch"] == 1.0  # a lone client's requests are never batched together

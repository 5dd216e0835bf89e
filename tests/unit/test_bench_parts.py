"""The benchmark's own parts: its scenarios' requests and checks, the measured window, the targets."""

from __future__ import annotations

import json
from typing import Any

from load_tests.bench.drive import Recorder
from load_tests.bench.report import check_targets, summarise
from load_tests.bench.scenarios import SCENARIOS
from load_tests.kit.http import prepare_requests


def test_requests_are_encoded_once_with_their_length_and_body() -> None:
    crystal = SCENARIOS["crystal"]
    [request] = prepare_requests(crystal.path, crystal.body, "localhost:3000", count=1)
    head, body = request.wire.split(b"\r\n\r\n")
    assert head.startswith(b"POST /sklearn HTTP/1.1\r\n")
    assert f"Content-Length: {len(body)}".encode() in head
    assert json.loads(body) == request.body


def test_answer_checks_reject_wrong_shapes() -> None:
    crystal, fill_mask = SCENARIOS["crystal"], SCENARIOS["fill_mask"]
    one_row = crystal.body()
    assert crystal.answer_is_right(one_row, {"prediction": ["blue"], "scores": [{"blue": 1.0}]})
    assert not crystal.answer_is_right(one_row, {"prediction": ["red"], "scores": [{}]})
    candidate = {"score": 0.1, "token": 1, "token_str": "a", "sequence": "a"}
    text = fill_mask.body()
    assert fill_mask.answer_is_right(text, [candidate] * 5)
    assert not fill_mask.answer_is_right(text, [candidate] * 4)
    sentiment = SCENARIOS["sentiment"]
    assert sentiment.answer_is_right(sentiment.body(), {"label": "POSITIVE", "score": 0.9})
    assert not sentiment.answer_is_right(sentiment.body(), {"label": "POSITIVE", "score": 1.5})


def test_only_requests_finished_inside_the_window_count() -> None:
    recorder = Recorder()
    recorder.record(5.0, "")  # warm-up
    recorder.open_window()
    for latency in (1.0, 2.0, 3.0, 4.0):
        recorder.record(latency, "")
    recorder.record(9.0, "HTTP 503")
    recorder.close_window()
    recorder.record(7.0, "")  # after the window
    summary = recorder.summary()
    assert summary["requests"] == 4
    assert summary["errors"] == 1
    assert summary["error_reasons"] == {"HTTP 503": 1}
    assert summary["p50_ms"] == 2.5


def _run(server: str, users: int, rps: float, p99: float, **extra: Any) -> dict[str, Any]:
    scenario = "crystal" if server in {"fastapi", "ours"} and users != 16 else "fill_mask"
    return {
        "scenario": scenario,
        "server": server,
        "users": users,
        "throughput_rps": rps,
        "p50_ms": 2.0,
        "p95_ms": p99,
        "p99_ms": p99,
        "errors": 0,
        "cpu_cores": 1.0,
        "peak_rss_mb": 10.0,
        **extra,
    }


def test_targets_use_medians_of_the_rounds() -> None:
    # Ratios pair runs of the same round: 4000/2000, 5000/2400, 9000/3000 -> median 2.08.
    runs = [_run("ours", 64, rps, 30.0, round=i) for i, rps in enumerate((4000.0, 5000.0, 9000.0))]
    runs += [_run("fastapi", 64, rps, 60.0, round=i) for i, rps in enumerate((2000.0, 2400.0, 3000.0))]
    runs += [
        _run("ours", 16, 40.0, 800.0, mean_batch=8.0),
        _run("flask_tuned", 16, 10.0, 1500.0),
        _run("ours", 1, 100.0, 5.0),
    ]
    summary = summarise(runs)
    assert summary[("crystal", "ours", 64)]["throughput_rps"] == 5000.0
    raw = {"bert_sentences_per_s": {"fp32": {"1": 10.0, "8": 45.0}}, "crystal_call": {"p50_us": 500.0}}
    targets = {t["target"]: t for t in check_targets(summary, raw, [12.0, 30.0, 15.0])}
    assert round(targets["/sklearn 64 clients: throughput vs FastAPI"]["measured"], 2) == 2.08
    assert targets["/inference 16 clients, fp32: throughput vs tuned Flask"]["measured"] == 4.0
    assert round(targets["/inference 16 clients, fp32: share of the raw forward"]["measured"], 3) == 0.889
    assert targets["/sklearn 1 client: serving overhead p50"]["measured"] == 1.5
    assert targets["cold start to healthy (archives built)"]["measured"] == 15.0


def test_the_cpu_and_its_isa_flags_are_recorded() -> None:
    from load_tests.bench.report import cpu_facts  # pylint: disable=import-outside-toplevel

    flags = "fpu avx2 fma avx512f avx512_vnni avx512_bf16"
    cpuinfo = f"processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: {flags}\n"
    assert cpu_facts(cpuinfo + cpuinfo.replace(": 0", ": 1")) == {
        "cpu": "AMD EPYC",
        "isa": ["avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16"],
    }
    avx2_only = cpu_facts("model name\t: Intel Xeon\nflags\t\t: fpu sse4_2 avx avx2 fma\n")
    assert avx2_only["isa"] == ["avx2", "fma"]

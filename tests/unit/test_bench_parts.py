"""The benchmark's own parts: its scenarios' requests and checks, the measured window, the targets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from load_tests.bench.drive import Recorder
from load_tests.bench.report import check_targets, markdown, summarise
from load_tests.bench.scenarios import REQUESTS, SCENARIOS
from load_tests.kit.http import prepare_requests
from load_tests.peers.mlserver_crystal import write_settings


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


def test_open_inference_answers_are_checked_per_server() -> None:
    ours, mlserver = REQUESTS["crystal_v2"], REQUESTS["crystal_v2_proba"]
    request = ours.body()
    assert request["inputs"][0]["shape"] == [1, 4] and "outputs" not in request
    label = {"name": "label", "shape": [1], "datatype": "BYTES", "data": ["green"]}
    scores = {"name": "scores", "shape": [1, 3], "datatype": "FP32", "data": [0.1, 0.8, 0.1]}
    assert ours.answer_is_right(request, {"outputs": [label, scores]})
    assert not ours.answer_is_right(request, {"outputs": [scores]})
    assert not ours.answer_is_right(request, {"outputs": [{**label, "data": ["red"]}, scores]})
    asked = mlserver.body()
    assert asked["outputs"] == [{"name": "predict_proba"}] and ours.path == mlserver.path
    proba = {"name": "predict_proba", "shape": [1, 3], "datatype": "FP64", "data": [0.1, 0.8, 0.1]}
    assert mlserver.answer_is_right(asked, {"outputs": [proba]})
    assert not mlserver.answer_is_right(asked, {"outputs": [{**proba, "data": [0.1, 0.8]}]})
    assert not mlserver.answer_is_right(asked, {"outputs": [{**proba, "data": [1, 0, 0]}]})  # not floats
    assert not mlserver.answer_is_right(asked, {"error": "no"})


def test_mlserver_settings_are_written_as_its_docs_show(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("PEER_MODEL", "/models/crystal.joblib")
    monkeypatch.setenv("PEER_WORKERS", "0")
    monkeypatch.setenv("PEER_MAX_BATCH", "32")
    write_settings(tmp_path, [8080, 8081, 8082])
    server = json.loads((tmp_path / "settings.json").read_text(encoding="utf-8"))
    model = json.loads((tmp_path / "crystal_sklearn" / "model-settings.json").read_text(encoding="utf-8"))
    assert (server["http_port"], server["grpc_port"], server["metrics_port"]) == (8080, 8081, 8082)
    assert server["parallel_workers"] == 0 and server["host"] == "127.0.0.1"
    assert Path(server["metrics_dir"]).parent == tmp_path  # never `.metrics` in the project
    assert model["implementation"] == "mlserver_sklearn.SKLearnModel"
    assert model["parameters"]["uri"] == "/models/crystal.joblib"
    assert (model["max_batch_size"], model["max_batch_time"]) == (32, 0.001)


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
    scenario = "fill_mask" if users == 16 else "crystal"
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


def test_crystal_targets_take_mlservers_best_setting_at_each_level() -> None:
    runs = [
        _run("ours", 1, 300.0, 6.0),
        _run("fastapi", 1, 1000.0, 2.0),
        _run("mlserver", 1, 800.0, 3.0),
        _run("mlserver_batch", 1, 350.0, 5.0),
        _run("ours", 64, 7000.0, 20.0),
        _run("ours_v2", 64, 5000.0, 30.0),
        _run("fastapi", 64, 4000.0, 40.0),
        _run("mlserver", 64, 1100.0, 90.0),
        _run("mlserver_batch", 64, 1750.0, 160.0),
    ]
    summary = summarise(runs)
    targets = {t["target"]: t for t in check_targets(summary, {}, [])}
    assert targets["/sklearn 1 client: throughput vs FastAPI"]["measured"] == 0.3
    assert not targets["/sklearn 1 client: throughput vs FastAPI"]["passed"]
    assert targets["/sklearn 1 client: throughput vs MLServer's best"]["measured"] == 300.0 / 800.0
    assert targets["/sklearn 64 clients: throughput vs MLServer's best"]["measured"] == 4.0
    assert targets["/sklearn 64 clients: throughput vs FastAPI"]["passed"]  # 1.75x
    assert targets["/sklearn 64 clients: p99 vs FastAPI's"]["passed"]
    assert targets["/sklearn 64 client(s): throughput vs our v2 route"]["measured"] == 1.4
    assert "/sklearn 1 client(s): throughput vs our v2 route" not in targets  # not measured
    text = markdown(
        {
            "weights": "w",
            "options": {"runs": 1},
            "targets": [],
            "raw": {},
            "descriptions": {},
            "machine": {},
            "skipped": {"litserve": "pip could not install litserve==0.2.19"},
        },
        summary,
    )
    assert "| clients | ours | fastapi | mlserver | mlserver_batch | ours_v2 |" in text
    assert (
        "| 64 | 7,000.0 (20.0) | 4,000.0 (40.0) | 1,100.0 (90.0) | 1,750.0 (160.0) | 5,000.0 (30.0) |" in text
    )
    assert "Skipped **litserve**: pip could not install" in text


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

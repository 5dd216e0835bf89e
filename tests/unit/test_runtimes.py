"""The forward-pass runtimes: where a worker runs, the build-time export and its parity gate."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from modelserver import archive
from modelserver.archive import build_archive
from modelserver.catalogue import Catalogue
from modelserver.errors import ConfigError
from modelserver.kinds import ModelFiles
from modelserver.kinds.fill_mask import load_fill_mask_runtime
from modelserver.kinds.text_classification import load_text_classification_runtime
from modelserver.runtimes import COMPILED_SUBDIR, PARITY_REPORT, place
from modelserver.runtimes.export import SCORE_TOLERANCE, TASKS, ParityReport, check_parity, main, probe_texts
from modelserver.runtimes.forward import OpenVinoForward, TorchForward
from modelserver.serving.torchserve_adapter import gpu_of
from tests.helpers import FakeContext


@pytest.mark.parametrize(
    ("requested", "gpu_id", "cuda", "runtime", "device"),
    [
        ("openvino", None, False, "openvino", "cpu"),
        ("torch", None, True, "torch", "cpu"),
        ("openvino", 0, False, "openvino", "cpu"),  # a GPU id without CUDA: the CPU, said so
        ("openvino", 1, True, "torch", "cuda:1"),  # the compiled runtime is CPU-only
        ("torch", 0, True, "torch", "cuda:0"),
    ],
)
def test_a_worker_runs_where_torchserve_placed_it(
    requested: Any, gpu_id: int | None, cuda: bool, runtime: str, device: str
) -> None:
    placement = place(requested, gpu_id, cuda)
    assert (placement.runtime, placement.device) == (runtime, device)
    assert placement.reason


def test_the_adapter_reads_the_gpu_torchserve_assigns(tmp_path: Path) -> None:
    context = FakeContext(tmp_path, {})
    assert gpu_of(context) is None
    context.gpu_id = "2"
    assert gpu_of(context) == 2


def test_the_default_runtime_is_compiled_and_torch_stays_available(tiny_hf_models: dict[str, Path]) -> None:
    archive_dir = tiny_hf_models["fill_mask"].parent
    compiled = load_fill_mask_runtime(ModelFiles(archive_dir))
    eager = load_fill_mask_runtime(ModelFiles(archive_dir, settings={"runtime": "torch", "threads": 2}))
    assert isinstance(compiled.forward, OpenVinoForward)
    assert isinstance(eager.forward, TorchForward) and torch.get_num_threads() == 2
    report = json.loads((archive_dir / COMPILED_SUBDIR / PARITY_REPORT).read_text())
    assert report["passed"] and report["score_max_abs_diff"] <= SCORE_TOLERANCE
    assert report["probes"] >= 4 and report["longest_probe_tokens"] > 20


def test_a_missing_graph_fails_the_load_naming_the_fix(
    tiny_hf_models: dict[str, Path], tmp_path: Path
) -> None:
    (tmp_path / "model").symlink_to(tiny_hf_models["sentiment"], target_is_directory=True)
    with pytest.raises(ConfigError, match=r"no exported graph.*runtime: torch"):
        load_text_classification_runtime(ModelFiles(tmp_path))


class Perturbed:
    """A forward pass that is off by `delta` everywhere: what the gate must refuse."""

    def __init__(self, forward: Any, delta: float) -> None:
        self.device = forward.device
        self._forward = forward
        self._delta = delta

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self._forward(input_ids, attention_mask) + self._delta


@pytest.mark.parametrize("kind", ["fill_mask", "sentiment"])
def test_the_gate_passes_the_export_and_refuses_a_wrong_graph(
    tiny_hf_models: dict[str, Path], kind: str
) -> None:
    archive_dir = tiny_hf_models[kind].parent
    task = TASKS["fill-mask" if kind == "fill_mask" else "text-classification"]
    eager = task.load(ModelFiles(archive_dir, settings={"runtime": "torch"}))
    compiled = task.load(ModelFiles(archive_dir))
    texts = probe_texts(eager, task)
    passed = ParityReport(task="t", quantize="none")
    check_parity(eager, compiled, texts, passed)
    assert passed.passed and passed.output_max_abs_diff <= passed.output_bound
    compiled.forward = Perturbed(compiled.forward, 0.05)  # type: ignore[assignment]
    refused = ParityReport(task="t", quantize="none")
    check_parity(eager, compiled, texts, refused)
    assert not refused.passed and "output differs" in refused.problems[0]


def test_near_ties_may_swap_but_nothing_else(tiny_hf_models: dict[str, Path]) -> None:
    """Two candidates whose eager scores are within the tolerance may come in either order;
    a larger gap in the ranking fails the gate."""
    from modelserver.runtimes.export import _ranking_swaps  # pylint: disable=import-outside-toplevel

    del tiny_hf_models
    reference = torch.tensor([[0.5, 0.3, 0.3 - SCORE_TOLERANCE / 2, 0.1]])
    swapped = torch.tensor([[0.5, 0.3 - SCORE_TOLERANCE / 2, 0.3, 0.1]])
    report = ParityReport(task="t", quantize="none")
    _ranking_swaps(reference, swapped, report)
    assert report.passed and report.near_tie_swaps == 2
    wrong = torch.tensor([[0.1, 0.3, 0.3, 0.5]])
    _ranking_swaps(reference, wrong, report)
    assert not report.passed and "instead of" in report.problems[0]


def test_the_export_cli_says_why_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--task", "fill-mask", "--archive-dir", str(tmp_path)]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("export failed: ConfigError: cannot load the model") and "\n" not in error


def text_entry(runtime: str | None) -> Any:
    """The catalogue's sentiment entry, with the runtime asked for."""
    entry = Catalogue.load().entry("sentiment")
    settings = {**entry.handler_config, "threads": 1}
    if runtime:
        settings["runtime"] = runtime
    return entry.model_copy(update={"handler_config": settings})


def test_the_build_exports_and_carries_the_graph(tiny_hf_models: dict[str, Path], tmp_path: Path) -> None:
    entry = text_entry(None)
    environ = {"SENTIMENT_MODEL": str(tiny_hf_models["sentiment"])}
    built = build_archive(entry, tmp_path / "store", environ)
    assert built.rebuilt and built.runtime == "openvino"
    config = yaml.safe_load((built.archive / "model-config.yaml").read_text())
    assert config["handler"]["runtime"] == "openvino"
    assert (built.archive / COMPILED_SUBDIR / "openvino_model.xml").is_file()
    again = build_archive(entry, tmp_path / "store", environ)
    assert not again.rebuilt and again.runtime == "openvino"
    served = load_text_classification_runtime(ModelFiles(built.archive, settings=config["handler"]))
    assert isinstance(served.forward, OpenVinoForward)


def test_a_failed_export_builds_eager_with_the_reason(
    tiny_hf_models: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(archive, "EXPORT_MODULE", "modelserver.runtimes.no_such_exporter")
    entry = text_entry("openvino")
    with caplog.at_level(logging.WARNING, logger="modelserver.archive"):
        built = build_archive(
            entry, tmp_path / "store", {"SENTIMENT_MODEL": str(tiny_hf_models["sentiment"])}
        )
    assert built.runtime == "torch" and not (built.archive / COMPILED_SUBDIR).exists()
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith("sentiment: serving with PyTorch eager: ") and "no_such_exporter" in warning
    config = yaml.safe_load((built.archive / "model-config.yaml").read_text())
    assert config["handler"]["runtime"] == "torch"
    assert isinstance(
        load_text_classification_runtime(ModelFiles(built.archive, settings=config["handler"])).forward,
        TorchForward,
    )


def test_runtime_torch_builds_no_graph(tiny_hf_models: dict[str, Path], tmp_path: Path) -> None:
    built = build_archive(
        text_entry("torch"),
        tmp_path / "store",
        {"SENTIMENT_MODEL": str(tiny_hf_models["sentiment"])},
    )
    assert built.runtime == "torch" and not (built.archive / COMPILED_SUBDIR).exists()

"""The forward-pass backends: where a worker runs, the build-time export and its parity gate."""

from __future__ import annotations

import ast
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from load_tests.kit.stack import write_catalogue
from modelserver.backends import COMPILED_SUBDIR, PARITY_REPORT, place
from modelserver.backends.forward import OpenVinoForward, TorchForward
from modelserver.build import archive
from modelserver.build.archive import build_archive
from modelserver.build.export import main
from modelserver.catalogue import Catalogue, ModelEntry
from modelserver.errors import ConfigError
from modelserver.kinds.fill_mask.export import FILL_MASK
from modelserver.kinds.fill_mask.worker import load_fill_mask_predictor
from modelserver.kinds.text import TextModelSettings
from modelserver.kinds.text.export import (
    SCORE_TOLERANCE,
    ParityReport,
    _ranking_swaps,
    answers_differ,
    check_parity,
    probe_texts,
)
from modelserver.kinds.text_classification.export import TEXT_CLASSIFICATION
from modelserver.kinds.text_classification.worker import load_text_classification_predictor
from modelserver.project import PROJECT_ROOT
from modelserver.serving.torchserve_adapter import gpu_of
from tests.helpers import FakeContext, model_files

TASKS = {"fill-mask": FILL_MASK, "text-classification": TEXT_CLASSIFICATION}


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
    assert (placement.backend, placement.device) == (runtime, device)
    assert placement.reason


def test_the_adapter_reads_the_gpu_torchserve_assigns(tmp_path: Path) -> None:
    context = FakeContext(tmp_path, "fill_mask", {})
    assert gpu_of(context) is None
    context.gpu_id = "2"
    assert gpu_of(context) == 2


def test_the_default_runtime_is_compiled_and_torch_stays_available(tiny_hf_models: dict[str, Path]) -> None:
    archive_dir = tiny_hf_models["fill_mask"].parent
    compiled = load_fill_mask_predictor(model_files(TextModelSettings, archive_dir))
    eager = load_fill_mask_predictor(
        model_files(TextModelSettings, archive_dir, settings={"runtime": "torch", "threads": 2})
    )
    assert isinstance(compiled.forward, OpenVinoForward)
    assert isinstance(eager.forward, TorchForward) and torch.get_num_threads() == 2
    report = json.loads((archive_dir / COMPILED_SUBDIR / PARITY_REPORT).read_text())
    assert report["passed"] and report["score_max_abs_diff"] <= SCORE_TOLERANCE
    assert report["probes"] >= 4 and report["longest_probe_tokens"] > 20


# What a worker serving compiled graphs must not load: the architectures' modelling code (with
# the PyTorch weights it builds), most of a text worker's start time. Each kind is loaded in a
# fresh interpreter: argv holds the backend, then (module, loader, archive folder) triples.
MODELLING_PROBE = """
import importlib, sys
from pathlib import Path
from modelserver.kinds import ModelFiles
from modelserver.kinds.text import TextModelSettings
backend, *kinds = sys.argv[1:]
for module, loader, folder in zip(kinds[::3], kinds[1::3], kinds[2::3]):
    load = getattr(importlib.import_module(f"modelserver.kinds.{module}.worker"), loader)
    load(ModelFiles(Path(folder), TextModelSettings.model_validate({"runtime": backend})))
modelling = [m for m in sys.modules if m.startswith("transformers.models.") and ".modeling_" in m]
print(sorted(m for m in modelling if ".auto." not in m))
"""


def modelling_modules(runtime: str, *kinds: tuple[str, str, Path]) -> list[str]:
    """The modelling modules a fresh worker process holds once it has loaded these kinds."""
    arguments = [str(part) for kind in kinds for part in kind]
    done = subprocess.run(
        [sys.executable, "-c", MODELLING_PROBE, runtime, *arguments],
        capture_output=True,
        text=True,
        check=True,
        cwd=PROJECT_ROOT,
    )
    return ast.literal_eval(done.stdout.strip().splitlines()[-1])


def test_a_compiled_worker_never_builds_the_pytorch_model(tiny_hf_models: dict[str, Path]) -> None:
    fill_mask = ("fill_mask", "load_fill_mask_predictor")
    kinds = [
        (*fill_mask, tiny_hf_models["fill_mask"].parent),
        (*fill_mask, tiny_hf_models["camembert"].parent),
        ("text_classification", "load_text_classification_predictor", tiny_hf_models["sentiment"].parent),
    ]
    assert modelling_modules("openvino", *kinds) == []
    # The probe does see the modelling code when PyTorch runs the model.
    assert modelling_modules("torch", kinds[0]) == ["transformers.models.bert.modeling_bert"]


def test_a_missing_graph_fails_the_load_naming_the_fix(
    tiny_hf_models: dict[str, Path], tmp_path: Path
) -> None:
    (tmp_path / "model").symlink_to(tiny_hf_models["sentiment"], target_is_directory=True)
    with pytest.raises(ConfigError, match=r"no exported graph.*runtime: torch"):
        load_text_classification_predictor(model_files(TextModelSettings, tmp_path))


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
    eager = task.load(model_files(TextModelSettings, archive_dir, settings={"runtime": "torch"}))
    compiled = task.load(model_files(TextModelSettings, archive_dir))
    texts = probe_texts(eager, task)
    passed = ParityReport(task="t", quantize="none")
    check_parity(eager, compiled, texts, passed)
    assert passed.passed and passed.output_max_abs_diff <= passed.output_bound
    compiled.forward = Perturbed(compiled.forward, 0.05)  # type: ignore[assignment]
    refused = ParityReport(task="t", quantize="none")
    check_parity(eager, compiled, texts, refused)
    assert not refused.passed and "output differs" in refused.problems[0]


def test_near_ties_may_swap_but_nothing_else() -> None:
    """Two candidates whose eager scores are within the tolerance may come in either order;
    a larger gap in the ranking fails the gate."""
    reference = torch.tensor([[0.5, 0.3, 0.3 - SCORE_TOLERANCE / 2, 0.1]])
    swapped = torch.tensor([[0.5, 0.3 - SCORE_TOLERANCE / 2, 0.3, 0.1]])
    report = ParityReport(task="t", quantize="none")
    _ranking_swaps(reference, swapped, report)
    assert report.passed and report.near_tie_swaps == 2
    wrong = torch.tensor([[0.1, 0.3, 0.3, 0.5]])
    _ranking_swaps(reference, wrong, report)
    assert not report.passed and "instead of" in report.problems[0]


@pytest.mark.parametrize("quantize", ["none", "int8"])
def test_a_graph_that_answers_nan_never_serves(tiny_hf_models: dict[str, Path], quantize: str) -> None:
    archive_dir = tiny_hf_models["sentiment"].parent
    task = TASKS["text-classification"]
    eager = task.load(model_files(TextModelSettings, archive_dir, settings={"runtime": "torch"}))
    compiled = task.load(model_files(TextModelSettings, archive_dir))
    compiled.forward = Perturbed(compiled.forward, float("nan"))  # type: ignore[assignment]
    report = ParityReport(task="t", quantize=quantize)
    check_parity(eager, compiled, probe_texts(eager, task), report)
    assert not report.passed and report.first_problem == "the output holds NaN or infinity"


def candidates(*pairs: tuple[int, float]) -> list[dict[str, Any]]:
    """A fill-mask answer: (token, score) pairs, best first."""
    return [
        {"score": score, "token": token, "token_str": f"t{token}", "sequence": f"s{token}"}
        for token, score in pairs
    ]


def test_served_answers_may_differ_only_by_rounding_and_near_tie_swaps() -> None:
    eager = candidates((7, 0.5), (3, 0.2), (9, 0.2 - SCORE_TOLERANCE / 4), (4, 0.1))
    assert answers_differ(eager, candidates((7, 0.5 + 1e-7), (3, 0.2), (9, 0.2), (4, 0.1))) is None
    swapped = candidates((7, 0.5), (9, 0.2), (3, 0.2 - SCORE_TOLERANCE / 4), (4, 0.1))
    assert answers_differ(eager, swapped) is None
    far = candidates((7, 0.5), (4, 0.2), (9, 0.2), (3, 0.1))  # eager scores token 4 at 0.1
    assert "[1]" in str(answers_differ(eager, far))
    beyond = candidates(
        (7, 0.5), (3, 0.2), (9, 0.2), (8, 0.1 - SCORE_TOLERANCE / 2)
    )  # just past eager's top 4
    assert answers_differ(eager, beyond) is None
    assert answers_differ(eager, candidates((7, 0.5), (3, 0.2), (9, 0.2), (8, 0.3))) is not None
    assert (
        answers_differ({"label": "POSITIVE", "score": 0.9}, {"label": "NEGATIVE", "score": 0.9}) is not None
    )
    assert (
        answers_differ(
            {"label": "POSITIVE", "score": 0.5}, {"label": "NEGATIVE", "score": 0.5}, exact_labels=False
        )
        is None
    )


def test_the_export_cli_says_why_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--kind", "fill_mask", "--archive-dir", str(tmp_path)]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("export failed: ConfigError: cannot load the model") and "\n" not in error


def text_entry(runtime: str | None) -> Any:
    """The catalogue's sentiment entry, with the runtime asked for."""
    entry = Catalogue.load().entry("sentiment")
    settings = {**entry.handler_config, "threads": 1}
    if runtime:
        settings["runtime"] = runtime
    return ModelEntry.model_validate({**entry.model_dump(), "handler_config": settings})


def test_the_build_exports_and_carries_the_graph(tiny_hf_models: dict[str, Path], tmp_path: Path) -> None:
    entry = text_entry(None)
    environ = {"SENTIMENT_MODEL": str(tiny_hf_models["sentiment"])}
    built = build_archive(entry, tmp_path / "store", environ)
    assert built.rebuilt and built.backend == "openvino"
    config = yaml.safe_load((built.archive / "model-config.yaml").read_text())
    assert config["handler"]["runtime"] == "openvino"
    assert (built.archive / COMPILED_SUBDIR / "openvino_model.xml").is_file()
    again = build_archive(entry, tmp_path / "store", environ)
    assert not again.rebuilt and again.backend == "openvino"
    served = load_text_classification_predictor(
        model_files(TextModelSettings, built.archive, settings=config["handler"])
    )
    assert isinstance(served.forward, OpenVinoForward)


def test_a_failed_export_builds_eager_with_the_reason(
    tiny_hf_models: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(archive, "EXPORT_MODULE", "modelserver.backends.no_such_exporter")
    entry = text_entry("openvino")
    with caplog.at_level(logging.WARNING, logger="modelserver.build.archive"):
        built = build_archive(
            entry, tmp_path / "store", {"SENTIMENT_MODEL": str(tiny_hf_models["sentiment"])}
        )
    assert built.backend == "torch" and not (built.archive / COMPILED_SUBDIR).exists()
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith("sentiment: serving with PyTorch eager: ") and "no_such_exporter" in warning
    config = yaml.safe_load((built.archive / "model-config.yaml").read_text())
    assert config["handler"]["runtime"] == "torch"
    assert isinstance(
        load_text_classification_predictor(
            model_files(TextModelSettings, built.archive, settings=config["handler"])
        ).forward,
        TorchForward,
    )


def test_a_failed_int8_export_serves_eager_fp32(
    tiny_hf_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(archive, "EXPORT_MODULE", "modelserver.backends.no_such_exporter")
    entry = text_entry("openvino")
    entry = ModelEntry.model_validate(
        {**entry.model_dump(), "handler_config": {**entry.handler_config, "quantize": "int8"}}
    )
    built = build_archive(entry, tmp_path / "store", {"SENTIMENT_MODEL": str(tiny_hf_models["sentiment"])})
    handler = yaml.safe_load((built.archive / "model-config.yaml").read_text())["handler"]
    assert (handler["runtime"], handler["quantize"]) == ("torch", "none")
    assert isinstance(
        load_text_classification_predictor(
            model_files(TextModelSettings, built.archive, settings=handler)
        ).forward,
        TorchForward,
    )
    record = json.loads((tmp_path / "store" / ".builds" / "sentiment.json").read_text())
    assert record["fell_back"] and "no_such_exporter" in record["runtime_note"]


def test_a_runtime_name_that_is_not_one_fails_the_catalogue(tmp_path: Path) -> None:
    """Before any build starts: the catalogue names the model, the field and the choices."""
    path = write_catalogue(tmp_path / "models.yaml", handler_config={"sentiment": {"runtime": "onnx"}})
    problem = r"models\.sentiment: .*handler_config\.runtime: Input should be 'torch' or 'openvino'"
    with pytest.raises(ConfigError, match=problem):
        Catalogue.load(path)


def test_the_graph_is_rebuilt_when_the_runtime_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = text_entry(None)
    source = archive.resolve_source(entry, {"SENTIMENT_MODEL": str(tmp_path)})
    before = archive.fingerprint(entry, source)
    monkeypatch.setattr(
        archive, "_installed_version", lambda package: "9.9" if package == "openvino" else "1"
    )
    assert archive.fingerprint(entry, source) != before


def test_runtime_torch_builds_no_graph(tiny_hf_models: dict[str, Path], tmp_path: Path) -> None:
    built = build_archive(
        text_entry("torch"),
        tmp_path / "store",
        {"SENTIMENT_MODEL": str(tiny_hf_models["sentiment"])},
    )
    assert built.backend == "torch" and not (built.archive / COMPILED_SUBDIR).exists()


def test_the_gpu_check_says_when_there_is_no_gpu(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from load_tests import gpu_fill_mask  # pylint: disable=import-outside-toplevel

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("sys.argv", ["gpu_fill_mask"])
    assert gpu_fill_mask.main() == 2
    assert "no CUDA GPU" in capsys.readouterr().out

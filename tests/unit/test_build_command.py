"""`make archives` offline: every model it can build is built, each one it cannot is named with
the reason and the variable that fixes it, and the build succeeds; `--strict` fails instead."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from archive_scripts.build_archives import main as build_archives


@pytest.fixture(name="offline")
def offline_fixture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No Hub: offline, with an empty cache; returns the model store."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("FILL_MASK_MODEL", raising=False)
    return tmp_path / "store"


def test_an_unreachable_model_is_skipped_with_its_fix_and_the_rest_is_built(
    offline: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "report.json"
    assert (
        build_archives(
            ["fill_mask", "crystal_sklearn", "--model-store", str(offline), "--report", str(report)]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "built   " in out and (offline / "crystal_sklearn.mar").is_file()
    [skipped] = [line for line in out.splitlines() if line.startswith("skipped fill_mask: ")]
    assert "not reachable" in skipped and skipped.endswith(
        "set FILL_MASK_MODEL to a local folder or a reachable Hub id"
    )
    assert "1 of 2 models skipped" in out
    written = json.loads(report.read_text(encoding="utf-8"))
    assert list(written["skipped"]) == ["fill_mask"] and list(written["archives"]) == ["crystal_sklearn"]


def test_strict_fails_on_the_first_unreachable_model_naming_it(
    offline: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert build_archives(["fill_mask", "crystal_sklearn", "--strict", "--model-store", str(offline)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: fill_mask: cannot fetch") and "set FILL_MASK_MODEL" in error
    assert not (offline / "crystal_sklearn.mar").exists()

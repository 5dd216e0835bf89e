"""The tiny text checkpoints are the same files on every build, and answer as the README shows."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from modelserver.__main__ import main as modelserver_main
from modelserver.project import PROJECT_ROOT
from modelserver.tools.tiny_models import TINY_MODELS, wordpiece_vocabulary

SCORE_TOLERANCE = 1e-4  # float32 rounding across CPUs of this kind (AVX2 or AVX-512)


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_two_builds_give_the_same_files_and_the_command_prints_how_to_serve_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert modelserver_main(["tiny-models", str(tmp_path / "one")]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [f"{variable}={tmp_path / 'one' / name}" for name, (_, variable) in TINY_MODELS.items()]
    # The second build in another process with another string-hash seed: what made the
    # tokenizers trainers' vocabularies differ from run to run.
    subprocess.run(
        [sys.executable, "-m", "modelserver", "tiny-models", str(tmp_path / "two")],
        cwd=PROJECT_ROOT,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
        capture_output=True,
        check=True,
        timeout=300,
    )
    first, second = _hashes(tmp_path / "one"), _hashes(tmp_path / "two")
    assert {name.split("/")[0] for name in first} == set(TINY_MODELS)
    assert any(name.endswith(".safetensors") for name in first) and first == second

    from transformers import pipeline  # pylint: disable=import-outside-toplevel

    fill = pipeline("fill-mask", model=str(tmp_path / "one" / "fill_mask"))
    [best] = fill("Paris is the [MASK] of France.", top_k=1)
    assert best["token_str"] == "film" and best["score"] == pytest.approx(0.40750, abs=SCORE_TOLERANCE)


def test_the_vocabulary_rule_breaks_ties_by_order_not_by_chance() -> None:
    """`ab` and `cd` occur equally often: the pair first in sorted order is merged first."""
    vocabulary = wordpiece_vocabulary(["ab cd"], vocab_size=14)
    assert vocabulary[5:] == ["##b", "##d", "a", "c", "ab", "cd"]
    assert wordpiece_vocabulary(["cd ab"], vocab_size=14) == vocabulary

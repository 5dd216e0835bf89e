"""Hub revisions: what the build asks the Hub for, and how `pin-revisions` bumps models.yaml.

The Hub is unreachable here, so huggingface_hub's calls are replaced by fakes that record what
they were asked; the rewrite of models.yaml runs on a copy of the real file.
"""

from __future__ import annotations

import difflib
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import huggingface_hub
import pytest

from modelserver import hub
from modelserver.catalogue import DEFAULT_CATALOGUE, Catalogue
from modelserver.errors import ConfigError, SourceUnavailable
from modelserver.tools import pin_revisions

COMMIT_A = "86b5e0934494bd15c9632b12f734a8a67f723594"
COMMIT_B = "714eb0fa89d2f80546fda750413ed43d93601a13"
NEW = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class FakeInfo:
    """What HfApi.model_info answers, as far as pin-revisions reads it."""

    sha: str | None


class FakeHub:
    """HfApi and snapshot_download in one: records each call, answers from `commits`."""

    def __init__(self, commits: dict[str, str], files: list[str] | None = None) -> None:
        self.commits = commits
        self.files = files or ["config.json", "model.safetensors", "pytorch_model.bin"]
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    def api(self) -> FakeHub:
        """Stands in for `HfApi()`."""
        return self

    def model_info(self, hub_id: str, **options: Any) -> FakeInfo:
        """The Hub's answer about a model: its commit, or the Hub's 404."""
        self.calls.append(("model_info", hub_id, options))
        if hub_id not in self.commits:
            raise RuntimeError(f"404 Client Error: Repository Not Found for url: .../{hub_id}")
        return FakeInfo(self.commits[hub_id])

    def list_repo_files(self, hub_id: str, **options: Any) -> list[str]:
        """The files of the model's repository."""
        self.calls.append(("list_repo_files", hub_id, options))
        return self.files

    def snapshot_download(self, hub_id: str, **options: Any) -> str:
        """Where huggingface_hub's cache keeps the snapshot of the revision asked for."""
        self.calls.append(("snapshot_download", hub_id, options))
        if options.get("local_files_only"):
            raise FileNotFoundError("not in the cache")
        commit = options.get("revision") or self.commits[hub_id]
        return f"/cache/models--{hub_id.replace('/', '--')}/snapshots/{commit}"


@pytest.fixture(name="fake_hub")
def fixture_fake_hub(monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    """A reachable fake Hub that knows two models."""
    fake = FakeHub({"bert-base-uncased": NEW, "camembert-base": COMMIT_B})
    monkeypatch.setattr(huggingface_hub, "HfApi", fake.api)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake.snapshot_download)
    monkeypatch.setattr(hub, "_reachable", lambda host, port: True)
    return fake


# --- fetching --------------------------------------------------------------------------------


def test_a_pinned_model_is_listed_and_downloaded_at_its_revision(fake_hub: FakeHub) -> None:
    folder = hub.fetch_from_hub("bert-base-uncased", {}, COMMIT_A)
    assert folder == Path(f"/cache/models--bert-base-uncased/snapshots/{COMMIT_A}")
    assert hub.snapshot_commit(folder) == COMMIT_A
    (listed, downloaded) = fake_hub.calls
    assert listed == ("list_repo_files", "bert-base-uncased", {"revision": COMMIT_A})
    assert downloaded[2]["revision"] == COMMIT_A
    assert downloaded[2]["allow_patterns"] == [*hub.METADATA, "*.safetensors"], "one copy of the weights"


def test_an_unpinned_model_takes_the_main_branch_and_says_which_commit(fake_hub: FakeHub) -> None:
    folder = hub.fetch_from_hub("bert-base-uncased", {})
    assert fake_hub.calls[-1][2]["revision"] is None
    assert hub.snapshot_commit(folder) == NEW


def test_offline_the_cache_is_asked_for_the_pinned_revision(fake_hub: FakeHub) -> None:
    with pytest.raises(SourceUnavailable) as raised:
        hub.fetch_from_hub("bert-base-uncased", {"HF_HUB_OFFLINE": "1"}, COMMIT_A)
    assert str(raised.value) == (
        "cannot fetch bert-base-uncased: the Hub (huggingface.co) is not reachable and it is not in"
        f" the local cache at revision {COMMIT_A}"
    )
    assert fake_hub.calls == [
        ("snapshot_download", "bert-base-uncased", {"revision": COMMIT_A, "local_files_only": True})
    ]


@pytest.mark.parametrize(
    ("folder", "commit"),
    [
        (f"/c/models--a--b/snapshots/{COMMIT_A}", COMMIT_A),
        ("/c/models--a--b/snapshots/main", None),
        (f"/somewhere/{COMMIT_A}", None),  # a local folder named like a commit is no snapshot
        ("/models/bert", None),
    ],
)
def test_snapshot_commit_reads_the_cache_layout_only(folder: str, commit: str | None) -> None:
    assert hub.snapshot_commit(Path(folder)) == commit


def test_current_commit_asks_the_main_branch(fake_hub: FakeHub) -> None:
    assert hub.current_commit("camembert-base", {}) == COMMIT_B
    assert fake_hub.calls == [("model_info", "camembert-base", {"revision": "main"})]
    with pytest.raises(SourceUnavailable, match="cannot ask the Hub about nope/nope: 404 Client Error"):
        hub.current_commit("nope/nope", {})
    fake_hub.commits["short"] = "714eb0f"
    with pytest.raises(SourceUnavailable, match="gave no commit id for short@main"):
        hub.current_commit("short", {})


def test_current_commit_never_waits_on_an_unreachable_hub(fake_hub: FakeHub) -> None:
    with pytest.raises(SourceUnavailable, match=r"huggingface\.co is not reachable"):
        hub.current_commit("camembert-base", {"HF_HUB_OFFLINE": "1"})
    assert not fake_hub.calls


# --- pin-revisions ---------------------------------------------------------------------------


@pytest.fixture(name="catalogue_copy")
def fixture_catalogue_copy(tmp_path: Path) -> Path:
    """The project's models.yaml, copied: pin-revisions rewrites it."""
    return Path(shutil.copy(DEFAULT_CATALOGUE, tmp_path / "models.yaml"))


def hub_revisions(path: Path) -> dict[str, str | None]:
    """Each Hub model's revision in the catalogue at `path`."""
    return {name: e.source.revision for name, e in Catalogue.load(path).models.items() if e.source.hub}


def test_pin_revisions_bumps_and_adds_revision_lines_only(catalogue_copy: Path) -> None:
    before = catalogue_copy.read_text(encoding="utf-8")
    commits = {"bert-base-uncased": NEW, "camembert-base": COMMIT_B}
    commits["distilbert-base-uncased-finetuned-sst-2-english"] = COMMIT_B
    asked: list[str] = []

    def resolve(hub_id: str) -> str:
        asked.append(hub_id)
        return commits[hub_id]

    changes = pin_revisions.pin_revisions(catalogue_copy, [], resolve)
    assert changes == {"fill_mask": (COMMIT_A, NEW), "camembert": (None, COMMIT_B)}
    assert sorted(asked) == sorted(commits), "each Hub id asked once"
    assert hub_revisions(catalogue_copy) == {"fill_mask": NEW, "camembert": COMMIT_B, "sentiment": COMMIT_B}
    after = catalogue_copy.read_text(encoding="utf-8")
    diff = [line for line in difflib.ndiff(before.splitlines(), after.splitlines()) if line[:1] in "+-"]
    assert sorted(diff) == sorted(
        [
            f'+       revision: "{COMMIT_B}"',
            f'+       revision: "{NEW}"',
            f'-       revision: "{COMMIT_A}"',
        ]
    ), "comments and layout stay; only revision lines change"
    assert after.splitlines().index(f'      revision: "{COMMIT_B}"') == (
        after.splitlines().index("      hub: camembert-base") + 1
    ), "a new revision goes right under its hub line"
    assert pin_revisions.pin_revisions(catalogue_copy, [], resolve) == {}, "pinned already: no change"


def test_pin_revisions_dry_run_and_one_model(catalogue_copy: Path) -> None:
    before = catalogue_copy.read_text(encoding="utf-8")
    changes = pin_revisions.pin_revisions(catalogue_copy, ["camembert"], lambda _: NEW, dry_run=True)
    assert changes == {"camembert": (None, NEW)}
    assert catalogue_copy.read_text(encoding="utf-8") == before
    pin_revisions.pin_revisions(catalogue_copy, ["camembert"], lambda _: NEW)
    assert hub_revisions(catalogue_copy)["camembert"] == NEW
    assert hub_revisions(catalogue_copy)["fill_mask"] == COMMIT_A, "the others stay as they were"


def test_pin_revisions_refuses_what_it_cannot_pin(catalogue_copy: Path, tmp_path: Path) -> None:
    before = catalogue_copy.read_text(encoding="utf-8")
    with pytest.raises(ConfigError, match="'crystal_sklearn' is not a Hub model of the catalogue"):
        pin_revisions.pin_revisions(catalogue_copy, ["crystal_sklearn"], lambda _: NEW)
    with pytest.raises(SourceUnavailable):
        pin_revisions.pin_revisions(catalogue_copy, [], _unreachable)
    assert catalogue_copy.read_text(encoding="utf-8") == before, "nothing written on a failure"
    flow = tmp_path / "flow.yaml"
    flow.write_text("models:\n  m:\n    kind: fill_mask\n    source: {hub: org/m}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"models\.m\.source must be written in block style"):
        pin_revisions.pin_revisions(flow, [], lambda _: NEW)


def _unreachable(hub_id: str) -> str:
    raise SourceUnavailable(f"cannot ask the Hub about {hub_id}: huggingface.co is not reachable")


def test_the_command_line_pins_through_the_hub_and_fails_cleanly_offline(
    catalogue_copy: Path, fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fake_hub.commits["distilbert-base-uncased-finetuned-sst-2-english"] = COMMIT_B
    caplog.set_level(logging.INFO)
    assert pin_revisions.main(["--catalogue", str(catalogue_copy), "fill_mask"]) == 0
    assert hub_revisions(catalogue_copy)["fill_mask"] == NEW
    assert f"fill_mask: revision {COMMIT_A} -> {NEW}" in caplog.text
    assert "python -m modelserver configmap" in caplog.text

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = catalogue_copy.read_text(encoding="utf-8")
    assert pin_revisions.main(["--catalogue", str(catalogue_copy)]) == 1
    assert "is not reachable" in caplog.text and catalogue_copy.read_text(encoding="utf-8") == before

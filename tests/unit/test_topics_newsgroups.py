"""Topics without the brief's files: scikit-learn's 20 Newsgroups, through a fake fetcher.

No test downloads: the fetcher is injected (or stands in for scikit-learn's), so the mapping,
the recipe, the build record, /healthcheck's note and the offline reason are all checked here.
"""

from __future__ import annotations

import json
import random
import socket
import urllib.error
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from archive_scripts import train_topics
from archive_scripts.build_archives import build_all
from load_tests.kit.topics_corpus import TOPIC_WORDS
from modelserver.build.archive import build_archive, fingerprint, recorded_trained_on
from modelserver.catalogue import Catalogue, ModelEntry, resolve_source
from modelserver.errors import ConfigError, SourceUnavailable
from modelserver.kinds.topics.worker import load_pipeline
from modelserver.launcher.pages.health import Readiness
from modelserver.training import topics

# The brief's six labels, as its text lists them.
BRIEF_LABELS = {"space", "electronics", "cryptography", "politics", "hockey", "baseball"}
FRESH = "fresh_clone"  # a root without ../shared: the catalogue's default files are absent


@dataclass
class FakeFetcher:
    """`fetch_20newsgroups` on a few made-up posts per group; notes how it was called. The
    groups come back in scikit-learn's order (sorted names, `target` indexing them)."""

    per_group: int = 12
    calls: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self, **options: Any) -> SimpleNamespace:
        self.calls.append(options)
        rng = random.Random(options["subset"])
        names = sorted(options["categories"])
        data, target = [], []
        for index, group in enumerate(names):
            words = TOPIC_WORDS[topics.NEWSGROUPS_LABELS[group]].split()
            for _ in range(self.per_group):
                data.append(" ".join(rng.choice(words) for _ in range(8)))
                target.append(index)
            data.append("  \n ")  # a post that was all headers and quotes
            target.append(index)
        return SimpleNamespace(data=data, target=target, target_names=names)


def offline(**_: Any) -> Any:
    """What scikit-learn's fetcher raises on a machine without a network."""
    raise urllib.error.URLError(socket.gaierror(-2, "Name or service not known"))


@pytest.fixture(name="entry")
def fixture_entry() -> ModelEntry:
    """The catalogue's topics entry."""
    return Catalogue.load().entry("topics")


def test_the_eight_groups_map_onto_the_briefs_six_labels() -> None:
    groups_of: dict[str, set[str]] = {}
    for group, label in topics.NEWSGROUPS_LABELS.items():
        groups_of.setdefault(label, set()).add(group)
    assert groups_of == {
        "space": {"sci.space"},
        "electronics": {"sci.electronics"},
        "cryptography": {"sci.crypt"},
        "politics": {"talk.politics.guns", "talk.politics.mideast", "talk.politics.misc"},
        "hockey": {"rec.sport.hockey"},
        "baseball": {"rec.sport.baseball"},
    }
    assert set(groups_of) == BRIEF_LABELS


def test_a_subset_is_fetched_stripped_and_labelled() -> None:
    fetcher = FakeFetcher()
    texts, labels = topics.newsgroups_dataset("test", fetcher)
    [call] = fetcher.calls
    assert call["subset"] == "test" and sorted(call["categories"]) == sorted(topics.NEWSGROUPS_LABELS)
    assert call["remove"] == ("headers", "footers", "quotes")
    assert len(texts) == len(labels) == 8 * fetcher.per_group, "empty posts are dropped"
    assert all(text.strip() for text in texts)
    assert set(labels) == BRIEF_LABELS and labels.count("politics") == 3 * fetcher.per_group
    for text, label in zip(texts, labels, strict=True):
        assert set(text.split()) <= set(TOPIC_WORDS[label].split())


def test_an_unexpected_group_is_refused() -> None:
    def stray(**_: Any) -> SimpleNamespace:
        return SimpleNamespace(data=["x"], target=[0], target_names=["comp.graphics"])

    with pytest.raises(ConfigError, match=r"unexpected group 'comp\.graphics'"):
        topics.newsgroups_dataset("train", stray)


def test_the_recipe_trains_on_the_download_without_inputs(tmp_path: Path) -> None:
    fetcher = FakeFetcher()
    result = topics.train(tmp_path / "topics.model", None, fetcher)
    assert [call["subset"] for call in fetcher.calls] == ["train"]
    assert result["data"] == topics.NEWSGROUPS_NOTE and result["chosen"] != topics.BASELINE
    model = load_pipeline(tmp_path / "topics.model")
    assert list(model.predict(["puck goalie nhl", "rsa cipher key", "senate vote law"])) == [
        "hockey",
        "cryptography",
        "politics",
    ]


def test_a_failed_download_is_source_unavailable(tmp_path: Path) -> None:
    with pytest.raises(SourceUnavailable, match=r"20 Newsgroups download failed \(URLError"):
        topics.train(tmp_path / "topics.model", None, offline)
    assert not (tmp_path / "topics.model").exists()


def test_the_real_fetcher_is_bounded_by_a_socket_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def fetch_20newsgroups(**options: Any) -> Any:
        seen.update(options, timeout=socket.getdefaulttimeout())
        raise TimeoutError("timed out")

    monkeypatch.setattr("sklearn.datasets.fetch_20newsgroups", fetch_20newsgroups)
    before = socket.getdefaulttimeout()
    with pytest.raises(SourceUnavailable, match="TimeoutError: timed out"):
        topics.newsgroups_dataset("train")
    assert seen["timeout"] == topics.DOWNLOAD_TIMEOUT_S and seen["n_retries"] == topics.DOWNLOAD_RETRIES
    assert socket.getdefaulttimeout() == before, "the process's default is restored"


def test_the_catalogue_falls_back_to_the_download_only_where_no_file_is_named(
    entry: ModelEntry, tmp_path: Path
) -> None:
    fresh = tmp_path / FRESH
    for environ in ({}, {"TOPICS_DATA": "auto"}):
        source = resolve_source(entry, environ, root=fresh)
        assert source.download == "20newsgroups" and not source.inputs
        assert source.data == "the 20newsgroups download (no TOPICS_TRAIN and TOPICS_TEST files)"
        assert "no train data" in source.download_reason and "TOPICS_TRAIN" in source.download_reason
    # A named file is the user's choice: missing its partner is the usual skip, not a download.
    train = tmp_path / "train.jsonl.gz"
    train.write_bytes(b"")
    with pytest.raises(SourceUnavailable, match="no test data"):
        resolve_source(entry, {"TOPICS_TRAIN": str(train)}, root=fresh)
    forced = resolve_source(entry, {"TOPICS_DATA": "20newsgroups"}, root=tmp_path)
    assert forced.download == "20newsgroups" and forced.data.endswith("(TOPICS_DATA=20newsgroups)")
    with pytest.raises(ConfigError, match="both name the data"):
        resolve_source(entry, {"TOPICS_DATA": "20newsgroups", "TOPICS_TRAIN": str(train)}, root=fresh)
    with pytest.raises(ConfigError, match="TOPICS_DATA=yes is not one of auto, files, 20newsgroups"):
        resolve_source(entry, {"TOPICS_DATA": "yes"}, root=fresh)


def test_files_are_named_in_the_data_note(entry: ModelEntry, tmp_path: Path) -> None:
    train, test = tmp_path / "mine_train.jsonl.gz", tmp_path / "mine_test.jsonl.gz"
    train.write_bytes(b"")
    test.write_bytes(b"")
    source = resolve_source(entry, {"TOPICS_TRAIN": str(train), "TOPICS_TEST": str(test)}, root=tmp_path)
    assert source.download is None and set(source.inputs) == {"train", "test"}
    assert source.data == "mine_train.jsonl.gz (from TOPICS_TRAIN), mine_test.jsonl.gz (from TOPICS_TEST)"
    assert str(tmp_path) not in source.data, "clients see file names, never paths"


def test_download_entries_need_a_recipe_with_inputs(tmp_path: Path) -> None:
    entry = {
        "kind": "topics",
        "source": {"recipe": "topics_newsgroups", "download": {"env": "X", "name": "d"}},
    }
    (tmp_path / "models.yaml").write_text(json.dumps({"models": {"m": entry}}), encoding="utf-8")
    with pytest.raises(ConfigError, match="'download' stands in for a recipe's 'inputs'"):
        Catalogue.load(tmp_path / "models.yaml")


def test_the_download_is_fingerprinted_by_name(entry: ModelEntry, tmp_path: Path) -> None:
    fresh = tmp_path / FRESH
    downloaded = resolve_source(entry, {}, root=fresh)
    assert fingerprint(entry, downloaded, fresh) == fingerprint(
        entry, resolve_source(entry, {}, fresh), fresh
    )
    train, test = tmp_path / "train.jsonl.gz", tmp_path / "test.jsonl.gz"
    train.write_bytes(b"a")
    test.write_bytes(b"b")
    files = resolve_source(entry, {"TOPICS_TRAIN": str(train), "TOPICS_TEST": str(test)}, root=fresh)
    assert fingerprint(entry, files, fresh) != fingerprint(entry, downloaded, fresh)


def test_a_build_on_the_download_records_and_reports_what_trained_it(
    entry: ModelEntry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(topics, "fetch_bounded", FakeFetcher())
    store, fresh = tmp_path / "store", tmp_path / FRESH
    built = build_archive(entry, store, {}, root=fresh)
    note = "the 20newsgroups download (no TOPICS_TRAIN and TOPICS_TEST files)"
    assert built.rebuilt and built.trained_on == note and note in built.source
    assert recorded_trained_on(entry, store) == note
    # Offline now: the archive built from the download is reused, nothing is fetched again.
    monkeypatch.setattr(topics, "fetch_bounded", offline)
    again = build_archive(entry, store, {}, root=fresh)
    assert not again.rebuilt and again.trained_on == note
    readiness = Readiness(["topics"], lambda _: "ready", trained_on={"topics": again.trained_on})
    readiness.refresh()
    status, body = readiness.report()
    assert status == 200 and body["trained_on"] == {"topics": note}


def test_offline_without_files_the_model_is_skipped_saying_both(
    entry: ModelEntry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(topics, "fetch_bounded", offline)
    with pytest.raises(SourceUnavailable) as caught:
        build_archive(entry, tmp_path / "store", {}, root=tmp_path / FRESH)
    reason = str(caught.value)
    assert "no train data" in reason and "set TOPICS_TRAIN and TOPICS_TEST" in reason
    assert "the 20 Newsgroups download failed (URLError" in reason
    catalogue = Catalogue.load()
    report: dict[str, Any] = {"archives": {}, "names": {}, "trained_on": {}, "skipped": {}}
    monkeypatch.setattr("archive_scripts.build_archives.build_archive", _build_in(tmp_path / FRESH))
    build_all(catalogue, ["topics"], tmp_path / "store", {}, True, report)
    skipped = report["skipped"]["topics"]
    assert "set TOPICS_TRAIN and TOPICS_TEST" in skipped and "download failed" in skipped
    assert str(tmp_path) not in skipped and "../shared" not in skipped, "file names only"
    assert not report["archives"] and not report["trained_on"]


def _build_in(root: Path) -> Any:
    """`build_archive` against another repository root (one without ../shared)."""

    def build(entry: ModelEntry, store: Path, environ: Any) -> Any:
        return build_archive(entry, store, environ, root=root)

    return build


def test_the_evaluation_runs_on_the_download_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(train_topics, "SHARED_TOPICS", tmp_path / "absent")
    monkeypatch.delenv("TOPICS_TRAIN", raising=False)
    monkeypatch.delenv("TOPICS_TEST", raising=False)
    monkeypatch.delenv("TOPICS_DATA", raising=False)
    fetcher = FakeFetcher()
    assert train_topics.main(["--out-dir", str(tmp_path), "--folds", "3"], fetcher) == 0
    assert [call["subset"] for call in fetcher.calls] == ["train", "test"]
    report = json.loads((tmp_path / "topics_evaluation.json").read_text())
    assert (
        report["data"] == topics.NEWSGROUPS_NOTE and set(report["improved"]["test"]["labels"]) == BRIEF_LABELS
    )
    assert f"Data: {topics.NEWSGROUPS_NOTE}." in (tmp_path / "topics_evaluation.md").read_text()
    assert train_topics.main(["--out-dir", str(tmp_path), "--data", "files"], offline) == 2
    assert train_topics.main(["--out-dir", str(tmp_path)], offline) == 2

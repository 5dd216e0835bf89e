"""The catalogue and the one archive builder: sources, reuse and rebuilds."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import yaml

from modelserver.build import archive as archive_module
from modelserver.build.archive import build_archive, fingerprint
from modelserver.catalogue import HUB_COMMIT, Catalogue, ModelEntry, Source, resolve_source
from modelserver.errors import ConfigError

COMMIT_A = "86b5e0934494bd15c9632b12f734a8a67f723594"
COMMIT_B = "714eb0fa89d2f80546fda750413ed43d93601a13"


@pytest.fixture(scope="module", name="catalogue")
def fixture_catalogue() -> Catalogue:
    """The project's own models.yaml."""
    return Catalogue.load()


def test_the_catalogue_lists_both_crystal_models(catalogue: Catalogue) -> None:
    assert {"crystal_sklearn", "crystal_pytorch"} <= set(catalogue.models)
    entry = catalogue.entry("crystal_sklearn")
    assert entry.source.env == "CRYSTAL_SKLEARN_MODEL"
    assert entry.torchserve.batchSize > 1, "dynamic batching is on for the crystal models"
    assert catalogue.entry("crystal_pytorch").source.env == "CRYSTAL_PYTORCH_MODEL"


def test_build_bring_your_own_reuse_and_rebuild(
    catalogue: Catalogue, crystal_model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    entry = catalogue.entry("crystal_sklearn")
    store = tmp_path / "store"
    model_file = tmp_path / "mine.model"
    model_file.write_bytes((crystal_model_dirs["sklearn"] / "sklearn.model").read_bytes())
    environ = {"CRYSTAL_SKLEARN_MODEL": str(model_file)}

    first = build_archive(entry, store, environ)
    assert first.rebuilt and first.archive == store / "crystal_sklearn.mar"
    assert "from CRYSTAL_SKLEARN_MODEL" in first.source
    with zipfile.ZipFile(first.archive) as archive:
        names = set(archive.namelist())
        config = yaml.safe_load(archive.read("model-config.yaml"))
        manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
    assert {"model_handler.py", "crystal_labels.json", "mine.model"} <= names
    assert manifest["model"]["serializedFile"] == "mine.model"
    assert manifest["model"]["handler"] == "model_handler.py"
    assert config["handler"] == entry.handler_config and config["batchSize"] == entry.torchserve.batchSize
    assert config["kind"] == "crystal" and config["served_names"] == ["crystal_sklearn"]

    assert not build_archive(entry, store, environ).rebuilt, "unchanged source is reused"
    model_file.write_bytes(model_file.read_bytes() + b"\n")
    assert build_archive(entry, store, environ).rebuilt, "a changed source rebuilds"
    assert build_archive(entry, store, {}).rebuilt, "switching to the default rebuilds"


def test_a_missing_source_is_a_clear_error(catalogue: Catalogue, tmp_path: Path) -> None:
    entry = catalogue.entry("crystal_pytorch")
    with pytest.raises(ConfigError, match=r"CRYSTAL_PYTORCH_MODEL=.*does not exist"):
        resolve_source(entry, {"CRYSTAL_PYTORCH_MODEL": str(tmp_path / "missing.model")})


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ({"kind": "topics", "source": {}}, "exactly one of"),
        ({"kind": "topics", "source": {"recipe": "nope"}}, "unknown recipe"),
        (
            {"kind": "topics", "source": {"default": "x"}, "torchserve": {"minWorkers": 2, "maxWorkers": 1}},
            "maxWorkers must be >= minWorkers",
        ),
        (
            {"kind": "topics", "source": {"default": "x"}, "torchserve": {"maxBatchDelay": 0}},
            "maxBatchDelay",
        ),
        ({"kind": "topics", "source": {"default": "x"}, "colour": "red"}, "colour"),
        (
            {"kind": "topicz", "source": {"default": "x"}},
            r"models\.m: .*kind 'topicz' is not one of \['crystal',",
        ),
        (
            {
                "kind": "crystal",
                "source": {"default": "x"},
                "handler_config": {"framework": "sklearn", "labels": "l"},
            },
            r"models\.m: .*handler_config\.labels: is not a known field",
        ),
        (
            {"kind": "crystal", "source": {"default": "x"}, "handler_config": {"labels_file": "l.json"}},
            r"models\.m: .*handler_config\.framework: is required",
        ),
        (
            {"kind": "text_classification", "source": {"hub": "x"}, "handler_config": {"runtime": "onnx"}},
            r"models\.m: .*handler_config\.runtime: Input should be 'torch' or 'openvino'",
        ),
        (
            {"kind": "text_classification", "source": {"hub": "x", "revision": "main"}},
            r"models\.m\.source\.revision: .*'main' is not a full 40-hex commit id",
        ),
        (
            {"kind": "text_classification", "source": {"hub": "x", "revision": "714eb0f"}},
            r"models\.m\.source\.revision: .*'714eb0f' is not a full 40-hex commit id",
        ),
        (
            {"kind": "text_classification", "source": {"hub": "x", "revision": COMMIT_A.upper()}},
            r"is not a full 40-hex commit id",
        ),
        (
            {"kind": "topics", "source": {"default": "x", "revision": COMMIT_A}},
            r"'revision' pins a 'hub' model",
        ),
    ],
)
def test_bad_catalogues_fail_with_the_problem(tmp_path: Path, entry: dict[str, object], problem: str) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump({"models": {"m": entry}}))
    with pytest.raises(ConfigError, match=problem):
        Catalogue.load(path)


def test_unknown_model_names_list_the_known_ones(catalogue: Catalogue) -> None:
    with pytest.raises(ConfigError, match="crystal_sklearn"):
        catalogue.entry("nope")


def test_entries_are_typed() -> None:
    entry = ModelEntry.model_validate({"name": "m", "kind": "topics", "source": {"default": "x"}})
    assert entry.torchserve.minWorkers == 1 and entry.archive_format == "default"


def test_served_names_follow_what_the_archive_holds(catalogue: Catalogue) -> None:
    entry = catalogue.entry("camembert")
    default = entry.served_names("camembert-base")
    assert default == ["camembert", "camembert/camembert-base", "camembert-base"]
    assert entry.served_names(None) == default, "a local folder is a mirror of the catalogue's model"
    assert entry.served_names("almanach/camembert-large") == [
        "camembert",
        "almanach/camembert-large",
    ]


def test_python_caches_are_not_inputs(tmp_path: Path) -> None:
    """Importing changed code writes __pycache__ beside it; that must not rebuild an archive."""
    import hashlib  # pylint: disable=import-outside-toplevel

    from modelserver.build.archive import _hash_path  # pylint: disable=import-outside-toplevel

    (tmp_path / "kind.py").write_text("ANSWER = 42\n")

    def digest() -> str:
        state = hashlib.sha256()
        _hash_path(state, tmp_path)
        return state.hexdigest()

    before = digest()
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "kind.cpython-311.pyc").write_bytes(b"\x00compiled")
    assert digest() == before
    (tmp_path / "kind.py").write_text("ANSWER = 43\n")
    assert digest() != before


def test_a_model_folder_linking_outside_itself_is_refused(catalogue: Catalogue, tmp_path: Path) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (tmp_path / "secret.txt").write_text("not a model file")
    (folder / "tokenizer.json").symlink_to(tmp_path / "secret.txt")
    (folder / "vocab.txt").symlink_to(folder / "config.json")  # inside: fine
    with pytest.raises(
        ConfigError, match=r"sentiment: the model folder has links that point outside it: tokenizer\.json$"
    ):
        build_archive(catalogue.entry("sentiment"), tmp_path / "store", {"SENTIMENT_MODEL": str(folder)})
    assert not (tmp_path / "store").exists(), "refused before anything was built"


def test_links_are_checked_against_the_folder_and_a_hub_cache() -> None:
    import tempfile  # pylint: disable=import-outside-toplevel

    from modelserver.build.archive import links_leaving  # pylint: disable=import-outside-toplevel

    with tempfile.TemporaryDirectory() as work:
        repo = Path(work) / "models--org--name"
        snapshot = repo / "snapshots" / "abc123"
        (repo / "blobs").mkdir(parents=True)
        snapshot.mkdir(parents=True)
        (repo / "blobs" / "f00d").write_text("{}")
        (snapshot / "config.json").symlink_to("../../blobs/f00d")
        (snapshot / "sub").symlink_to(Path(work), target_is_directory=True)  # a linked folder
        assert links_leaving(snapshot, [repo]) == [snapshot / "sub"]
        assert links_leaving(snapshot) == [snapshot / "config.json", snapshot / "sub"]


def test_extra_files_may_not_climb_out(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    entry = {"kind": "topics", "source": {"default": "x"}, "extra_files": ["labels/../../../etc/passwd"]}
    path.write_text(yaml.safe_dump({"models": {"m": entry}}))
    with pytest.raises(
        ConfigError, match=r"models\.m: .*extra file 'labels/\.\./\.\./\.\./etc/passwd' has a '\.\.' part"
    ):
        Catalogue.load(path)


def test_hub_defaults_are_pinned_or_left_to_the_documented_policy(catalogue: Catalogue) -> None:
    """fill_mask and sentiment are pinned to the commits cited in docs/models.md; camembert has
    no citable commit yet (the build logs and records the one it got; pin-revisions sets it)."""
    revisions = {name: e.source.revision for name, e in catalogue.models.items() if e.source.hub}
    assert revisions == {"fill_mask": COMMIT_A, "camembert": None, "sentiment": COMMIT_B}
    assert all(HUB_COMMIT.fullmatch(r) for r in revisions.values() if r)


def test_the_revision_pins_the_catalogues_own_hub_id_only(catalogue: Catalogue, tmp_path: Path) -> None:
    entry = catalogue.entry("fill_mask")
    assert resolve_source(entry, {}).revision == COMMIT_A
    assert (
        resolve_source(entry, {}).describe() == f"Hub bert-base-uncased@{COMMIT_A[:12]} (catalogue default)"
    )
    assert resolve_source(entry, {"FILL_MASK_MODEL": "bert-base-uncased"}).revision == COMMIT_A
    other = resolve_source(entry, {"FILL_MASK_MODEL": "org/other-bert"})
    assert (other.hub_id, other.revision) == ("org/other-bert", None), "another model: its main branch"
    assert resolve_source(entry, {"FILL_MASK_MODEL": str(tmp_path)}).revision is None, "a folder needs none"


def hub_entry(revision: str | None) -> ModelEntry:
    """A Hub fill-mask model served eagerly (no export: the build stays fast)."""
    source = {"env": "TINY_MODEL", "hub": "org/tiny", **({"revision": revision} if revision else {})}
    return ModelEntry.model_validate(
        {
            "name": "tiny",
            "kind": "fill_mask",
            "source": source,
            "archive_format": "no-archive",
            "handler_config": {"threads": 1, "runtime": "torch"},
        }
    )


def fake_snapshot(cache: Path, commit: str) -> Path:
    """A folder laid out as huggingface_hub's cache lays out `org/tiny` at `commit`."""
    folder = cache / "models--org--tiny" / "snapshots" / commit
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text('{"model_type": "bert"}')
    return folder


def test_a_bumped_revision_changes_the_fingerprint(tmp_path: Path) -> None:
    old, new = fake_snapshot(tmp_path, COMMIT_A), fake_snapshot(tmp_path, COMMIT_B)
    pinned_a = fingerprint(hub_entry(COMMIT_A), Source(hub_id="org/tiny", revision=COMMIT_A, path=old))
    pinned_b = fingerprint(hub_entry(COMMIT_B), Source(hub_id="org/tiny", revision=COMMIT_B, path=new))
    assert pinned_a != pinned_b
    # Unpinned, the same files at another commit of the main branch are another model too.
    unpinned_a = fingerprint(hub_entry(None), Source(hub_id="org/tiny", path=old))
    unpinned_b = fingerprint(hub_entry(None), Source(hub_id="org/tiny", path=new))
    assert unpinned_a != unpinned_b


def test_a_pinned_hub_model_is_fetched_at_its_revision_and_rebuilt_when_bumped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[tuple[str, str | None]] = []

    def fetch(hub_id: str, environ: object, revision: str | None = None) -> Path:
        del environ
        asked.append((hub_id, revision))
        return fake_snapshot(tmp_path / "cache", revision or COMMIT_B)

    monkeypatch.setattr(archive_module, "fetch_from_hub", fetch)
    store = tmp_path / "store"
    first = build_archive(hub_entry(COMMIT_A), store, {})
    assert first.rebuilt and asked == [("org/tiny", COMMIT_A)]
    record = json.loads((store / ".builds" / "tiny.json").read_text())
    assert (record["hub_id"], record["hub_revision"], record["hub_pinned"]) == ("org/tiny", COMMIT_A, True)
    assert not build_archive(hub_entry(COMMIT_A), store, {}).rebuilt, "the same revision is reused"
    assert build_archive(hub_entry(COMMIT_B), store, {}).rebuilt, "a bumped revision rebuilds"
    unpinned = build_archive(hub_entry(None), store, {})
    record = json.loads((store / ".builds" / "tiny.json").read_text())
    assert asked[-1] == ("org/tiny", None) and record["hub_revision"] == COMMIT_B
    assert record["hub_pinned"] is False and unpinned.rebuilt, "the commit it got is recorded"


def test_a_snapshot_that_is_not_the_pinned_commit_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(archive_module, "fetch_from_hub", lambda *_: fake_snapshot(tmp_path, COMMIT_B))
    with pytest.raises(ConfigError, match=f"asked org/tiny for {COMMIT_A}, got {COMMIT_B}"):
        build_archive(hub_entry(COMMIT_A), tmp_path / "store", {})

"""The catalogue and the one archive builder: sources, reuse and rebuilds."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import yaml

from modelserver.archive import build_archive
from modelserver.catalogue import Catalogue, ModelEntry, resolve_source
from modelserver.errors import ConfigError


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

    from modelserver.archive import _hash_path  # pylint: disable=import-outside-toplevel

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

    from modelserver.archive import links_leaving  # pylint: disable=import-outside-toplevel

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

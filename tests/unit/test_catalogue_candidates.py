"""A model's candidate in the catalogue: registered right after its model under its own name,
with its own version and source and the primary's settings unless it gives its own; and the
mistakes refused when the catalogue loads, each naming the problem."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelserver.catalogue import CANDIDATE_SUFFIX, TORCHSERVE_JOB_QUEUE, Catalogue, candidate_name
from modelserver.errors import ConfigError
from modelserver.project import PROJECT_ROOT

PROJECT_CATALOGUE: dict[str, Any] = yaml.safe_load((PROJECT_ROOT / "models.yaml").read_text(encoding="utf-8"))
CANDIDATE_SOURCE = {"env": "CRYSTAL_SKLEARN_V2_MODEL", "default": "models/crystal_sklearn_v2.model"}


def project_catalogue(**candidate: Any) -> dict[str, Any]:
    """The project's catalogue with a candidate on crystal_sklearn: version 2 from a file of its
    own, unless `candidate` fields say otherwise."""
    raw = copy.deepcopy(PROJECT_CATALOGUE)
    raw["models"]["crystal_sklearn"]["candidate"] = {"version": "2", "source": CANDIDATE_SOURCE, **candidate}
    return raw


def load(tmp_path: Path, raw: dict[str, Any]) -> Catalogue:
    """Write `raw` as a catalogue file and load it."""
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")  # in its order
    return Catalogue.load(path)


def test_the_candidate_is_registered_right_after_its_model(tmp_path: Path) -> None:
    catalogue = load(tmp_path, project_catalogue())
    names = list(catalogue.registrations)
    assert names == [
        "crystal_sklearn",
        "crystal_sklearn__candidate",
        "crystal_pytorch",
        "fill_mask",
        "camembert",
        "sentiment",
        "topics",
    ]
    assert candidate_name("crystal_sklearn") == "crystal_sklearn" + CANDIDATE_SUFFIX
    # The candidate is served beside its model, not as a model of the catalogue's own.
    assert "crystal_sklearn__candidate" not in catalogue.models
    assert list(catalogue.candidates()) == ["crystal_sklearn"]


def test_the_candidate_has_its_own_version_and_source_and_the_primarys_settings(tmp_path: Path) -> None:
    catalogue = load(tmp_path, project_catalogue())
    primary = catalogue.entry("crystal_sklearn")
    candidate = catalogue.entry("crystal_sklearn__candidate")
    assert catalogue.candidates()["crystal_sklearn"] is catalogue.registrations[candidate.name]
    assert candidate.name == "crystal_sklearn__candidate"
    assert (primary.version, candidate.version) == ("1", "2")
    assert candidate.source.model_dump(exclude_none=True, exclude_defaults=True) == CANDIDATE_SOURCE
    assert primary.source.recipe == "crystal_sklearn_iris"
    assert candidate.kind == primary.kind == "crystal"
    assert candidate.handler_config == primary.handler_config
    assert candidate.settings == primary.settings
    assert candidate.torchserve == primary.torchserve
    assert candidate.extra_files == primary.extra_files
    assert candidate.admission == primary.admission
    # A candidate has no candidate nor traffic of its own.
    assert candidate.candidate is None
    assert (candidate.traffic.canary, candidate.traffic.shadow) == (0, 0)


def test_the_candidates_own_settings_win_and_its_limits_follow_its_own_batches(tmp_path: Path) -> None:
    raw = project_catalogue(
        handler_config={"framework": "sklearn", "labels_file": "crystal_labels.json", "threads": 2},
        torchserve={"minWorkers": 1, "maxWorkers": 2, "batchSize": 4, "responseTimeout": 20},
    )
    raw["models"]["crystal_sklearn"]["admission"] = {"concurrency": 3, "queue": 5}
    catalogue = load(tmp_path, raw)
    primary = catalogue.entry("crystal_sklearn")
    candidate = catalogue.entry("crystal_sklearn__candidate")
    assert candidate.handler_config["threads"] == 2 and primary.handler_config["threads"] == 1
    assert (candidate.torchserve.maxWorkers, candidate.torchserve.batchSize) == (2, 4)
    assert candidate.torchserve.responseTimeout == 20
    assert (primary.admission.concurrency, primary.admission.queue) == (3, 5)
    # Not the primary's limits: two full batches per worker of its own, and four times that waiting.
    assert candidate.admission.concurrency == min(2 * 4 * 2, TORCHSERVE_JOB_QUEUE) == 16
    assert candidate.admission.queue == 4 * 16


def test_registered_as_names_the_model_then_its_candidate(tmp_path: Path) -> None:
    catalogue = load(tmp_path, project_catalogue())
    assert catalogue.registered_as("crystal_sklearn") == ["crystal_sklearn", "crystal_sklearn__candidate"]
    assert catalogue.registered_as("crystal_pytorch") == ["crystal_pytorch"]
    with pytest.raises(ConfigError, match="no model 'nope'"):
        catalogue.registered_as("nope")


def test_the_default_catalogue_has_no_candidates() -> None:
    catalogue = Catalogue.load()
    assert catalogue.candidates() == {}
    assert list(catalogue.registrations) == list(catalogue.models)
    with pytest.raises(ConfigError, match="crystal_sklearn__candidate"):
        catalogue.entry("crystal_sklearn__candidate")


def broken(change: str) -> dict[str, Any]:
    """The project's catalogue with one mistake in it, by name."""
    if change == "traffic without a candidate":
        raw = copy.deepcopy(PROJECT_CATALOGUE)
        raw["models"]["crystal_sklearn"]["traffic"] = {"canary": 10}
    elif change == "the primary's version":
        raw = project_catalogue(version="1")
    elif change == "a bad version":
        raw = project_catalogue(version="v 2!")
    elif change == "a name with __":
        raw = copy.deepcopy(PROJECT_CATALOGUE)
        raw["models"]["crystal__sklearn"] = raw["models"].pop("crystal_sklearn")
        raw["routes"] = {}
    elif change == "a misspelt candidate handler_config field":
        raw = project_catalogue(handler_config={"framwork": "sklearn", "labels_file": "crystal_labels.json"})
    elif change == "an unknown candidate handler_config field":
        raw = project_catalogue(
            handler_config={"framework": "sklearn", "labels_file": "crystal_labels.json", "thread": 2}
        )
    elif change == "canary 101":
        raw = project_catalogue()
        raw["models"]["crystal_sklearn"]["traffic"] = {"canary": 101}
    else:
        assert change == "min_requests above window"
        raw = project_catalogue()
        raw["models"]["crystal_sklearn"]["traffic"] = {"rollback": {"window": 10, "min_requests": 11}}
    return raw


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ("traffic without a candidate", r"crystal_sklearn.*'canary' and 'shadow' need a 'candidate'"),
        ("the primary's version", r"crystal_sklearn.*candidate\.version '1' is the primary's version too"),
        ("a bad version", r"crystal_sklearn\.candidate\.version.*pattern"),
        ("a name with __", r"model name 'crystal__sklearn' has '__'.*__candidate"),
        (
            "a misspelt candidate handler_config field",
            r"crystal_sklearn: .*candidate\.handler_config\.framework: is required",
        ),
        (
            "an unknown candidate handler_config field",
            r"crystal_sklearn: .*candidate\.handler_config\.thread: is not a known field",
        ),
        ("canary 101", r"crystal_sklearn\.traffic\.canary.*100"),
        (
            "min_requests above window",
            r"crystal_sklearn\.traffic\.rollback.*min_requests must be at most window",
        ),
    ],
)
def test_a_mistake_fails_the_load_naming_it(tmp_path: Path, change: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem) as refused:
        load(tmp_path, broken(change))
    assert str(tmp_path / "models.yaml") in str(refused.value)


def test_the_candidate_answers_to_every_name_of_its_primary(tmp_path: Path) -> None:
    catalogue = load(tmp_path, project_catalogue())
    primary = catalogue.entry("crystal_sklearn")
    candidate = catalogue.entry("crystal_sklearn__candidate")
    assert candidate.served_names()[0] == "crystal_sklearn__candidate"
    assert set(primary.served_names()) <= set(candidate.served_names())
    assert set(primary.served_names()) <= set(candidate.served_names("someone/else"))

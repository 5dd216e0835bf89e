"""The traffic shares kept in the runtime folder: the catalogue's at start, the file's once
written (a missing, corrupt or foreign entry falls back to the catalogue), and the Envoy
runtime keys they become."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from modelserver.catalogue import Catalogue
from modelserver.launcher.traffic.state import (
    TRAFFIC_FILE,
    Shares,
    canary_key,
    catalogue_shares,
    mirror_value,
    read_shares,
    runtime_values,
    shadow_key,
    shares_lock,
    write_shares,
)
from tests.helpers import candidate_catalogue


@pytest.fixture(name="catalogue")
def fixture_catalogue(tmp_path: Path) -> Catalogue:
    """The project's catalogue with a candidate on crystal_sklearn, at canary 10 and shadow 5."""
    return candidate_catalogue(tmp_path, traffic={"canary": 10, "shadow": 5})


@pytest.fixture(name="runtime_dir")
def fixture_runtime_dir(tmp_path: Path) -> Path:
    """An empty runtime folder."""
    folder = tmp_path / "run"
    folder.mkdir()
    return folder


def recent(stamp: str) -> bool:
    """Whether an ISO time is within the last minute."""
    return datetime.now(UTC) - datetime.fromisoformat(stamp) < timedelta(minutes=1)


def test_the_catalogue_shares_are_each_candidates_policy_stamped_by_the_catalogue(
    catalogue: Catalogue,
) -> None:
    shares = catalogue_shares(catalogue)
    assert list(shares) == ["crystal_sklearn"]
    share = shares["crystal_sklearn"]
    assert (share.canary, share.shadow, share.rolled_back, share.promoted) == (10, 5, None, False)
    assert share.changed_by == "catalogue" and recent(share.changed_at)
    assert catalogue_shares(Catalogue.load()) == {}


def test_written_shares_are_read_back(catalogue: Catalogue, runtime_dir: Path) -> None:
    share = Shares(canary=0, shadow=0, rolled_back="candidate 5xx rate 40.0%").changed("launcher")
    write_shares(runtime_dir, {"crystal_sklearn": share})
    assert read_shares(runtime_dir, catalogue) == {"crystal_sklearn": share}
    assert json.loads((runtime_dir / TRAFFIC_FILE).read_text(encoding="utf-8")) == {
        "crystal_sklearn": {
            "canary": 0,
            "shadow": 0,
            "rolled_back": "candidate 5xx rate 40.0%",
            "promoted": False,
            "changed_at": share.changed_at,
            "changed_by": "launcher",
        }
    }
    # Written at once: no temporary file is left beside it.
    assert sorted(path.name for path in runtime_dir.iterdir()) == [TRAFFIC_FILE]


def test_a_new_write_replaces_the_old_shares(catalogue: Catalogue, runtime_dir: Path) -> None:
    write_shares(runtime_dir, {"crystal_sklearn": Shares(canary=25)})
    with shares_lock(runtime_dir):
        write_shares(runtime_dir, {"crystal_sklearn": Shares(canary=100, promoted=True)})
    assert read_shares(runtime_dir, catalogue)["crystal_sklearn"] == Shares(canary=100, promoted=True)


@pytest.mark.parametrize(
    "content",
    ["", "{not json", "[1, 2]", '{"crystal_sklearn": 7}', '{"crystal_sklearn": {"canary": 5, "nope": 1}}'],
)
def test_a_corrupt_file_or_entry_falls_back_to_the_catalogue(
    catalogue: Catalogue, runtime_dir: Path, content: str
) -> None:
    (runtime_dir / TRAFFIC_FILE).write_text(content, encoding="utf-8")
    [share] = read_shares(runtime_dir, catalogue).values()
    assert (share.canary, share.shadow, share.changed_by) == (10, 5, "catalogue")


def test_without_a_file_the_shares_are_the_catalogues(catalogue: Catalogue, runtime_dir: Path) -> None:
    [share] = read_shares(runtime_dir, catalogue).values()
    assert (share.canary, share.shadow, share.changed_by) == (10, 5, "catalogue")
    assert read_shares(runtime_dir / "missing", catalogue).keys() == {"crystal_sklearn"}


def test_a_model_the_catalogue_has_no_candidate_for_is_ignored(
    catalogue: Catalogue, runtime_dir: Path
) -> None:
    write_shares(runtime_dir, {"crystal_pytorch": Shares(canary=50), "gone": Shares(shadow=50)})
    shares = read_shares(runtime_dir, catalogue)
    assert list(shares) == ["crystal_sklearn"]
    assert shares["crystal_sklearn"].changed_by == "catalogue"


@pytest.mark.parametrize(
    ("share", "watched"),
    [
        (Shares(), False),
        (Shares(canary=1), True),
        (Shares(shadow=1), True),
        (Shares(canary=100, promoted=True), False),
        (Shares(shadow=50, promoted=True), False),
        (Shares(canary=0, shadow=0, rolled_back="too many 5xx"), False),
    ],
)
def test_only_an_unpromoted_candidate_with_a_share_is_watched(share: Shares, watched: bool) -> None:
    assert share.watched is watched


def test_a_change_stamps_who_made_it_and_when() -> None:
    before = Shares(canary=10, shadow=5)
    after = before.changed("operator", canary=25)
    assert (after.canary, after.shadow, after.changed_by) == (25, 5, "operator")
    assert recent(after.changed_at) and datetime.fromisoformat(after.changed_at).tzinfo is not None
    assert datetime.fromisoformat(after.changed_at).microsecond == 0  # to the second
    assert (before.canary, before.changed_by, before.changed_at) == (10, "catalogue", "")


def test_runtime_values_are_two_keys_per_model() -> None:
    assert canary_key("crystal_sklearn") == "modelserver.canary.crystal_sklearn"
    assert shadow_key("crystal_sklearn") == "modelserver.shadow.crystal_sklearn"
    values = runtime_values({"b": Shares(canary=25, shadow=10), "a": Shares(canary=100, promoted=True)})
    # Model by model, in order: a query made of them is the same for the same shares.
    assert list(values.items()) == [
        ("modelserver.canary.a", 100),
        ("modelserver.shadow.a", 0),
        ("modelserver.canary.b", 25),
        # Envoy draws one number per request for the canary route and the mirror: 10% of the
        # primary's 75% of draws, above the canary's 25.
        ("modelserver.shadow.b", 33),
    ]
    assert not runtime_values({})


@pytest.mark.parametrize(
    ("canary", "shadow", "threshold"),
    [(0, 0, 0), (0, 30, 30), (0, 100, 100), (25, 20, 40), (25, 0, 0), (50, 50, 75), (100, 50, 100)],
)
def test_the_mirror_threshold_gives_the_shadow_share_of_the_primarys_requests(
    canary: int, shadow: int, threshold: int
) -> None:
    assert mirror_value(Shares(canary=canary, shadow=shadow)) == threshold
    if shadow and canary < 100:
        # The draws the primary answers are canary..99; those below the threshold are mirrored.
        assert (threshold - canary) / (100 - canary) == pytest.approx(shadow / 100, abs=0.01)

"""The launcher's watch over a candidate: fed by Envoy's access log and by the shadow pairs, it
judges the rollback policy while the candidate has a share (and is not promoted), and rolls it
back: the runtime folder's file first, then Envoy's runtime (again on the next turn if Envoy did
not answer); its status and Prometheus text say so."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from modelserver.catalogue import Catalogue
from modelserver.kinds.comparison import Comparison
from modelserver.launcher.traffic.shadow import PairResult
from modelserver.launcher.traffic.state import (
    TRAFFIC_FILE,
    Shares,
    catalogue_shares,
    read_shares,
    shares_lock,
    write_shares,
)
from modelserver.launcher.traffic.watch import TrafficWatch
from tests.helpers import candidate_catalogue

MODEL = "crystal_sklearn"
# Judged from the 5th answer of the candidate, over its last 10.
SMALL_WINDOW = {"window": 10, "min_requests": 5}
BOTH_OFF = "/runtime_modify?modelserver.canary.crystal_sklearn=0&modelserver.shadow.crystal_sklearn=0"


@dataclass
class FakeAdmin:
    """Envoy's admin interface: the requests it got; it fails (no Envoy) `failures` times first."""

    calls: list[tuple[str, str]] = field(default_factory=list)
    failures: int = 0

    def __call__(self, method: str, path: str) -> str:
        self.calls.append((method, path))
        if self.failures:
            self.failures -= 1
            raise OSError("[Errno 111] Connection refused")
        return "OK\n"


@dataclass
class Watched:
    """A watch over crystal_sklearn's candidate, its runtime folder, access log and fake admin."""

    watch: TrafficWatch
    catalogue: Catalogue
    runtime_dir: Path
    access_log: Path
    admin: FakeAdmin

    def shares(self) -> dict[str, Any]:
        """crystal_sklearn's shares as the runtime folder's file holds them."""
        found: dict[str, Any] = json.loads((self.runtime_dir / TRAFFIC_FILE).read_text(encoding="utf-8"))
        return dict(found[MODEL])

    def log(self, *records: Mapping[str, Any]) -> None:
        """Append lines to the access log, as Envoy does."""
        with self.access_log.open("a", encoding="utf-8") as lines:
            lines.writelines(json.dumps(record) + "\n" for record in records)


@pytest.fixture(name="watched")
def fixture_watched(tmp_path: Path) -> Callable[..., Watched]:
    """A watch (not begun) over crystal_sklearn's candidate with `traffic` as its policy."""

    def watched(**traffic: Any) -> Watched:
        catalogue = candidate_catalogue(tmp_path, traffic={**traffic, "rollback": SMALL_WINDOW})
        runtime_dir = tmp_path / "run"
        (runtime_dir / "envoy").mkdir(parents=True, exist_ok=True)
        access_log = runtime_dir / "envoy" / "access.log"
        admin = FakeAdmin()
        watch = TrafficWatch(catalogue, runtime_dir, access_log, admin)
        return Watched(watch, catalogue, runtime_dir, access_log, admin)

    return watched


def pair(candidate_status: int = 200, comparison: Comparison | None = None) -> PairResult:
    """A shadow pair of crystal_sklearn: the primary answered 200 in 10 ms."""
    return PairResult(MODEL, 200, 0.010, candidate_status, 0.012, comparison, None)


def answered(cluster: str, status: int, upstream_ms: int = 12) -> dict[str, Any]:
    """An access log line of a public request to `cluster`."""
    return {
        "method": "POST",
        "path": "/sklearn",
        "status": status,
        "duration_ms": upstream_ms + 1,
        "upstream_ms": upstream_ms,
        "model": cluster,
    }


def test_begin_writes_the_catalogues_shares(watched: Callable[..., Watched]) -> None:
    running = watched(canary=10, shadow=5)
    assert running.watch.active
    running.watch.begin({})
    share = running.shares()
    assert (share["canary"], share["shadow"], share["changed_by"], share["rolled_back"]) == (
        10,
        5,
        "catalogue",
        None,
    )
    assert running.watch.shares() == read_shares(running.runtime_dir, running.catalogue)
    assert running.admin.calls == []  # Envoy starts with them in its static layer


def test_failing_shadow_pairs_roll_the_candidate_back(watched: Callable[..., Watched]) -> None:
    running = watched(shadow=50)
    running.watch.begin({})
    for _ in range(4):
        running.watch.record_pair(pair(candidate_status=500))
    running.watch.tend()
    assert running.admin.calls == [] and running.shares()["shadow"] == 50  # 4 answers: not judged yet
    running.watch.record_pair(pair(candidate_status=500))
    running.watch.tend()
    share = running.shares()
    assert (share["canary"], share["shadow"], share["changed_by"], share["promoted"]) == (
        0,
        0,
        "launcher",
        False,
    )
    reason = share["rolled_back"]
    assert reason.startswith("candidate 5xx rate 100.0% over its last 5 requests")
    assert running.admin.calls == [("POST", BOTH_OFF)]
    status = running.watch.status()[MODEL]
    assert (status["rolled_back"], status["rollbacks"], status["shadow"]) == (reason, 1, 0)
    assert status["shadow_pairs"]["failed"] == 5
    assert status["candidate"]["version"] == "2" and status["candidate"]["errors_total"] == 5
    assert status["primary"]["version"] == "1" and status["primary"]["requests_total"] == 5
    text = running.watch.exposition()
    assert 'modelserver_traffic_rolled_back{model="crystal_sklearn"} 1\n' in text
    assert 'modelserver_traffic_rollbacks_total{model="crystal_sklearn"} 1\n' in text
    assert 'modelserver_traffic_percent{model="crystal_sklearn",mode="shadow"} 0\n' in text
    # Rolled back, it is no longer judged: nothing more is sent to Envoy.
    running.watch.record_pair(pair(candidate_status=500))
    running.watch.tend()
    assert running.admin.calls == [("POST", BOTH_OFF)] and running.watch.status()[MODEL]["rollbacks"] == 1


def test_a_promoted_candidate_is_never_rolled_back(watched: Callable[..., Watched]) -> None:
    running = watched(shadow=50)
    running.watch.begin({})
    with shares_lock(running.runtime_dir):
        promoted = Shares(canary=100, promoted=True).changed("operator")
        write_shares(running.runtime_dir, {MODEL: promoted})
    for _ in range(10):
        running.watch.record_pair(pair(candidate_status=500))
    running.watch.tend()
    assert running.admin.calls == []
    assert running.shares()["promoted"] is True and running.shares()["canary"] == 100
    status = running.watch.status()[MODEL]
    assert (status["rolled_back"], status["rollbacks"], status["promoted"]) == (None, 0, True)
    assert 'modelserver_traffic_rolled_back{model="crystal_sklearn"} 0\n' in running.watch.exposition()


def test_a_candidate_without_a_share_is_not_judged(watched: Callable[..., Watched]) -> None:
    running = watched()
    running.watch.begin({})
    for _ in range(10):
        running.watch.record_pair(pair(candidate_status=500))
    running.watch.tend()
    assert running.admin.calls == []
    assert (running.shares()["rolled_back"], running.watch.status()[MODEL]["rollbacks"]) == (None, 0)


def test_access_log_lines_feed_the_candidates_window_under_a_canary_share(
    watched: Callable[..., Watched],
) -> None:
    running = watched(canary=10)
    # A previous launcher's lines are not this candidate's record.
    running.log(*[answered("model_crystal_sklearn__candidate", 500)] * 10)
    running.watch.begin({})
    running.watch.tend()  # the tail starts here, at the end of the file
    assert running.admin.calls == []
    running.log(
        *[answered("model_crystal_sklearn", 200)] * 5,
        answered("torchserve", 404),  # the generic cluster: no version of any watched model
        *[answered("model_crystal_sklearn__candidate", 200)] * 3,
    )
    running.watch.tend()
    status = running.watch.status()[MODEL]
    assert (status["primary"]["requests_total"], status["candidate"]["requests_total"]) == (5, 3)
    assert status["candidate"]["median_seconds"] == pytest.approx(0.012)
    assert running.admin.calls == []
    running.log(*[answered("model_crystal_sklearn__candidate", 503)] * 2)
    running.watch.tend()
    share = running.shares()
    assert (share["canary"], share["shadow"]) == (0, 0)
    assert share["rolled_back"].startswith("candidate 5xx rate 40.0% over its last 5 requests")
    assert "above the primary's 0.0% + 1.0 point" in share["rolled_back"]
    assert running.admin.calls == [("POST", BOTH_OFF)]
    assert running.watch.status()[MODEL]["candidate"]["errors_total"] == 2


def test_access_log_lines_written_after_begin_count_from_the_first_turn(
    watched: Callable[..., Watched],
) -> None:
    running = watched(canary=10)
    running.log(answered("model_crystal_sklearn", 200))  # a previous launcher's
    running.watch.begin({})
    running.log(*[answered("model_crystal_sklearn__candidate", 500)] * 5)
    running.watch.tend()
    assert running.watch.status()[MODEL]["candidate"]["requests_total"] == 5


def test_a_rollback_envoy_did_not_take_is_kept_and_sent_again(watched: Callable[..., Watched]) -> None:
    running = watched(canary=20)
    running.watch.begin({})
    running.admin.failures = 1
    for _ in range(5):
        running.watch.record_pair(pair(candidate_status=500))
    running.watch.tend()
    assert running.admin.calls == [("POST", BOTH_OFF)]
    share = running.shares()
    assert (share["canary"], share["shadow"]) == (0, 0) and share["rolled_back"]
    assert running.watch.status()[MODEL]["rollbacks"] == 1
    running.watch.tend()
    assert running.admin.calls == [("POST", BOTH_OFF)] * 2
    running.watch.tend()
    assert len(running.admin.calls) == 2  # taken: not sent a third time
    assert running.watch.status()[MODEL]["rollbacks"] == 1


def test_a_rolled_back_candidate_is_judged_afresh_once_given_traffic_again(
    watched: Callable[..., Watched],
) -> None:
    running = watched(shadow=50)
    running.watch.begin({})
    for _ in range(5):
        running.watch.record_pair(pair(candidate_status=500))
    running.watch.tend()
    assert running.shares()["rolled_back"]
    with shares_lock(running.runtime_dir):  # as `python -m modelserver traffic MODEL --shadow 50` does
        write_shares(running.runtime_dir, {MODEL: Shares(shadow=50).changed("operator")})
    for _ in range(4):
        running.watch.record_pair(pair(candidate_status=500))
    running.watch.tend()
    assert running.shares()["shadow"] == 50 and len(running.admin.calls) == 1  # 4 answers since: not yet
    running.watch.record_pair(pair(candidate_status=500))
    running.watch.tend()
    assert running.shares()["shadow"] == 0 and running.watch.status()[MODEL]["rollbacks"] == 2


def test_compared_pairs_give_the_agreement(watched: Callable[..., Watched]) -> None:
    running = watched(shadow=50)
    running.watch.begin({})
    running.watch.record_pair(pair(comparison=Comparison(items=4, agreeing=3, largest_score_difference=0.02)))
    running.watch.record_pair(pair(comparison=Comparison(items=4, agreeing=4, largest_score_difference=0.01)))
    running.watch.record_pair(PairResult(MODEL, 200, 0.01, 200, 0.01, None, "the answers hold other fields"))
    running.watch.record_pair(PairResult("crystal_pytorch", 200, 0.01, 500, 0.01, None, None))  # not watched
    running.watch.skipped(MODEL)
    status = running.watch.status()[MODEL]
    assert status["agreement"] == pytest.approx(7 / 8)
    assert status["largest_score_difference"] == pytest.approx(0.02)
    assert (status["items_compared_total"], status["items_agreeing_total"]) == (8, 7)
    assert status["shadow_pairs"] == {"compared": 2, "incomparable": 1, "failed": 0, "skipped": 1}
    text = running.watch.exposition()
    assert 'modelserver_shadow_agreement_ratio{model="crystal_sklearn"} 0.875\n' in text
    assert 'modelserver_shadow_pairs_total{model="crystal_sklearn",outcome="compared"} 2\n' in text
    assert 'modelserver_shadow_items_total{model="crystal_sklearn"} 8\n' in text


def test_agreement_below_the_minimum_rolls_back(tmp_path: Path) -> None:
    rollback = {**SMALL_WINDOW, "min_agreement": 0.9}
    catalogue = candidate_catalogue(tmp_path, traffic={"shadow": 100, "rollback": rollback})
    admin = FakeAdmin()
    watch = TrafficWatch(catalogue, tmp_path, tmp_path / "access.log", admin)
    watch.begin({})
    for _ in range(5):
        watch.record_pair(pair(comparison=Comparison(items=4, agreeing=3)))
    watch.tend()
    [share] = read_shares(tmp_path, catalogue).values()
    assert share.rolled_back is not None and "agrees with the primary on 75.0%" in share.rolled_back
    assert admin.calls == [("POST", BOTH_OFF)]


def test_without_a_candidate_the_watch_does_nothing(tmp_path: Path) -> None:
    admin = FakeAdmin()
    watch = TrafficWatch(Catalogue.load(), tmp_path, tmp_path / "access.log", admin)
    watch.begin({})
    watch.tend()
    assert not watch.active and not watch.status() and not watch.exposition()
    assert not (tmp_path / TRAFFIC_FILE).exists() and not admin.calls
    assert catalogue_shares(Catalogue.load()) == {}


def test_a_loading_candidate_gets_no_traffic_until_ready_and_is_rolled_back_after_its_grace(
    watched: Callable[..., Watched],
) -> None:
    running = watched(canary=30, shadow=20)
    running.watch.begin({})
    states = {"crystal_sklearn__candidate": "no ready worker (STARTING)"}
    running.watch.hold_loading(states.__getitem__, grace_s=60)
    held = running.watch.shares()[MODEL]
    assert (held.canary, held.shadow) == (0, 0) and running.watch.status()[MODEL]["loading"]
    for _ in range(6):  # what a loading candidate answers is never judged
        running.watch.record_pair(pair(candidate_status=503))
    running.watch.tend()
    assert running.admin.calls[-1] == ("POST", BOTH_OFF) and running.shares()["rolled_back"] is None
    states["crystal_sklearn__candidate"] = "ready"
    running.watch.tend()
    assert running.watch.shares()[MODEL].canary == 30 and "loading" not in running.watch.status()[MODEL]
    assert running.admin.calls[-1][1].startswith("/runtime_modify?modelserver.canary.crystal_sklearn=30")
    running.watch.hold_loading(lambda _: "no ready worker (STARTING)", grace_s=0)
    running.watch.tend()
    assert "is not ready: no ready worker" in running.shares()["rolled_back"]
    assert running.admin.calls[-1] == ("POST", BOTH_OFF)


def test_a_candidate_not_served_starts_rolled_back_and_gets_no_traffic(
    watched: Callable[..., Watched],
) -> None:
    running = watched(canary=30)
    running.watch.begin({MODEL: "no source: set CRYSTAL_SKLEARN_CANDIDATE"})
    assert running.shares()["canary"] == 0
    assert (
        running.shares()["rolled_back"]
        == "the candidate is not served: no source: set CRYSTAL_SKLEARN_CANDIDATE"
    )
    with shares_lock(running.runtime_dir):  # an operator's share cannot reach it either
        write_shares(running.runtime_dir, {MODEL: Shares(canary=50).changed("operator")})
    assert running.watch.shares()[MODEL].canary == 0 and running.watch.status()[MODEL]["canary"] == 0


def test_without_candidates_an_earlier_runs_shares_file_goes(tmp_path: Path) -> None:
    runtime_dir = tmp_path / "run"
    runtime_dir.mkdir()
    (runtime_dir / TRAFFIC_FILE).write_text('{"crystal_sklearn": {"canary": 10}}', encoding="utf-8")
    TrafficWatch(Catalogue.load(), runtime_dir, runtime_dir / "access.log", FakeAdmin()).begin({})
    assert not (runtime_dir / TRAFFIC_FILE).exists()


def test_a_rollback_judged_on_shares_an_operator_changed_since_is_dropped(
    watched: Callable[..., Watched],
) -> None:
    running = watched(shadow=50)
    running.watch.begin({})
    judged = read_shares(running.runtime_dir, running.catalogue)[MODEL]
    with shares_lock(running.runtime_dir):  # the operator promotes it meanwhile
        write_shares(running.runtime_dir, {MODEL: Shares(canary=100, promoted=True).changed("operator")})
    running.watch.roll_back(MODEL, "candidate 5xx rate 100.0%", judged=judged)
    assert running.shares()["promoted"] and running.shares()["rolled_back"] is None
    assert not running.admin.calls and running.watch.status()[MODEL]["rollbacks"] == 0


def test_a_rollback_the_folder_cannot_keep_is_still_made_in_envoy(
    watched: Callable[..., Watched], monkeypatch: pytest.MonkeyPatch
) -> None:
    running = watched(shadow=50)
    running.watch.begin({})

    def full_disk(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("modelserver.launcher.traffic.watch.write_shares", full_disk)
    for _ in range(5):
        running.watch.record_pair(pair(candidate_status=500))
    running.watch.tend()
    assert running.admin.calls == [("POST", BOTH_OFF)]
    assert running.watch.status()[MODEL]["rolled_back"] and running.watch.shares()[MODEL].shadow == 0
    assert running.shares()["shadow"] == 50  # the file could not be written


def test_a_new_envoy_gets_the_shares_again(watched: Callable[..., Watched]) -> None:
    running = watched(canary=10)
    running.watch.begin({})
    running.watch.tend()
    calls = len(running.admin.calls)
    running.watch.reapply()
    running.watch.tend()
    assert len(running.admin.calls) == calls + 1
    assert running.admin.calls[-1][1].startswith("/runtime_modify?modelserver.canary.crystal_sklearn=10")

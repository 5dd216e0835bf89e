"""A request that reaches the worker after its route has stopped waiting is answered 504 and
left out of the forward pass; the others in its batch are computed as usual."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from load_tests.kit.routes import BRIEF_ROWS
from modelserver.catalogue import Catalogue
from modelserver.kinds.crystal import worker as crystal_worker
from modelserver.launcher.envoy.routes import RouteTable
from modelserver.serving.deadlines import ARRIVED_HEADER, WAIT_HEADER, deadline_passed
from tests.helpers import crystal_handler, unpinned

GOOD = json.dumps({"crystalData": BRIEF_ROWS}).encode()
NOW_S = 1_800_000_000.0


@pytest.mark.parametrize(
    ("arrived_ms", "wait_ms", "late"),
    [
        (str(int(NOW_S * 1000) - 20_000), "15000", True),  # waited 20 s on a 15 s route
        (str(int(NOW_S * 1000) - 1_000), "15000", False),
        (str(int(NOW_S * 1000) - 15_001), "15000", True),
        (None, "15000", False),  # no stamp: never dropped on a guess
        ("soon", "15000", False),
        (str(int(NOW_S * 1000) - 20_000), None, False),
        (str(int(NOW_S * 1000) - 20_000), "0", False),  # a route that waits without bound
        (str(int(NOW_S * 1000) - 20_000).encode(), b"15000", True),  # TorchServe hands bytes
    ],
)
def test_a_deadline_passes_only_on_both_stamps(arrived_ms: Any, wait_ms: Any, late: bool) -> None:
    error = deadline_passed(arrived_ms, wait_ms, NOW_S)
    assert (error is not None) == late
    if error is not None:
        assert error.status == 504 and "not computed" in error.message and "15 s" in error.message


def test_late_requests_are_answered_504_and_never_reach_the_model(
    crystal_model_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    handler, context = crystal_handler(crystal_model_dirs["sklearn"], "sklearn")
    seen: list[int] = []
    real = crystal_worker.CrystalPredictor.predict

    def counting(self: crystal_worker.CrystalPredictor, requests: Any) -> Any:
        seen.append(len(requests))
        return real(self, requests)

    monkeypatch.setattr(crystal_worker.CrystalPredictor, "predict", counting)
    now_ms = int(time.time() * 1000)
    context.request_headers = {
        0: {ARRIVED_HEADER: str(now_ms - 20_000), WAIT_HEADER: "15000"},
        1: {ARRIVED_HEADER: str(now_ms), WAIT_HEADER: "15000"},
        2: {},  # no stamps (TorchServe reached directly): computed
        3: {ARRIVED_HEADER: str(now_ms - 60_000), WAIT_HEADER: "15000"},
    }
    answers = [json.loads(a) for a in handler.handle([{"body": GOOD}] * 4, context)]
    assert [context.status_of(i) for i in range(4)] == [504, 200, 200, 504]
    assert seen == [2], "only the awaited requests went through the model, in one call"
    assert answers[1] == answers[2] and "prediction" in answers[1]
    assert answers[0]["code"] == 504 and "not computed" in answers[0]["error"]


def test_a_batch_of_late_requests_only_runs_no_model(
    crystal_model_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    handler, context = crystal_handler(crystal_model_dirs["sklearn"], "sklearn")
    monkeypatch.setattr(crystal_worker.CrystalPredictor, "predict", lambda *_: pytest.fail("the model ran"))
    stale = {ARRIVED_HEADER: str(int(time.time() * 1000) - 30_000), WAIT_HEADER: "15000"}
    context.request_headers = {0: stale, 1: stale}
    handler.handle([{"body": GOOD}] * 2, context)
    assert [context.status_of(i) for i in range(2)] == [504, 504]


def test_envoy_stamps_each_model_route_with_its_wait_and_strips_clients_stamps() -> None:
    routes = unpinned(RouteTable(Catalogue.load(), {}).routes())
    sklearn = next(r for r in routes if r["match"].get("path") == "/sklearn")
    added = {h["header"]["key"]: h["header"]["value"] for h in sklearn["request_headers_to_add"]}
    assert added == {ARRIVED_HEADER: "%START_TIME(%s%3f)%", WAIT_HEADER: "15000"}
    v2 = next(r for r in routes if r["match"].get("path") == "/v2/models/fill_mask/infer")
    keys = [h["header"]["key"] for h in v2["request_headers_to_add"]]
    assert ARRIVED_HEADER in keys and WAIT_HEADER in keys and len(keys) == 3  # and the v2 mark

"""A model and its candidate served side by side, live: the version header and its pin, a canary
share measured, shares changed under load, shadow agreement against a known disagreement rate,
a broken candidate rolled back on its own with no client seeing it, promotion and rollback.

Two tiny decision trees stand in for two versions of a crystal model: they agree on every row
whose second measurement is low and disagree (label 0 or 1 against 2) on every row where it is
high, so the share of disagreeing rows sent is the disagreement rate expected.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
import requests
from sklearn.tree import DecisionTreeClassifier

from load_tests.kit.stack import Launcher, running
from modelserver.errors import ErrorType
from modelserver.launcher.pages.metrics import SHARED_FOR_S
from modelserver.project import PROJECT_ROOT
from modelserver.serving.headers import VERSION_HEADER
from tests.helpers import check_json_error, post, run_make
from tests.live.conftest import write_broken_model

TRAINING_ROWS = [[0, 0, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 5, 0]]
PRIMARY_LABELS = [0, 1, 0, 1, 2]  # by the first measurement
CANDIDATE_LABELS = [0, 1, 2, 2, 2]  # label 2 wherever the second measurement is high
AGREEING_ROWS = [[0.2, 0.1, 0.0, 0.0], [0.8, 0.2, 0.0, 0.0]]
DISAGREEING_ROWS = [[0.2, 0.9, 0.0, 0.0], [0.7, 0.8, 0.0, 0.0]]
LABELS = PROJECT_ROOT / "modelserver" / "kinds" / "crystal_labels.json"
ROUTE = "/upgraded"
CANDIDATE_GRACE_S = 5


def write_tree(path: Path, labels: list[int]) -> Path:
    """A fitted decision tree on the training rows with these labels."""
    joblib.dump(DecisionTreeClassifier(random_state=0).fit(np.array(TRAINING_ROWS, float), labels), path)
    return path


def crystal_entry(source: Path, candidate: Path, policy: dict[str, Any]) -> dict[str, Any]:
    """A crystal model of two versions, "1" and "2"."""
    return {
        "kind": "crystal",
        "source": {"default": str(source)},
        "extra_files": [str(LABELS)],
        "handler_config": {"framework": "sklearn", "labels_file": "crystal_labels.json"},
        "torchserve": {"batchSize": 8, "maxBatchDelay": 2},
        "candidate": {"version": "2", "source": {"default": str(candidate)}},
        "traffic": policy,
    }


@pytest.fixture(name="upgrades", scope="module")
def upgrades_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launcher]:
    """A stack of three models with candidates: `crystal_sklearn` (a candidate that disagrees
    on known rows, on /upgraded), `crystal_fragile` (a candidate that fails every request,
    shadowed from the start: the rollback policy must take it out) and `crystal_unloadable`
    (a candidate whose file is no model, with a canary share it must never get)."""
    workdir = tmp_path_factory.mktemp("upgrades")
    primary = write_tree(workdir / "primary.joblib", PRIMARY_LABELS)
    unloadable = workdir / "unloadable.joblib"
    unloadable.write_bytes(b"not a model")
    catalogue = {
        "models": {
            "crystal_sklearn": crystal_entry(
                primary,
                write_tree(workdir / "candidate.joblib", CANDIDATE_LABELS),
                {"shadow_concurrency": 16},
            ),
            "crystal_fragile": crystal_entry(
                primary,
                write_broken_model(workdir / "broken.joblib"),
                {"shadow": 100, "rollback": {"window": 50, "min_requests": 20}},
            ),
            "crystal_unloadable": crystal_entry(primary, unloadable, {"canary": 50}),
        },
        "routes": {ROUTE: {"model": "crystal_sklearn", "timeout_s": 15}},
    }
    path = workdir / "models.yaml"
    path.write_text(json.dumps(catalogue), encoding="utf-8")
    with running(
        Launcher(workdir, catalogue=path, options=("--candidate-grace", str(CANDIDATE_GRACE_S)))
    ) as live:
        yield live


def expected_label(rows: list[list[float]], labels: list[int]) -> list[str]:
    """What a tree trained on `labels` answers for `rows`, as label names."""
    names = json.loads(LABELS.read_text(encoding="utf-8"))
    tree = DecisionTreeClassifier(random_state=0).fit(np.array(TRAINING_ROWS, float), labels)
    return [names[int(i)] if isinstance(names, list) else names[str(int(i))] for i in tree.predict(rows)]


def traffic(stack: Launcher, model: str, **change: object) -> dict[str, Any]:
    """`make traffic MODEL=<model> CANARY=... SHADOW=... PROMOTE=1 ROLLBACK=1` as an operator
    runs it against this stack: the model's shares after the change."""
    variables = {name.upper(): value for name, value in change.items()}
    return dict(run_make(stack, "traffic", 60, MODEL=model, **variables)[model])


def status(stack: Launcher, model: str) -> dict[str, Any]:
    """The model's entry of GET /traffic (on the operations port)."""
    response = requests.get(f"http://127.0.0.1:{stack.ports.prometheus}/traffic", timeout=10)
    assert response.status_code == 200, response.text
    return dict(response.json()["models"][model])


def fresh_metrics(stack: Launcher) -> str:
    """GET /metrics once every scrape made before this call has expired (scrapes within a
    second share one reading)."""
    time.sleep(SHARED_FOR_S + 0.1)
    return requests.get(stack.metrics_url, timeout=10).text


def ask(stack: Launcher, rows: list[list[float]], **headers: str) -> requests.Response:
    """One request to the model's route."""
    return post(stack, ROUTE, {"crystalData": rows}, headers=headers or None)


def test_every_answer_names_its_version_and_a_client_may_pin_one(upgrades: Launcher) -> None:
    traffic(upgrades, "crystal_sklearn", canary=0, shadow=0)
    plain = ask(upgrades, DISAGREEING_ROWS)
    assert plain.status_code == 200 and plain.headers[VERSION_HEADER] == "1"
    assert plain.json()["prediction"] == expected_label(DISAGREEING_ROWS, PRIMARY_LABELS)
    pinned = ask(upgrades, DISAGREEING_ROWS, **{VERSION_HEADER: "2"})
    assert pinned.status_code == 200 and pinned.headers[VERSION_HEADER] == "2"
    assert pinned.json()["prediction"] == expected_label(DISAGREEING_ROWS, CANDIDATE_LABELS)
    assert pinned.json()["prediction"] != plain.json()["prediction"]
    assert ask(upgrades, AGREEING_ROWS, **{VERSION_HEADER: "1"}).headers[VERSION_HEADER] == "1"
    # A body naming the model reaches either version: the candidate answers to its names too.
    named = post(
        upgrades,
        "/predictions/crystal_sklearn",
        {"crystalData": AGREEING_ROWS, "model_name": "crystal_sklearn"},
        {VERSION_HEADER: "2"},
    )
    assert named.status_code == 200 and named.headers[VERSION_HEADER] == "2", named.text
    generic = post(
        upgrades, "/predictions/crystal_sklearn", {"crystalData": AGREEING_ROWS}, {VERSION_HEADER: "2"}
    )
    assert generic.status_code == 200 and generic.headers[VERSION_HEADER] == "2"


def test_an_unknown_version_or_the_candidates_own_name_is_a_json_404(upgrades: Launcher) -> None:
    body = check_json_error(ask(upgrades, AGREEING_ROWS, **{VERSION_HEADER: "3"}), 404, ErrorType.NOT_FOUND)
    assert "1, 2" in body["error"] and VERSION_HEADER in body["error"]
    # Per-model traffic figures stay off the public port, as /metrics does.
    check_json_error(requests.get(f"{upgrades.url}/traffic", timeout=10), 404)
    hidden = post(upgrades, "/predictions/crystal_sklearn__candidate", {"crystalData": AGREEING_ROWS})
    assert VERSION_HEADER in check_json_error(hidden, 404)["error"]


def test_a_canary_share_of_30_percent_is_measured_within_five_standard_deviations(upgrades: Launcher) -> None:
    assert traffic(upgrades, "crystal_sklearn", canary=30, shadow=0)["canary"] == 30
    sent = 1000
    versions: Counter[str] = Counter()
    session = requests.Session()
    for _ in range(sent):
        answer = session.post(f"{upgrades.url}{ROUTE}", json={"crystalData": AGREEING_ROWS}, timeout=30)
        assert answer.status_code == 200, answer.text
        versions[answer.headers[VERSION_HEADER]] += 1
    # Binomial(1000, 0.3): a standard deviation of 14.5 requests; 5 of them is a false alarm
    # once in 1.7 million runs.
    tolerance = 5 * math.sqrt(sent * 0.3 * 0.7)
    assert abs(versions["2"] - 0.3 * sent) <= tolerance, versions
    assert versions["1"] + versions["2"] == sent
    metrics = fresh_metrics(upgrades)
    assert 'modelserver_traffic_percent{model="crystal_sklearn",mode="canary"} 30' in metrics
    assert 'envoy_cluster_upstream_rq_total{envoy_cluster_name="model_crystal_sklearn__candidate"}' in metrics
    traffic(upgrades, "crystal_sklearn", canary=0)


def test_shares_change_under_load_without_a_failed_request(upgrades: Launcher) -> None:
    traffic(upgrades, "crystal_sklearn", canary=0, shadow=0)
    stop = threading.Event()
    answers: list[tuple[int, str]] = []
    lock = threading.Lock()

    def client() -> None:
        session = requests.Session()
        while not stop.is_set():
            answer = session.post(f"{upgrades.url}{ROUTE}", json={"crystalData": AGREEING_ROWS}, timeout=30)
            with lock:
                answers.append((answer.status_code, answer.headers.get(VERSION_HEADER, "")))

    clients = [threading.Thread(target=client) for _ in range(4)]
    for thread in clients:
        thread.start()
    try:
        for canary in ("50", "100", "10", "0", "100", "0"):
            traffic(upgrades, "crystal_sklearn", canary=canary)
            time.sleep(0.7)
    finally:
        stop.set()
        for thread in clients:
            thread.join(timeout=30)
    statuses = Counter(code for code, _ in answers)
    assert statuses == {200: len(answers)}, statuses
    assert {version for _, version in answers} == {"1", "2"}
    assert len(answers) > 100
    assert all(ask(upgrades, AGREEING_ROWS).headers[VERSION_HEADER] == "1" for _ in range(20))


def test_shadow_agreement_matches_the_known_disagreement_rate(upgrades: Launcher) -> None:
    traffic(upgrades, "crystal_sklearn", canary=0, shadow=100)
    before = status(upgrades, "crystal_sklearn")["shadow_pairs"]
    # 40 requests, each of one row: every 4th disagrees, so the agreement is 30 / 40 = 0.75.
    rows = [DISAGREEING_ROWS[i % 2] if i % 4 == 0 else AGREEING_ROWS[i % 2] for i in range(40)]
    for row in rows:
        answer = ask(upgrades, [row])
        assert answer.status_code == 200 and answer.headers[VERSION_HEADER] == "1"
        assert answer.json()["prediction"] == expected_label([row], PRIMARY_LABELS)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        now = status(upgrades, "crystal_sklearn")
        done = sum(now["shadow_pairs"][key] - before[key] for key in now["shadow_pairs"])
        if done >= len(rows):
            break
        time.sleep(0.2)
    assert now["shadow_pairs"]["compared"] - before["compared"] == len(rows), now
    assert now["shadow_pairs"]["skipped"] == before["skipped"], now
    assert now["agreement"] == pytest.approx(0.75, abs=1e-9), now
    assert now["largest_score_difference"] == pytest.approx(1.0, abs=1e-6), now
    assert now["rolled_back"] is None and now["candidate"]["error_rate"] == 0.0
    metrics = fresh_metrics(upgrades)
    assert 'modelserver_shadow_agreement_ratio{model="crystal_sklearn"} 0.75' in metrics
    health = requests.get(upgrades.health_url, timeout=10).json()["traffic"]["crystal_sklearn"]
    assert health["versions"] == ["1", "2"] and health["shadow"] == 100 and health["agreement"] == 0.75
    traffic(upgrades, "crystal_sklearn", shadow=0)


def test_the_shadow_share_is_of_the_requests_the_primary_answers_whatever_the_canary(
    upgrades: Launcher,
) -> None:
    traffic(upgrades, "crystal_sklearn", canary=50, shadow=50)
    before = status(upgrades, "crystal_sklearn")["shadow_pairs"]
    session = requests.Session()
    versions = Counter(
        session.post(f"{upgrades.url}{ROUTE}", json={"crystalData": AGREEING_ROWS}, timeout=30).headers[
            VERSION_HEADER
        ]
        for _ in range(400)
    )
    time.sleep(1.0)  # the last mirrors compared
    now = status(upgrades, "crystal_sklearn")["shadow_pairs"]
    mirrored = sum(now[key] - before[key] for key in now)
    # Half of the primary's answers, within 5 standard deviations of Binomial(n, 0.5).
    primary = versions["1"]
    assert abs(mirrored - primary / 2) <= 5 * math.sqrt(primary * 0.25), (versions, mirrored)
    traffic(upgrades, "crystal_sklearn", canary=0, shadow=0)


def test_a_candidate_failing_every_request_is_rolled_back_with_no_client_error(upgrades: Launcher) -> None:
    answers = [
        post(upgrades, "/predictions/crystal_fragile", {"crystalData": [AGREEING_ROWS[i % 2]]})
        for i in range(40)
    ]
    assert [a.status_code for a in answers] == [200] * 40
    assert {a.headers[VERSION_HEADER] for a in answers} == {"1"}
    deadline = time.monotonic() + 20
    while (now := status(upgrades, "crystal_fragile"))["rolled_back"] is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert now["rolled_back"] and "5xx" in now["rolled_back"], now
    assert now["shadow"] == 0 and now["canary"] == 0 and now["rollbacks"] == 1
    metrics = fresh_metrics(upgrades)
    assert 'modelserver_traffic_rolled_back{model="crystal_fragile"} 1' in metrics
    assert "rolled back to its primary" in upgrades.log_tail(200)
    pairs = now["shadow_pairs"]
    for i in range(10):
        assert post(upgrades, "/predictions/crystal_fragile", {"crystalData": [AGREEING_ROWS[i % 2]]}).ok
    time.sleep(1.5)
    assert status(upgrades, "crystal_fragile")["shadow_pairs"] == pairs  # no more shadow requests


def test_promotion_sends_everything_to_the_candidate_and_rollback_takes_it_back(upgrades: Launcher) -> None:
    promoted = traffic(upgrades, "crystal_sklearn", promote=1)
    assert promoted["promoted"] and promoted["canary"] == 100
    assert {ask(upgrades, DISAGREEING_ROWS).headers[VERSION_HEADER] for _ in range(30)} == {"2"}
    rolled = traffic(upgrades, "crystal_sklearn", rollback=1)
    assert rolled["canary"] == 0 and rolled["rolled_back"] == "by the operator"
    assert {ask(upgrades, DISAGREEING_ROWS).headers[VERSION_HEADER] for _ in range(30)} == {"1"}


def test_a_candidate_that_cannot_load_gets_no_traffic_and_never_holds_its_model_back(
    upgrades: Launcher,
) -> None:
    health = requests.get(upgrades.health_url, timeout=10)
    assert health.status_code == 200, health.text
    assert health.json()["models"]["crystal_unloadable__candidate"] != "ready"
    now = status(upgrades, "crystal_unloadable")
    assert now["canary"] == 0 and "not ready" in now["rolled_back"], now
    answers = [
        post(upgrades, "/predictions/crystal_unloadable", {"crystalData": AGREEING_ROWS}) for _ in range(20)
    ]
    assert {(a.status_code, a.headers[VERSION_HEADER]) for a in answers} == {(200, "1")}

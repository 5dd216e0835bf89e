"""/healthcheck and the model routes keep answering while a crowd polls one of the pages the
launcher makes: /metrics, the API's documents (/openapi.json, /docs) or the Open Inference
health page. Every probe, each on a new connection as a kubelet sends it, is a 200 within 1 s,
and the crowd gets the page or Envoy's JSON 503 with Retry-After, nothing else."""

from __future__ import annotations

import time
from collections import Counter

import pytest
import requests

from load_tests.kit.floods import page_crowd, probe_for
from load_tests.kit.routes import BRIEF_ROWS
from load_tests.kit.stack import Launcher

FLOOD_CLIENTS = 128
FLOOD_S = 10.0


@pytest.mark.parametrize("page", ["/metrics", "/openapi.json", "/v2/health/ready"])
def test_probes_answer_in_time_while_a_page_is_flooded(crystal_stack: Launcher, page: str) -> None:
    def probe() -> requests.Response:
        health = requests.get(f"{crystal_stack.url}/healthcheck", timeout=2, headers={"Connection": "close"})
        if health.status_code != 200:
            return health
        body = {"crystalData": BRIEF_ROWS[:1]}
        return requests.post(
            f"{crystal_stack.url}/sklearn", json=body, timeout=2, headers={"Connection": "close"}
        )

    url = crystal_stack.metrics_url if page == "/metrics" else f"{crystal_stack.url}{page}"
    with page_crowd(url, FLOOD_CLIENTS, FLOOD_S) as crowd:
        time.sleep(1.0)  # let the crowd arrive
        probes = probe_for(FLOOD_S - 2, 0.25, probe, lambda r: r.status_code == 200)
    print(
        f"{page}: /healthcheck and /sklearn: {probes.answered} of {probes.total} probes answered 200 "
        f"within 1 s; the crowd: {dict(crowd.statuses)}, {crowd.right_answers} right answers"
    )
    assert probes.total >= 15 and not probes.failures, probes.failures
    assert not crowd.failures, Counter(crowd.failures).most_common(5)
    assert crowd.right_answers > 0
    assert crowd.refusals_as_json_with_retry_after == crowd.statuses[503]
    assert requests.get(f"{crystal_stack.url}/healthcheck", timeout=5).status_code == 200

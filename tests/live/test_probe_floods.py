"""/healthcheck keeps answering while a crowd polls /metrics: every probe, each on a new
connection as a kubelet sends it, is a 200 within 1 s, and the crowd gets Prometheus text or
Envoy's JSON 503 with Retry-After, nothing else."""

from __future__ import annotations

import time
from collections import Counter

import requests

from load_tests.kit.floods import metrics_crowd, probe_for
from load_tests.kit.stack import Launcher

FLOOD_CLIENTS = 128
FLOOD_S = 10.0


def test_health_probes_answer_in_time_while_metrics_is_flooded(crystal_stack: Launcher) -> None:
    def health() -> requests.Response:
        return requests.get(f"{crystal_stack.url}/healthcheck", timeout=2, headers={"Connection": "close"})

    with metrics_crowd(crystal_stack.metrics_url, FLOOD_CLIENTS, FLOOD_S) as crowd:
        time.sleep(1.0)  # let the crowd arrive
        probes = probe_for(FLOOD_S - 2, 0.25, health, lambda r: r.status_code == 200)
    print(
        f"/healthcheck: {probes.answered} of {probes.total} probes answered 200 within 1 s; "
        f"/metrics: {dict(crowd.statuses)}, {crowd.prometheus_answers} Prometheus answers"
    )
    assert probes.total >= 20 and not probes.failures, probes.failures
    assert not crowd.failures, Counter(crowd.failures).most_common(5)
    assert crowd.prometheus_answers > 0
    assert crowd.refusals_as_json_with_retry_after == crowd.statuses[503]
    assert requests.get(f"{crystal_stack.url}/healthcheck", timeout=5).status_code == 200

"""One client holding 1,100 idle connections (reopening each one the server closes) shuts no one
else out: health probes and model requests from others, each on a new connection, are answered
right within 1 s throughout. Loopback only, bounded in time."""

from __future__ import annotations

import json

import pytest
import requests

from load_tests.kit.floods import Probes, idle_connections, probe_for
from load_tests.kit.routes import BRIEF_ROWS, crystal_answer_is_right
from load_tests.kit.stack import Launcher
from modelserver.launcher.envoy.config import FIRST_BYTES_TIMEOUT_S
from modelserver.launcher.processes import raise_open_files_limit

IDLE_CONNECTIONS = 1100
FLOOD_S = 2 * FIRST_BYTES_TIMEOUT_S + 2  # long enough for the server to close idle ones twice


def crystal_right(response: requests.Response) -> bool:
    """A 200 with the crystal answer to BRIEF_ROWS."""
    return response.status_code == 200 and crystal_answer_is_right(
        {"crystalData": BRIEF_ROWS}, response.json()
    )


def test_idle_connections_from_one_client_shut_no_one_out(stack: Launcher) -> None:
    if raise_open_files_limit(IDLE_CONNECTIONS + 256) < IDLE_CONNECTIONS + 256:
        pytest.skip(f"this machine's hard limit of open files is below {IDLE_CONNECTIONS + 256}")
    body = json.dumps({"crystalData": BRIEF_ROWS})

    def health() -> requests.Response:
        return requests.get(f"{stack.url}/healthcheck", timeout=2, headers={"Connection": "close"})

    def model() -> requests.Response:
        headers = {"Connection": "close", "Content-Type": "application/json"}
        return requests.post(f"{stack.url}/sklearn", data=body, headers=headers, timeout=2)

    with idle_connections(stack.ports.public, IDLE_CONNECTIONS) as flood:
        probes: dict[str, Probes] = {}
        # The two kinds of probe take turns: 4 a second together, for the whole flood.
        probes["health"] = probe_for(FLOOD_S / 2, 0.25, health, lambda r: r.status_code == 200)
        probes["model"] = probe_for(FLOOD_S / 2, 0.25, model, crystal_right)
    for name, outcome in probes.items():
        assert outcome.total >= 10 and not outcome.failures, (name, outcome.failures[:10], outcome.total)
    assert flood.held_at_most >= IDLE_CONNECTIONS, flood
    # Connections that sent nothing were closed after FIRST_BYTES_TIMEOUT_S, and reopened.
    assert flood.closed_by_server >= IDLE_CONNECTIONS, flood

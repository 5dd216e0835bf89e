"""Load on the public crystal routes, through Envoy, as droids would send it.

    .venv/bin/locust -f load_tests/locustfile.py --headless -u 16 -r 16 -t 30s --host http://localhost:3000

Every answer is checked, not only its status: a 200 with the wrong shape counts as a failure.
"""

from __future__ import annotations

import random
from typing import Any

from locust import FastHttpUser, constant, task

ROWS = [[0.92, 0.12, 0.31, 0.09], [0.31, 0.54, 0.78, 0.17], [0.38, 0.04, 0.21, 0.98]]
LABELS = {"blue", "green", "yellow"}


def well_formed(answer: Any, rows: int) -> bool:
    """The brief's shape: one label and one score per label for every row."""
    return (
        isinstance(answer, dict)
        and len(answer.get("prediction", [])) == rows
        and len(answer.get("scores", [])) == rows
        and set(answer["prediction"]) <= LABELS
    )


class Droid(FastHttpUser):
    """A Gonk droid (one model) or an astromech (chooses per request)."""

    wait_time = constant(0)

    def _post(self, path: str, body: dict[str, Any], name: str) -> None:
        rows = len(body["crystalData"])
        with self.client.post(path, json=body, name=name, catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}")
            elif not well_formed(response.json(), rows):
                response.failure("malformed answer")

    @task(4)
    def sklearn_one_row(self) -> None:
        """The common case: one sample per request."""
        self._post("/sklearn", {"crystalData": [random.choice(ROWS)]}, "/sklearn")

    @task(4)
    def pytorch_one_row(self) -> None:
        """The same on the PyTorch model."""
        self._post("/pytorch", {"crystalData": [random.choice(ROWS)]}, "/pytorch")

    @task(2)
    def astromech_batch(self) -> None:
        """An astromech sending a batch and choosing its model."""
        body = {"crystalData": ROWS, "model": random.choice(["sklearn", "pytorch"])}
        self._post("/astromech", body, "/astromech")

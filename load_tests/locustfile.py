"""Load on the public crystal routes, through Envoy, as droids would send it.

    .venv/bin/locust -f load_tests/locustfile.py --headless -u 16 -r 16 -t 30s --host http://localhost:3000

Every answer is checked, not only its status (the kit's crystal check): a 200 with the wrong
shape counts as a failure. Run from the project's root, so that `load_tests` imports.
"""

from __future__ import annotations

import random
from typing import Any

from locust import FastHttpUser, constant, task

from load_tests.kit.routes import BRIEF_ROWS, answer_failure, crystal_answer_is_right


class Droid(FastHttpUser):
    """A Gonk droid (one model) or an astromech (chooses per request)."""

    wait_time = constant(0)

    def _post(self, path: str, body: dict[str, Any], name: str) -> None:
        with self.client.post(path, json=body, name=name, catch_response=True) as response:
            failure = answer_failure(crystal_answer_is_right, body, response.status_code, response.content)
            if failure:
                response.failure(failure)

    @task(4)
    def sklearn_one_row(self) -> None:
        """The common case: one sample per request."""
        self._post("/sklearn", {"crystalData": [random.choice(BRIEF_ROWS)]}, "/sklearn")

    @task(4)
    def pytorch_one_row(self) -> None:
        """The same on the PyTorch model."""
        self._post("/pytorch", {"crystalData": [random.choice(BRIEF_ROWS)]}, "/pytorch")

    @task(2)
    def astromech_batch(self) -> None:
        """An astromech sending a batch and choosing its model."""
        body = {"crystalData": BRIEF_ROWS, "model": random.choice(["sklearn", "pytorch"])}
        self._post("/astromech", body, "/astromech")

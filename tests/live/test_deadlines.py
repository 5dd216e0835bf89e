"""Deadlines on the live stack: Envoy stamps each request to a model with when it arrived and
how long its route waits (replacing whatever a client sent), and a worker that gets a request
after that wait answers 504 without computing it, counted in `ExpiredRequests`."""

from __future__ import annotations

import json
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread
from typing import ClassVar

import requests

from load_tests.kit.routes import BRIEF_ROWS
from load_tests.kit.stack import Launcher
from modelserver.serving.deadlines import ARRIVED_HEADER, WAIT_HEADER
from modelserver.serving.headers import HANDLER_ANSWER
from tests.live.test_envoy_edges import envoy_alone
from tests.live.test_metrics_and_scaling import scrape, value, wait_for


class RecordingUpstream(BaseHTTPRequestHandler):
    """A TorchServe stand-in that keeps the headers of each request it gets."""

    seen: ClassVar[list[dict[str, str]]] = []

    def do_POST(self) -> None:  # pylint: disable=invalid-name
        """Record, answer a crystal-shaped 200."""
        self.rfile.read(int(self.headers.get("content-length", 0)))
        type(self).seen.append({k.lower(): v for k, v in self.headers.items()})
        data = json.dumps({"prediction": ["green"]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header(HANDLER_ANSWER, "1")  # a handler's answer: Envoy never retries it
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # pylint: disable=redefined-builtin
        """Quiet."""


def test_envoy_stamps_the_arrival_and_the_routes_wait(tmp_path: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), RecordingUpstream)
    Thread(target=server.serve_forever, daemon=True).start()
    try:
        with envoy_alone(tmp_path, server.server_address[1]) as url:
            before_ms = time.time() * 1000
            forged = {ARRIVED_HEADER: "1", WAIT_HEADER: "1"}
            reply = requests.post(
                f"{url}/sklearn", json={"crystalData": BRIEF_ROWS}, headers=forged, timeout=10
            )
            after_ms = time.time() * 1000
    finally:
        server.shutdown()
    assert reply.status_code == 200, reply.text
    [headers] = RecordingUpstream.seen
    # Milliseconds since the epoch, taken when Envoy got the request; the client's are gone.
    assert before_ms - 5 <= int(headers[ARRIVED_HEADER]) <= after_ms + 5, headers
    assert headers[WAIT_HEADER] == "15000"


def test_a_request_reaching_the_worker_after_its_wait_is_504_and_counted(stack: Launcher) -> None:
    """Sent to TorchServe directly (as Envoy would send a request that queued 20 s on a 15 s
    route): the worker answers 504 at once and counts it; a fresh one is computed."""
    model = "crystal_sklearn"
    before = value(scrape(stack), "ExpiredRequests_total", ModelName=model)
    url = f"http://127.0.0.1:{stack.ports.inference}/predictions/{model}"
    key = {"Authorization": f"Bearer {stack.tokens().inference}"}
    now_ms = int(time.time() * 1000)
    late = requests.post(
        url,
        json={"crystalData": BRIEF_ROWS},
        headers={**key, ARRIVED_HEADER: str(now_ms - 20_000), WAIT_HEADER: "15000"},
        timeout=30,
    )
    assert late.status_code == 504, late.text
    assert late.json()["code"] == 504 and "not computed" in late.json()["error"]
    fresh = requests.post(
        url,
        json={"crystalData": BRIEF_ROWS},
        headers={**key, ARRIVED_HEADER: str(int(time.time() * 1000)), WAIT_HEADER: "15000"},
        timeout=30,
    )
    assert fresh.status_code == 200 and len(fresh.json()["prediction"]) == len(BRIEF_ROWS), fresh.text
    wait_for(lambda: value(scrape(stack), "ExpiredRequests_total", ModelName=model) == before + 1)

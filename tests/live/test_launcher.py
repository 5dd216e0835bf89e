"""The launcher as a user runs it: health before the models load, a graceful stop, no leftovers."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import psutil
import requests

from load_tests.kit.routes import BRIEF_ROWS
from load_tests.kit.stack import Launcher


def first_health_answer(launcher: Launcher, timeout_s: float = 120.0) -> requests.Response:
    """The first answer of the launcher's health endpoint, polled from the moment it starts."""
    url = f"http://127.0.0.1:{launcher.ports.health}/healthcheck"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert launcher.process is not None and launcher.process.poll() is None, launcher.log_tail()
        try:
            return requests.get(url, timeout=5)
        except requests.RequestException:
            time.sleep(0.02)
    raise TimeoutError(launcher.log_tail())


def read_response(sock: socket.socket) -> tuple[int, dict[str, object]]:
    """Read one HTTP/1.1 response with a Content-Length body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed early: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    while len(body) < int(headers["content-length"]):
        body += sock.recv(65536)
    return int(lines[0].split()[1]), json.loads(body)


def send_until_refused(url: str, answered: list[int]) -> None:
    """POST /sklearn in a loop (new connections too, as Envoy closes them while draining) until
    the listener is gone; note each status received."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            reply = requests.post(f"{url}/sklearn", json={"crystalData": BRIEF_ROWS}, timeout=30)
        except requests.ConnectionError as error:
            if "refused" in str(error).lower():
                return  # the listener is closed: nothing was accepted
            reply = None  # accepted, then dropped
        answered.append(reply.status_code if reply is not None else -1)


def stop_with_requests_in_flight(launcher: Launcher) -> None:
    """SIGTERM the launcher with requests in flight; each one gets its answer, and /healthcheck
    turns 503 while Envoy drains."""
    assert launcher.process is not None
    # A request in flight when SIGTERM arrives: headers and half the body sent before it.
    body = json.dumps({"crystalData": BRIEF_ROWS}).encode()
    sock = socket.create_connection(("127.0.0.1", launcher.ports.public), timeout=30)
    sock.sendall(
        b"POST /pytorch HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body[:20]
    )
    # And clients that keep sending through the stop: each request Envoy accepted is answered.
    answered: list[int] = []
    traffic = threading.Thread(target=send_until_refused, args=(launcher.url, answered))
    traffic.start()
    time.sleep(0.3)
    launcher.process.terminate()
    time.sleep(1.0)
    stopping = requests.get(f"http://127.0.0.1:{launcher.ports.health}/healthcheck", timeout=5)
    assert stopping.status_code == 503 and "shutting down" in stopping.json()["error"]
    sock.sendall(body[20:])
    status, payload = read_response(sock)
    sock.close()
    assert status == 200, payload
    assert len(payload["prediction"]) == 3
    traffic.join(timeout=60)
    # Every request while the listener was open got its answer. Only a connection that races
    # the listener's close (still in the kernel's accept queue) may be reset, and then it is the
    # last one: the next is refused.
    served = answered[:-1] if answered and answered[-1] == -1 else answered
    assert len(served) > 10 and set(served) == {200}, answered


def test_start_serve_and_stop_gracefully(tmp_path: Path) -> None:
    # fill_mask's default (bert-base-uncased) cannot be fetched: offline, empty Hub cache.
    launcher = Launcher(tmp_path, models=("crystal_sklearn", "crystal_pytorch", "fill_mask")).start()
    try:
        early = first_health_answer(launcher)
        assert early.status_code == 503, "never healthy before every model can answer"
        assert "crystal_sklearn" in early.json()["error"] or "crystal_pytorch" in early.json()["error"]
        launcher.wait_healthy()
        healthy = requests.get(f"{launcher.url}/healthcheck", timeout=10).json()
        assert healthy["skipped"] == ["camembert", "fill_mask", "sentiment", "topics"]
        assert "cannot fetch bert-base-uncased" in healthy["models"]["fill_mask"]
        for path in ("/inference", "/predictions/fill_mask"):
            missing = requests.post(f"{launcher.url}{path}", json={"text": "a [MASK]"}, timeout=10)
            assert missing.status_code == 503 and missing.headers["retry-after"]
            assert "fill_mask" in missing.json()["error"] and "FILL_MASK_MODEL" in missing.json()["error"]
        answer = requests.post(
            f"{launcher.url}/astromech", json={"crystalData": BRIEF_ROWS, "model": "sklearn"}, timeout=10
        )
        assert answer.status_code == 200 and len(answer.json()["prediction"]) == 3
        assert launcher.process is not None
        tree = [launcher.process, *psutil.Process(launcher.process.pid).children(recursive=True)]
        names = " ".join(" ".join(p.cmdline()) for p in tree[1:])
        assert "envoy" in names and "java" in names and "model_service_worker" in names

        stop_with_requests_in_flight(launcher)

        assert launcher.process.wait(timeout=60) == 0, launcher.log_tail()
        gone, alive = psutil.wait_procs(tree, timeout=10)
        assert not alive, f"left running: {[p.pid for p in alive]}"
        assert len(gone) == len(tree)
        for port in (launcher.ports.public, launcher.ports.inference, launcher.ports.management):
            with socket.socket() as probe:
                assert probe.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still open"
    finally:
        launcher.stop()

"""What Envoy answers by itself: unknown paths, wrong methods, big bodies, a dead upstream."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
import requests

from load_tests.kit.routes import BRIEF_ROWS
from load_tests.kit.stack import Launcher, free_ports
from modelserver.catalogue import Catalogue
from modelserver.errors import ErrorType, InvalidInput, error_response
from modelserver.kinds.text import TextModelSettings
from modelserver.launcher.envoy import config as envoy_config_module
from modelserver.launcher.envoy.config import render_config
from modelserver.launcher.envoy.process import envoy_binary
from modelserver.launcher.envoy.routes import RouteTable
from modelserver.launcher.settings import LaunchSettings, Ports
from modelserver.serving.headers import HANDLER_ANSWER
from tests.helpers import check_json_error


@pytest.mark.parametrize("path", ["/", "/nothing", "/sklearn/extra", "/predictions", "/docs/../ping"])
def test_unknown_paths_are_404_json(stack: Launcher, path: str) -> None:
    check_json_error(requests.get(f"{stack.url}{path}", timeout=10), 404, ErrorType.NOT_FOUND)


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/sklearn", "POST"),
        ("PUT", "/pytorch", "POST"),
        ("DELETE", "/astromech", "POST"),
        ("GET", "/predictions/crystal_sklearn", "POST"),
        ("POST", "/healthcheck", "GET"),
    ],
)
def test_wrong_methods_are_405_json_with_allow(stack: Launcher, method: str, path: str, allow: str) -> None:
    response = requests.request(method, f"{stack.url}{path}", timeout=10)
    check_json_error(response, 405, ErrorType.METHOD_NOT_ALLOWED)
    assert response.headers["allow"] == allow


def test_bodies_over_one_mebibyte_are_413_json(stack: Launcher) -> None:
    row = "[0.92, 0.12, 0.31, 0.09],"
    body = '{"crystalData": [' + row * (1_100_000 // len(row)) + "[0.1, 0.2, 0.3, 0.4]]}"
    check_json_error(requests.post(f"{stack.url}/sklearn", data=body, timeout=30), 413, ErrorType.TOO_LARGE)
    small = '{"crystalData": [' + row * 5000 + "[0.1, 0.2, 0.3, 0.4]]}"
    assert requests.post(f"{stack.url}/sklearn", data=small, timeout=30).status_code == 200


def test_an_unknown_model_on_the_generic_path_is_404_json(stack: Launcher) -> None:
    body = check_json_error(requests.post(f"{stack.url}/predictions/nope", json={}, timeout=10), 404)
    assert "nope" in str(body["error"])


def test_the_generic_path_serves_catalogue_models(stack: Launcher) -> None:
    response = requests.post(
        f"{stack.url}/predictions/crystal_sklearn", json={"crystalData": BRIEF_ROWS}, timeout=10
    )
    assert response.status_code == 200 and len(response.json()["prediction"]) == 3


@pytest.mark.parametrize(
    "path",
    [
        "/ping",
        "/models",
        "/api-description",
        "/workflows",
        "/token",
        "/stats",
        "/clusters",
        "/server_info",
        "/config_dump",
        "/quitquitquit",
        "/drain_listeners",
        "/explanations/crystal_sklearn",
        # TorchServe's own KServe v1 path (the public /v2 routes are ours, tests/live/test_real_clients.py).
        "/v1/models/crystal_sklearn:predict",
    ],
)
def test_internal_endpoints_are_not_reachable_through_the_public_port(stack: Launcher, path: str) -> None:
    for method in ("GET", "POST"):
        response = requests.request(method, f"{stack.url}{path}", timeout=10)
        assert response.status_code in (404, 405), (method, path, response.text)
        check_json_error(response, response.status_code)


def test_clients_cannot_smuggle_their_own_token(stack: Launcher) -> None:
    response = requests.post(
        f"{stack.url}/sklearn",
        json={"crystalData": BRIEF_ROWS},
        headers={"Authorization": "Bearer forged"},
        timeout=10,
    )
    assert response.status_code == 200


class FakeTorchServe(BaseHTTPRequestHandler):
    """Answers like TorchServe does when it fails: its own `{"code","type","message"}` JSON."""

    MESSAGE = 'Model "x" \\ said: "no", {twice}'
    STATUS = 500

    def do_POST(self) -> None:  # pylint: disable=invalid-name
        """Every prediction fails the TorchServe way."""
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.answer(
            self.STATUS, {"code": self.STATUS, "type": "InternalServerException", "message": self.MESSAGE}
        )

    def answer(self, status: int, body: dict[str, Any]) -> None:
        """Send `body` as JSON with `status`."""
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("x-request-id", "2f9c4c1e-0d7a-4c1b-9a56-2b1e0c3d4e5f")  # as TorchServe's
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # pylint: disable=redefined-builtin
        """Quiet."""


def port_open(port: int) -> bool:
    """Whether something accepts connections on the loopback `port`."""
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def envoy_alone(tmp_path: Path, upstream: int, token: str = "token") -> Iterator[str]:
    """Envoy with the project's config, its TorchServe upstream at `upstream` (given `token`)."""
    ports = free_ports(3)
    public, health, prometheus = ports[0], ports[1], ports[2]
    settings = LaunchSettings(
        listen_address="127.0.0.1",
        runtime_dir=tmp_path,
        ports=Ports(public=public, inference=upstream, health=health, prometheus=prometheus),
    )
    (tmp_path / "envoy").mkdir()
    config = tmp_path / "envoy.yaml"
    config.write_text(render_config(settings, token, RouteTable(Catalogue.load(), {})))
    command = [envoy_binary(), "-c", str(config), "--disable-hot-restart"]
    with (
        (tmp_path / "envoy.log").open("wb") as log,
        subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT) as envoy,
    ):
        try:
            deadline = time.monotonic() + 20
            while not port_open(public):
                assert envoy.poll() is None and time.monotonic() < deadline, "envoy did not start"
                time.sleep(0.1)
            yield f"http://127.0.0.1:{public}"
        finally:
            envoy.terminate()


def test_a_key_torchserve_refuses_is_a_503_to_clients(stack: Launcher, tmp_path: Path) -> None:
    """Between a TorchServe restart (new keys) and Envoy's hot restart with the new key,
    TorchServe's 400 for a bad key is the server's own state, never the client's fault."""
    with envoy_alone(tmp_path, stack.ports.inference, token="not-the-key") as url:
        response = requests.post(f"{url}/sklearn", json={"crystalData": BRIEF_ROWS}, timeout=10)
        check_json_error(response, 503, ErrorType.UNAVAILABLE)
        assert response.headers["retry-after"] and "restarting" in response.json()["error"]


def test_a_dead_upstream_is_503_json_with_retry_after(tmp_path: Path) -> None:
    """Envoy with nothing behind it: every route answers a JSON 503, never a hang."""
    with envoy_alone(tmp_path, free_ports(1)[0]) as url:
        for path, body in [
            ("/sklearn", {"crystalData": BRIEF_ROWS}),
            ("/astromech", {"crystalData": BRIEF_ROWS, "model": "pytorch"}),
        ]:
            response = requests.post(f"{url}{path}", json=body, timeout=10)
            check_json_error(response, 503, ErrorType.UNAVAILABLE)
            assert response.headers["retry-after"]
        check_json_error(requests.get(f"{url}/healthcheck", timeout=10), 503)


class DeadWorkerTorchServe(FakeTorchServe):
    """TorchServe's answer for the requests of a batch whose worker died."""

    MESSAGE = "Worker died."
    STATUS = 507


class NoWorkerTorchServe(FakeTorchServe):
    """TorchServe's answer when no worker of the model is ready (scaled to 0, restarting)."""

    MESSAGE = 'Model "crystal_sklearn" has no worker to serve inference request. Please use scale workers API'
    STATUS = 503


class UnknownModelTorchServe(FakeTorchServe):
    """TorchServe's answer for a name it has no model of."""

    MESSAGE = "Model not found: nope"
    STATUS = 404


class MarkedAnswerTorchServe(FakeTorchServe):
    """An error our handler answered: its mark, its own JSON, passed on as it is."""

    def do_POST(self) -> None:  # pylint: disable=invalid-name
        """A 422 with the handler's mark."""
        self.rfile.read(int(self.headers.get("content-length", 0)))
        data = json.dumps(error_response(InvalidInput("crystalData[0] has 3 values"))[1]).encode()
        self.send_response(422)
        self.send_header("x-request-id", "1")
        self.send_header(HANDLER_ANSWER, "1")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.mark.parametrize(
    ("upstream", "path", "status", "error_type", "sentence"),
    [
        (
            FakeTorchServe,
            "/sklearn",
            500,
            "model_failure",
            "the worker of model crystal_sklearn stopped or failed",
        ),
        # 507 is no storage error: the worker died holding the batch; 503, retry.
        (
            DeadWorkerTorchServe,
            "/sklearn",
            503,
            "unavailable",
            "the worker of model crystal_sklearn stopped while",
        ),
        (NoWorkerTorchServe, "/astromech", 503, "unavailable", "model crystal_sklearn has no worker ready"),
        (
            UnknownModelTorchServe,
            "/predictions/nope",
            404,
            "not_found",
            "no model is served at /predictions/nope",
        ),
        (MarkedAnswerTorchServe, "/sklearn", 422, "invalid_input", "crystalData[0] has 3 values"),
    ],
)
def test_torchserves_own_errors_become_ours_and_the_handlers_pass_as_they_are(
    tmp_path: Path,
    upstream: type[FakeTorchServe],
    path: str,
    status: int,
    error_type: ErrorType,
    sentence: str,
) -> None:
    """TorchServe's sentences name its Java API ("use scale workers API"): clients get ours,
    naming the model; retried once first where the model never answered (tests/unit/test_routes)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), upstream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with envoy_alone(tmp_path, server.server_address[1]) as url:
            body = {"crystalData": BRIEF_ROWS, "model": "sklearn"}
            response = requests.post(f"{url}{path}", json=body, timeout=10)
            answer = check_json_error(response, status, error_type)
            assert answer["error"].startswith(sentence) and answer["code"] == status, answer
            assert (response.headers.get("retry-after") is not None) == (status == 503)
            assert HANDLER_ANSWER not in response.headers
    finally:
        server.shutdown()


class LosingTorchServe(FakeTorchServe):
    """Never answers its first request (a job TorchServe lost while scaling a worker down),
    then answers every other one."""

    calls: ClassVar[list[float]] = []
    release = threading.Event()

    def do_POST(self) -> None:  # pylint: disable=invalid-name
        """The first request hangs until released; the rest get a crystal answer."""
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.calls.append(time.monotonic())
        if len(self.calls) == 1:
            self.release.wait(60)
            return
        self.answer(200, {"prediction": ["blue"], "scores": [{"blue": 1.0, "green": 0.0, "yellow": 0.0}]})


def test_a_request_torchserve_never_answers_is_sent_once_and_answered_504_json(tmp_path: Path) -> None:
    """No try is abandoned and sent again for being slow (it would run twice): a job TorchServe
    lost gets Envoy's JSON 504 when the route's wait (15 s on /sklearn) runs out."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), LosingTorchServe)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with envoy_alone(tmp_path, server.server_address[1]) as url:
            started = time.monotonic()
            response = requests.post(f"{url}/sklearn", json={"crystalData": BRIEF_ROWS}, timeout=30)
            waited = time.monotonic() - started
            assert (
                check_json_error(response, 504, ErrorType.DEADLINE_EXCEEDED)["error"]
                == "the model did not answer in time"
            )
            assert len(LosingTorchServe.calls) == 1 and 14 < waited < 20, (LosingTorchServe.calls, waited)
    finally:
        LosingTorchServe.release.set()
        server.shutdown()


def test_the_api_documents_are_served(stack: Launcher) -> None:
    document = requests.get(f"{stack.url}/openapi.json", timeout=10)
    assert document.status_code == 200 and document.headers["content-type"].startswith("application/json")
    assert {"/sklearn", "/inference", "/predict", "/prediction"} <= set(document.json()["paths"])
    page = requests.get(f"{stack.url}/docs", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/openapi.json" in page.text
    check_json_error(requests.post(f"{stack.url}/docs", timeout=10), 405)


def test_an_overloaded_envoy_answers_our_json_with_retry_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Envoy with a heap limit below what it uses at start: its overload manager refuses every
    request, and the refusal is our JSON sentence with Retry-After, not "envoy overloaded"."""
    monkeypatch.setattr(envoy_config_module, "HEAP_LIMIT_BYTES", 1 << 20)
    with envoy_alone(tmp_path, free_ports(1)[0]) as url:
        deadline = time.monotonic() + 10
        while (response := requests.get(f"{url}/healthcheck", timeout=10)).status_code != 503:
            assert time.monotonic() < deadline, response.text  # the monitor reads every 0.25 s
            time.sleep(0.25)
        deadline = time.monotonic() + 10
        while "short of memory" not in response.text and time.monotonic() < deadline:
            response = requests.post(f"{url}/sklearn", json={"crystalData": BRIEF_ROWS}, timeout=10)
        body = check_json_error(response, 503, ErrorType.OVERLOADED)
        assert body["error"] == "the server is short of memory; retry shortly", body
        assert response.headers["retry-after"] == "1"


def test_a_language_model_route_refuses_a_body_beyond_its_character_caps(stack: Launcher) -> None:
    """/predictions/camembert takes at most what its character caps can need (the defaults:
    16,384 characters); a bigger body is a 413 naming that limit, and a body within it still
    reaches the model."""
    catalogue = Catalogue.load(stack.catalogue) if stack.catalogue else Catalogue.load()
    limit = RouteTable(catalogue, {}).body_limit("camembert")
    assert limit == TextModelSettings().max_body_bytes() < 1 << 20
    big = json.dumps({"text": "x" * limit})
    response = requests.post(f"{stack.url}/predictions/camembert", data=big, timeout=30)
    body = check_json_error(response, 413)
    assert f"{limit:,} bytes" in str(body["error"]), body
    crystal = check_json_error(
        requests.post(f"{stack.url}/sklearn", data=big + " " * (1 << 20), timeout=30), 413
    )
    assert "1,048,576 bytes" in str(crystal["error"])
    within = {"text": "Paris is the <mask> of France."}
    ok = requests.post(f"{stack.url}/predictions/camembert", json=within, timeout=30)
    assert ok.status_code == 200, ok.text

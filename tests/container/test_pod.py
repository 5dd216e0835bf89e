"""deploy/k8s's pod, run under Docker exactly as the manifest describes it.

The image's user, read-only root, dropped capabilities, no new privileges, emptyDirs as kubelet
makes them (root-owned, group fsGroup, mode 2777, sized), the ConfigMap's files read-only at
their subPaths, the env and the limits all come from deploy/k8s (tests/container/pod.py). Then:
the probes as the manifest defines them, the crystal routes' live tests against the pod's port,
the image's own HEALTHCHECK, and last the kubelet's stop: preStop, then SIGTERM with 16
requests in flight, each answered, exit 0 within the grace period.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import requests

from load_tests.kit.routes import BRIEF_ROWS
from modelserver.launcher.pages.metrics import IN_FLIGHT, QUEUE_SECONDS
from modelserver.project import PROJECT_ROOT
from modelserver.tools.serve_closure import requirement_names
from tests.container.pod import PodSpec, documents, network_namespace_of, probe_once, unique_name, wait_probe

# The crystal contract, run against the pod (only tests that speak HTTP to the public port).
from tests.live.test_crystal_api import (  # noqa: F401  pylint: disable=unused-import
    test_a_model_field_naming_the_other_model_is_400,
    test_anomalous_data_is_422_json,
    test_astromech_equals_the_direct_route,
    test_astromech_needs_a_known_model_first,
    test_astromech_with_a_known_model_and_bad_data_is_422,
    test_concurrent_good_and_bad_requests_keep_their_own_answers,
    test_json_is_understood_whatever_the_content_type,
    test_single_and_batch_predictions,
    test_the_two_models_are_different_models,
)
from tests.live.test_launcher import read_response, send_until_refused

# What the run measured (start-up, stop, image size), for the record: not asserted beyond the
# manifest's own budgets.
ARTIFACT = PROJECT_ROOT / "test-artifacts" / "container" / "pod.json"
STOPPED_IN_FLIGHT = 16
IMAGE_BUDGET_BYTES = 2_100_000_000  # 1.94 GB with the Debian-built base (docs/deployment.md)
HEALTHY_WAIT_S = 90  # the HEALTHCHECK runs every 15 s after the container starts


@dataclass
class Pod:
    """The running container: its manifest, name, public URL and start-up time."""

    spec: PodSpec
    docker: str
    name: str
    startup_s: float = 0.0
    measured: dict[str, float | int | str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """The public port, as the Service reaches it."""
        return f"http://127.0.0.1:{self.spec.port}"

    @property
    def metrics_url(self) -> str:
        """GET /metrics on the port Prometheus scrapes (the Deployment's annotation)."""
        annotations = documents("deployment.yaml")["Deployment"]["spec"]["template"]["metadata"][
            "annotations"
        ]
        return f"http://127.0.0.1:{annotations['prometheus.io/port']}{annotations['prometheus.io/path']}"

    def docker_cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """A docker command about this container."""
        return subprocess.run(
            [self.docker, *args], capture_output=True, text=True, timeout=timeout, check=False
        )

    def logs(self) -> str:
        """What the container printed."""
        done = self.docker_cli("logs", self.name)
        return done.stdout + done.stderr

    def inspect(self, template: str) -> str:
        """One field of `docker inspect`."""
        return self.docker_cli("inspect", "--format", template, self.name).stdout.strip()


@pytest.fixture(scope="module", name="pod")
def pod_fixture(docker: str, image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pod]:
    """The pod, started as the kubelet would, and passed its startup probe."""
    spec = PodSpec.from_manifests()
    folder = tmp_path_factory.mktemp("pod")
    as_root = os.geteuid() == 0
    spec.prepare(folder, as_root)
    pod = Pod(spec, docker, unique_name())
    started = pod.docker_cli(*spec.docker_run(image, pod.name, folder, own_network=as_root))
    try:
        assert started.returncode == 0, started.stderr
        pid = int(pod.inspect("{{.State.Pid}}"))
        joined = network_namespace_of(pid) if as_root else contextlib.nullcontext()
        with joined:
            try:
                pod.startup_s = wait_probe(spec, spec.container["startupProbe"])
            except AssertionError:
                pytest.fail(f"the startup probe never passed:\n{pod.logs()[-4000:]}", pytrace=False)
            yield pod
    finally:
        pod.measured.update(startup_s=round(pod.startup_s, 2), image=image)
        ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
        ARTIFACT.write_text(json.dumps(pod.measured, indent=2) + "\n", encoding="utf-8")
        pod.docker_cli("rm", "--force", pod.name)
        spec.release(folder)


@pytest.fixture(scope="module", name="stack")
def stack_fixture(pod: Pod) -> Pod:
    """The crystal live tests' stack: they only need its `url`."""
    return pod


def test_startup_readiness_and_liveness_probes_pass(pod: Pod) -> None:
    container = pod.spec.container
    startup = container["startupProbe"]
    assert pod.startup_s < startup["periodSeconds"] * startup["failureThreshold"]
    assert probe_once(pod.spec, container["readinessProbe"])
    assert probe_once(pod.spec, container["livenessProbe"])


def test_the_runtime_folder_is_a_private_subfolder_of_the_emptydir(pod: Pod) -> None:
    uid, _gid = pod.spec.user()
    (run_dir,) = [s["path"] for s in pod.spec.empty_dirs().values() if s["path"].endswith("/run")]
    listing = pod.docker_cli("exec", pod.name, "stat", "-c", "%u %g %a %n", run_dir, f"{run_dir}/uid-{uid}")
    assert listing.returncode == 0, listing.stderr
    volume, private = listing.stdout.splitlines()
    assert volume.split()[:3] == ["0", str(pod.spec.fs_group), "2777"], "kubelet's emptyDir"
    assert private.split()[0] == str(uid) and private.split()[2] == "700", private
    assert "runtime folder: " in pod.logs()


def test_the_root_filesystem_is_read_only_and_the_config_is_the_configmap(pod: Pod) -> None:
    write = pod.docker_cli("exec", pod.name, "touch", "/app/written")
    assert write.returncode != 0 and "Read-only file system" in write.stderr
    for key, path, _read_only in pod.spec.config_files():
        shown = pod.docker_cli("exec", pod.name, "cat", path)
        assert shown.stdout == pod.spec.configmap["data"][key], path


def test_hub_models_the_build_could_not_fetch_are_skipped_with_the_reason(pod: Pod) -> None:
    health = requests.get(f"{pod.url}/healthcheck", timeout=10)
    assert health.status_code == 200, health.text
    body = health.json()
    assert body["models"]["crystal_sklearn"] == "ready" and body["models"]["crystal_pytorch"] == "ready"
    for name in set(body.get("skipped", [])) & {"fill_mask", "camembert", "sentiment"}:
        assert "cannot fetch" in body["models"][name] or "not selected" in body["models"][name]


def test_the_image_stays_under_its_size_budget(pod: Pod, image: str) -> None:
    size = int(pod.docker_cli("image", "inspect", "--format", "{{.Size}}", image).stdout)
    pod.measured["image_bytes"] = size
    assert size <= IMAGE_BUDGET_BYTES, f"{size / 1e9:.2f} GB (docs/deployment.md lists the largest parts)"


def test_the_runtime_holds_no_build_tool(pod: Pod) -> None:
    """The archive build's packages (model archiver, NNCF, matplotlib) and pip stay in the
    builder stage; serving's own packages are all there."""
    script = "import importlib.metadata as m; print(*(d.metadata['Name'].lower() for d in m.distributions()))"
    listed = pod.docker_cli("exec", pod.name, "python", "-c", script)
    names = set(listed.stdout.split())
    assert not names & {"nncf", "matplotlib", "torch-model-archiver", "pip"}, names
    serve = {name.replace("_", "-") for name in requirement_names(PROJECT_ROOT / "requirements-serve.txt")}
    assert serve <= {name.replace("_", "-") for name in names}, serve - names


def gauge(text: str, name: str) -> float:
    """The value of an unlabelled gauge in Prometheus text."""
    (value,) = [line.split()[-1] for line in text.splitlines() if line.startswith(f"{name} ")]
    return float(value)


def test_metrics_carry_the_load_gauges_the_autoscaler_reads(pod: Pod) -> None:
    for _ in range(5):
        requests.post(f"{pod.url}/sklearn", json={"crystalData": BRIEF_ROWS}, timeout=10)
    assert requests.get(f"{pod.url}/metrics", timeout=10).status_code == 404, "not on the API's port"
    body = json.dumps({"crystalData": BRIEF_ROWS}).encode()
    held = [half_sent_request(pod.spec.port, body) for _ in range(6)]
    try:
        time.sleep(1.2)  # a new reading: one is shared for a second
        text = requests.get(pod.metrics_url, timeout=10).text
        assert gauge(text, IN_FLIGHT) >= len(held), "requests whose bodies are still arriving are in flight"
    finally:
        for sock in held:
            sock.close()
    series = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if not line.startswith("#")}
    # Their inputs (Envoy's active requests, TorchServe's queue counters) and the gauges.
    assert {
        "envoy_http_downstream_rq_active",
        "ts_queue_latency_microseconds",
        "ts_inference_requests_total",
    } <= series
    assert {IN_FLIGHT, QUEUE_SECONDS} <= series


def test_the_images_healthcheck_turns_healthy(pod: Pod) -> None:
    deadline = time.monotonic() + HEALTHY_WAIT_S
    while (status := pod.inspect("{{.State.Health.Status}}")) != "healthy" and time.monotonic() < deadline:
        assert status in {"starting", "healthy"}, pod.inspect("{{json .State.Health}}")
        time.sleep(2)
    assert status == "healthy", pod.inspect("{{json .State.Health}}")


def half_sent_request(url_port: int, body: bytes) -> socket.socket:
    """A request in flight: its headers and half its body sent."""
    sock = socket.create_connection(("127.0.0.1", url_port), timeout=60)
    sock.sendall(
        b"POST /sklearn HTTP/1.1\r\nHost: pod\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body[: len(body) // 2]
    )
    return sock


def test_prestop_then_sigterm_with_requests_in_flight_loses_none(pod: Pod) -> None:
    """The kubelet's stop: the preStop hook runs, then SIGTERM; the pod gets the grace period."""
    container, grace = pod.spec.container, pod.spec.pod["terminationGracePeriodSeconds"]
    answered: list[int] = []
    traffic = threading.Thread(target=send_until_refused, args=(pod.url, answered))
    traffic.start()
    terminating = time.monotonic()  # the grace period counts from here: preStop is part of it
    hook = pod.docker_cli("exec", pod.name, *container["lifecycle"]["preStop"]["exec"]["command"])
    assert hook.returncode == 0, hook.stderr

    body = json.dumps({"crystalData": BRIEF_ROWS}).encode()
    in_flight = [half_sent_request(pod.spec.port, body) for _ in range(STOPPED_IN_FLIGHT)]
    signalled = time.monotonic()
    assert pod.docker_cli("kill", "--signal", "TERM", pod.name).returncode == 0
    time.sleep(0.5)
    stopping = requests.get(f"{pod.url}/healthcheck", timeout=5)
    assert stopping.status_code == 503, stopping.text
    for sock in in_flight:
        sock.sendall(body[len(body) // 2 :])
    replies = [read_response(sock) for sock in in_flight]
    for sock in in_flight:
        sock.close()
    assert [status for status, _ in replies] == [200] * STOPPED_IN_FLIGHT, replies
    assert all(len(answer["prediction"]) == len(BRIEF_ROWS) for _, answer in replies)

    waited = pod.docker_cli("wait", pod.name, timeout=grace + 30)
    stopped_after, terminated_after = time.monotonic() - signalled, time.monotonic() - terminating
    pod.measured.update(
        stop_after_sigterm_s=round(stopped_after, 2),
        stop_after_prestop_s=round(terminated_after, 2),
        grace_period_s=grace,
    )
    traffic.join(timeout=60)
    logs = pod.logs()
    assert waited.stdout.strip() == "0", logs[-4000:]
    assert terminated_after < grace, f"{terminated_after:.1f} s of a {grace} s grace period"
    assert pod.inspect("{{.State.OOMKilled}}") == "false"
    assert "stopped" in logs and "killing it" not in logs, logs[-4000:]
    served = answered[:-1] if answered and answered[-1] == -1 else answered
    assert len(served) > 10 and set(served) == {200}, answered

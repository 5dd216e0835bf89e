"""/healthcheck against real worker states, and the fences around TorchServe."""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import requests

from load_tests.kit.routes import BRIEF_ROWS
from load_tests.kit.stack import Launcher


def health(stack: Launcher) -> tuple[int, dict[str, Any]]:
    """Status and JSON body of the public /healthcheck."""
    response = requests.get(f"{stack.url}/healthcheck", timeout=10)
    assert response.headers["content-type"].startswith("application/json")
    return response.status_code, response.json()


def wait_until(condition: Callable[[], bool], timeout_s: float = 60.0, every_s: float = 0.05) -> None:
    """Poll `condition` until it holds."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(every_s)


def test_healthy_names_every_model(stack: Launcher) -> None:
    status, body = health(stack)
    assert status == 200 and body["status"] == "Healthy"
    assert {"crystal_sklearn", "crystal_pytorch", "crystal_broken"} <= set(body["models"])


def test_a_model_scaled_to_zero_makes_the_service_unhealthy(stack: Launcher) -> None:
    scale = "/models/crystal_pytorch?min_worker={0}&max_worker={0}&synchronous=true"
    try:
        assert stack.management("PUT", scale.format(0)).status_code == 200
        wait_until(lambda: health(stack)[0] == 503)
        status, body = health(stack)
        assert status == 503 and "crystal_pytorch" in body["error"]
        assert body["models"]["crystal_sklearn"] == "ready"
        reply = requests.post(f"{stack.url}/pytorch", json={"crystalData": BRIEF_ROWS}, timeout=10)
        assert reply.status_code == 503 and "crystal_pytorch" in reply.json()["error"]
    finally:
        stack.management("PUT", scale.format(1))
    wait_until(lambda: health(stack)[0] == 200)


def test_a_dead_worker_makes_the_service_unhealthy_until_replaced(stack: Launcher) -> None:
    [version] = stack.management("GET", "/models/crystal_sklearn").json()
    [worker] = version["workers"]
    unhealthy: list[dict[str, Any]] = []

    def saw_503() -> bool:
        status, body = health(stack)
        if status == 503:
            unhealthy.append(body)
        return bool(unhealthy)

    os.kill(int(worker["pid"]), signal.SIGKILL)
    wait_until(saw_503, timeout_s=30)
    assert "crystal_sklearn" in unhealthy[0]["error"]
    assert unhealthy[0]["models"]["crystal_pytorch"] == "ready"
    wait_until(lambda: health(stack)[0] == 200, timeout_s=120, every_s=0.5)
    response = requests.post(f"{stack.url}/sklearn", json={"crystalData": BRIEF_ROWS}, timeout=10)
    assert response.status_code == 200


def test_torchserve_requires_its_tokens(stack: Launcher) -> None:
    inference = f"http://127.0.0.1:{stack.ports.inference}/predictions/crystal_sklearn"
    management = f"http://127.0.0.1:{stack.ports.management}/models"
    assert requests.post(inference, json={"crystalData": BRIEF_ROWS}, timeout=10).status_code in (400, 401)
    assert requests.get(management, timeout=10).status_code in (400, 401)
    wrong = {"Authorization": "Bearer wrong"}
    assert requests.get(management, headers=wrong, timeout=10).status_code in (400, 401)
    assert stack.management("GET", "/models").status_code == 200


def test_model_registration_is_off_even_for_a_valid_archive(stack: Launcher) -> None:
    """A real archive inside the store, with the management token: still refused (405)."""
    store = stack.workdir / "model_store"
    shutil.copy(store / "crystal_sklearn.mar", store / "copy.mar")
    for method, path in [
        ("POST", "/models?url=copy.mar&model_name=copy"),
        ("DELETE", "/models/crystal_sklearn"),
    ]:
        response = stack.management(method, path)
        assert response.status_code == 405, response.text
    names = {m["modelName"] for m in stack.management("GET", "/models").json()["models"]}
    assert "copy" not in names and {"crystal_sklearn", "crystal_pytorch"} <= names


def test_workflows_from_outside_the_model_store_are_refused(stack: Launcher, tmp_path: Path) -> None:
    """TorchServe 0.12 does not gate POST /workflows behind the model API: allowed_urls does."""
    workflow = tmp_path / "w.war"
    workflow.write_bytes(b"PK\x05\x06" + b"\0" * 18)
    for url in (f"file://{workflow}", "http://127.0.0.1:9/w.war"):
        response = stack.management("POST", f"/workflows?url={url}&workflow_name=w")
        assert response.status_code == 404, response.text
        assert "does not match any allowed URL" in response.json()["message"]
    assert stack.management("GET", "/workflows").json()["workflows"] == []


def listening(pid: int) -> set[tuple[str, int]]:
    """(address, port) pairs that a process and its children listen on."""
    process = psutil.Process(pid)
    found = set()
    for proc in [process, *process.children(recursive=True)]:
        for conn in proc.net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN:
                found.add((conn.laddr.ip, conn.laddr.port))
    return found


def is_loopback(address: str) -> bool:
    """127.0.0.0/8, ::1, or an IPv4-mapped loopback (how Java reports 127.0.0.1)."""
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


# Envoy's two listeners, on the launcher's listen address; every other port is loopback-only.
OUTWARD = ("public", "prometheus")


def test_only_envoys_ports_listen_beyond_loopback(stack: Launcher) -> None:
    assert stack.process is not None
    sockets = listening(stack.process.pid)
    ports = stack.ports
    internal = {port for name, port in ports.model_dump().items() if name not in OUTWARD}
    outward = {getattr(ports, name) for name in OUTWARD}
    assert internal | outward <= {port for _, port in sockets}
    for address, port in sockets:
        if port not in outward:
            assert is_loopback(address), (address, port, sorted(sockets))


def test_envoy_admin_is_a_private_unix_socket(stack: Launcher) -> None:
    admin = stack.runtime_dir / "envoy" / "admin.sock"
    assert stat.S_ISSOCK(admin.stat().st_mode)
    assert stat.S_IMODE(admin.stat().st_mode) & 0o077 == 0, oct(admin.stat().st_mode)
    [envoy] = [p for p in psutil.Process(stack.process.pid).children(recursive=True) if "envoy" in p.name()]
    tcp = {c.laddr.port for c in envoy.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
    assert tcp == {stack.ports.public, stack.ports.prometheus}, "the API and /metrics; admin on no TCP port"

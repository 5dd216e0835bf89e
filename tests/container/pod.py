"""The Kubernetes pod of deploy/k8s, run under Docker as the kubelet would run it.

Every fact comes from the manifests (deployment.yaml, configmap.yaml), none is restated here:
the user and group, fsGroup, read-only root, dropped capabilities, no new privileges, each
emptyDir as kubelet makes it (root-owned, group fsGroup, mode 2777; its sizeLimit as the size of
a tmpfs), the ConfigMap's files at their subPaths, the env, the memory and CPU limits, the
probes, the preStop hook and the grace period.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import yaml

from modelserver.project import PROJECT_ROOT

K8S = PROJECT_ROOT / "deploy" / "k8s"
QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?$")
UNITS = {
    None: 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


def quantity_bytes(value: str) -> int:
    """A Kubernetes memory quantity (`6Gi`, `512Mi`) in bytes."""
    match = QUANTITY.match(str(value))
    assert match, f"not a quantity: {value}"
    return int(float(match.group(1)) * UNITS[match.group(2)])


def cpu_cores(value: str | int | float) -> float:
    """A Kubernetes CPU quantity (`2`, `500m`) in cores."""
    text = str(value)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def documents(name: str) -> dict[str, Any]:
    """The resources of deploy/k8s/NAME, by kind."""
    found = yaml.safe_load_all((K8S / name).read_text(encoding="utf-8"))
    return {document["kind"]: document for document in found}


@dataclass(frozen=True)
class PodSpec:
    """The Deployment's pod template and the ConfigMap it mounts."""

    pod: dict[str, Any]
    configmap: dict[str, Any]

    @classmethod
    def from_manifests(cls) -> PodSpec:
        """Read deploy/k8s/deployment.yaml and configmap.yaml."""
        deployment = documents("deployment.yaml")["Deployment"]
        return cls(deployment["spec"]["template"]["spec"], documents("configmap.yaml")["ConfigMap"])

    @property
    def container(self) -> dict[str, Any]:
        """The one container of the pod."""
        (container,) = self.pod["containers"]
        return container

    @property
    def port(self) -> int:
        """The API's port: the one the Service sends clients to."""
        (service_port,) = documents("service.yaml")["Service"]["spec"]["ports"]
        return self.named_port(service_port["targetPort"])

    def named_port(self, port: int | str) -> int:
        """A probe's port: a number or the name of a container port."""
        if isinstance(port, int):
            return port
        (found,) = [p["containerPort"] for p in self.container["ports"] if p["name"] == port]
        return int(found)

    @property
    def fs_group(self) -> int:
        """The pod's fsGroup: the group of every emptyDir and a supplementary group."""
        return int(self.pod["securityContext"]["fsGroup"])

    def user(self) -> tuple[int, int]:
        """runAsUser and runAsGroup, the container's over the pod's."""
        merged = {**self.pod.get("securityContext", {}), **self.container.get("securityContext", {})}
        return int(merged["runAsUser"]), int(merged["runAsGroup"])

    def empty_dirs(self) -> dict[str, dict[str, Any]]:
        """Each emptyDir volume by name: its mount path and settings."""
        volumes = {v["name"]: v["emptyDir"] for v in self.pod["volumes"] if "emptyDir" in v}
        mounts = {m["name"]: m["mountPath"] for m in self.container["volumeMounts"] if m["name"] in volumes}
        return {name: {"path": mounts[name], **settings} for name, settings in volumes.items()}

    def config_files(self) -> list[tuple[str, str, bool]]:
        """(key, mount path, read-only) of every ConfigMap subPath mount."""
        volumes = {v["name"] for v in self.pod["volumes"] if "configMap" in v}
        return [
            (m["subPath"], m["mountPath"], bool(m.get("readOnly")))
            for m in self.container["volumeMounts"]
            if m["name"] in volumes
        ]

    def docker_run(self, image: str, name: str, folder: Path, own_network: bool) -> list[str]:
        """The `docker run` command line of this pod's container. `own_network`: a network
        namespace of its own with loopback alone, as a pod has (the test joins it; needs root).
        Otherwise the host's network: the pod's ports (8080, 3001) and its loopback ones
        (9070-9090) are then the host's, and must be free."""
        container = self.container
        context = container["securityContext"]
        uid, gid = self.user()
        network = "none" if own_network else "host"
        command = ["run", "--detach", "--name", name, "--network", network, "--user", f"{uid}:{gid}"]
        command += ["--group-add", str(self.fs_group)]
        if context.get("readOnlyRootFilesystem"):
            command.append("--read-only")
        for capability in context.get("capabilities", {}).get("drop", []):
            command += ["--cap-drop", capability]
        if context.get("allowPrivilegeEscalation") is False:
            command += ["--security-opt", "no-new-privileges"]
        command += self.volume_options(folder)
        for variable in container.get("env", []):
            command += ["--env", f"{variable['name']}={variable['value']}"]
        limits = container.get("resources", {}).get("limits", {})
        if "memory" in limits:  # and no swap beyond it, as the kubelet runs a container
            memory = str(quantity_bytes(limits["memory"]))
            command += ["--memory", memory, "--memory-swap", memory]
        if "cpu" in limits:
            command += ["--cpus", str(min(cpu_cores(limits["cpu"]), os.cpu_count() or 1))]
        command += ["--stop-timeout", str(self.pod["terminationGracePeriodSeconds"])]
        return [*command, image, *container.get("args", [])]

    def volume_options(self, folder: Path) -> list[str]:
        """`docker run` options of the emptyDirs and the ConfigMap's subPath files."""
        options: list[str] = []
        for volume, settings in self.empty_dirs().items():
            if (folder / volume).is_mount():
                # A tmpfs the test mounted itself: root's, group fsGroup, mode 2777, sized.
                options += ["--volume", f"{folder / volume}:{settings['path']}"]
            else:
                size = f",size={quantity_bytes(settings['sizeLimit'])}" if "sizeLimit" in settings else ""
                options += ["--tmpfs", f"{settings['path']}:rw,exec,mode=2777,gid={self.fs_group}{size}"]
        for key, path, read_only in self.config_files():
            options += ["--volume", f"{folder / 'config' / key}:{path}{':ro' if read_only else ''}"]
        return options

    def prepare(self, folder: Path, as_root: bool) -> None:
        """Lay out the volumes in `folder`: the ConfigMap's files, and each emptyDir as kubelet
        makes it. As root, an emptyDir is a tmpfs mounted here (size = sizeLimit, mode 2777,
        group fsGroup), exactly kubelet's folder; otherwise Docker's own tmpfs with those
        options (`docker_run` sees which by whether the folder is a mount point)."""
        config = folder / "config"
        config.mkdir(parents=True)
        for key, _path, _read_only in self.config_files():
            (config / key).write_text(self.configmap["data"][key], encoding="utf-8")
            (config / key).chmod(0o644)
        config.chmod(0o755)
        folder.chmod(0o755)
        if not as_root:
            return
        for volume, settings in self.empty_dirs().items():
            target = folder / volume
            target.mkdir()
            options = f"mode=2777,gid={self.fs_group},uid=0"
            if "sizeLimit" in settings:
                options += f",size={quantity_bytes(settings['sizeLimit'])}"
            subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], check=True)

    def release(self, folder: Path) -> None:
        """Unmount the tmpfs volumes `prepare` mounted."""
        for volume in self.empty_dirs():
            target = folder / volume
            if target.is_mount():
                subprocess.run(["umount", str(target)], check=False)


def probe_once(spec: PodSpec, probe: dict[str, Any]) -> bool:
    """One try of a probe as the kubelet makes it: httpGet succeeds on 200-399, tcpSocket on a
    connection, exec on exit 0 (run in the container by the caller)."""
    timeout = float(probe.get("timeoutSeconds", 1))
    if "httpGet" in probe:
        action = probe["httpGet"]
        url = f"http://127.0.0.1:{spec.named_port(action['port'])}{action['path']}"
        try:
            return 200 <= requests.get(url, timeout=timeout).status_code < 400
        except requests.RequestException:
            return False
    if "tcpSocket" in probe:
        try:
            with socket.create_connection(
                ("127.0.0.1", spec.named_port(probe["tcpSocket"]["port"])), timeout
            ):
                return True
        except OSError:
            return False
    raise AssertionError(f"probe kind not run here: {probe}")


def wait_probe(spec: PodSpec, probe: dict[str, Any]) -> float:
    """Run a probe as the kubelet does (every periodSeconds, up to failureThreshold failures)
    until it succeeds; returns the seconds it took, fails the test when the pod would have been
    restarted."""
    started = time.monotonic()
    time.sleep(float(probe.get("initialDelaySeconds", 0)))
    for _ in range(int(probe.get("failureThreshold", 3))):
        tried = time.monotonic()
        if probe_once(spec, probe):
            return time.monotonic() - started
        time.sleep(max(0.0, float(probe.get("periodSeconds", 10)) - (time.monotonic() - tried)))
    raise AssertionError(f"probe never passed within its budget: {probe}")


def unique_name() -> str:
    """A container name of this test run."""
    return f"modelserver-pod-{uuid.uuid4().hex[:8]}"


CLONE_NEWNET = 0x40000000


@contextlib.contextmanager
def network_namespace_of(pid: int) -> Iterator[None]:
    """Run this thread, and the threads it starts, in the network namespace of process `pid`
    (root only): 127.0.0.1 is then the pod's loopback. Restored on exit."""
    libc = ctypes.CDLL(None, use_errno=True)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns into the pod's network namespace failed")
        try:
            yield
        finally:
            if libc.setns(own, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back to the test's network namespace failed")
    finally:
        os.close(target)
        os.close(own)

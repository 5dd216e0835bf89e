"""The stack as a user runs it (`python -m modelserver.launcher`, what `make run` starts), in a
folder of its own on free loopback ports: the one launcher the tests, the benchmark, the soak
and the overload runs all start it with."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import requests
import yaml

from modelserver.launcher.settings import Ports
from modelserver.launcher.torchserve.keys import Tokens, read_key_file
from modelserver.project import PROJECT_ROOT


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports below Linux's ephemeral range (32768+), which outgoing
    connections use: a port picked there could be taken by a client before the server binds."""
    chosen: list[int] = []
    while len(chosen) < count:
        port = random.randint(20000, 32000)
        if port in chosen:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        chosen.append(port)
    return chosen


def stack_ports() -> Ports:
    """A full set of free ports for one stack."""
    names = list(Ports().model_dump())
    return Ports(**dict(zip(names, free_ports(len(names)), strict=True)))


def write_catalogue(
    path: Path,
    extra: Mapping[str, dict[str, Any]] | None = None,
    **sections: Mapping[str, dict[str, Any]],
) -> Path:
    """The project's catalogue plus `extra` entries and per-model overrides of its sections
    (`handler_config=`, `torchserve=`, `admission=`: model -> values), with every path made
    absolute."""
    catalogue = yaml.safe_load((PROJECT_ROOT / "models.yaml").read_text(encoding="utf-8"))
    catalogue["models"].update(extra or {})
    for section, per_model in sections.items():
        for name, overrides in per_model.items():
            catalogue["models"][name].setdefault(section, {}).update(overrides)
    for entry in catalogue["models"].values():
        entry["extra_files"] = [str(PROJECT_ROOT / f) for f in entry.get("extra_files", [])]
    path.write_text(yaml.safe_dump(catalogue), encoding="utf-8")
    return path


@dataclass
class Launcher:
    """`python -m modelserver.launcher` in a temporary folder, on free ports."""

    workdir: Path
    catalogue: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    models: tuple[str, ...] = ()
    options: tuple[str, ...] = ()  # more launcher options, e.g. ("--max-connections", "1024")
    ports: Ports = field(default_factory=stack_ports)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The public base URL (Envoy)."""
        return f"http://127.0.0.1:{self.ports.public}"

    @property
    def metrics_url(self) -> str:
        """GET /metrics here: the Prometheus port (Envoy), apart from the API."""
        return f"http://127.0.0.1:{self.ports.prometheus}/metrics"

    @property
    def health_url(self) -> str:
        """GET /healthcheck on the operations port (the kubelet's probes), apart from the API."""
        return f"http://127.0.0.1:{self.ports.prometheus}/healthcheck"

    @property
    def runtime_dir(self) -> Path:
        """Where the launcher keeps configs, keys and logs."""
        return self.workdir / "run"

    @property
    def log_file(self) -> Path:
        """The launcher's own output."""
        return self.workdir / "launcher.log"

    def command(self) -> list[str]:
        """The command line a user would type, with this instance's ports and folders."""
        ports = self.ports
        options = {
            "--listen-address": "127.0.0.1",
            "--port": ports.public,
            "--model-store": self.workdir / "model_store",
            "--runtime-dir": self.runtime_dir,
            "--startup-timeout": 200,
            "--unready-delay": 0.2,
            "--drain-timeout": 10,
        }
        command = [sys.executable, "-m", "modelserver.launcher"]
        for option, value in options.items():
            command += [option, str(value)]
        for name in Ports().model_dump():
            if name != "public":
                command += [f"--{name.replace('_', '-')}-port", str(getattr(ports, name))]
        if self.catalogue is not None:
            command += ["--catalogue", str(self.catalogue)]
        if self.models:
            command += ["--models", *self.models]
        return [*command, *self.options]

    def start(self) -> Launcher:
        """Start the launcher in the background."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        # Never download here: an empty Hub cache, offline, and no 20 Newsgroups download for
        # topics (TOPICS_DATA=files). Models come from folders and files.
        hub_home = self.workdir / "hf_home"
        offline = {"HF_HOME": str(hub_home), "HF_HUB_OFFLINE": "1", "TOPICS_DATA": "files"}
        env = {**os.environ, **offline, **self.env}
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(  # pylint: disable=consider-using-with
                self.command(),
                cwd=PROJECT_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def wait_healthy(self, timeout_s: float = 240.0) -> Launcher:
        """Block until the public /healthcheck answers 200."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"launcher exited:\n{self.log_tail()}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.url}/healthcheck", timeout=2).status_code == 200:
                    return self
            time.sleep(0.3)
        raise RuntimeError(f"stack not healthy in {timeout_s} s:\n{self.log_tail()}")

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM the launcher and wait for it; returns its exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            # TorchServe and Envoy run in sessions of their own: note them to clean up a hang.
            tree = psutil.Process(self.process.pid).children(recursive=True)
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                for process in [psutil.Process(self.process.pid), *tree]:
                    with contextlib.suppress(psutil.Error):
                        process.kill()
                self.process.wait()
        return self.process.returncode

    def log_tail(self, lines: int = 60) -> str:
        """The end of the launcher's log, for failure messages."""
        text = self.log_file.read_text(encoding="utf-8", errors="replace") if self.log_file.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def tokens(self) -> Tokens:
        """TorchServe's keys from the runtime folder."""
        return read_key_file(self.runtime_dir / "torchserve")

    def management(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """Call TorchServe's management API on loopback with the management key."""
        headers = {"Authorization": f"Bearer {self.tokens().management}"}
        return requests.request(
            method, f"http://127.0.0.1:{self.ports.management}{path}", headers=headers, timeout=30, **kwargs
        )


@contextlib.contextmanager
def running(launcher: Launcher, timeout_s: float = 240.0) -> Iterator[Launcher]:
    """Start a launcher, wait until healthy (at most `timeout_s`), and always stop it."""
    launcher.start()
    try:
        yield launcher.wait_healthy(timeout_s)
    finally:
        launcher.stop()


def component_of(pid: int, cmdline: Sequence[str], root_pid: int, workers: dict[int, str]) -> str:
    """Which part of the stack a process of the launcher's tree is."""
    if pid == root_pid:
        return "launcher"
    if pid in workers:
        return f"worker:{workers[pid]}"
    program = Path(cmdline[0]).name if cmdline else ""
    joined = " ".join(cmdline)
    rules = (
        ("model_service_worker" in joined, "worker:?"),
        (program == "java", "torchserve_java"),
        ("envoy" in program, "envoy"),
        ("torchserve" in joined, "torchserve_cli"),  # the Python CLI that runs Java in the foreground
    )
    return next((name for matched, name in rules if matched), f"other:{program or pid}")

"""Test helpers: free ports, answers compared up to float32 rounding, a fake TorchServe context,
and a launcher run as a user runs it."""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import requests

from modelserver.catalogue import PROJECT_ROOT
from modelserver.launcher.settings import Ports

SEED_CRYSTAL = PROJECT_ROOT.parent / "shared" / "seed_data" / "crystal"
BRIEF_ROWS = [[0.92, 0.12, 0.31, 0.09], [0.31, 0.54, 0.78, 0.17], [0.38, 0.04, 0.21, 0.98]]

# How far float32 rounding may move a score between two batchings (see `answers_close`).
# float32's epsilon is 1.19e-7 (~7.2 significant digits), and a GEMM summing its K terms in
# another order differs by a few ulps -- of the logits. Softmax turns a logit error dz into a
# *relative* error of about dz in every probability (dp_i / p_i = dz_i - sum_j p_j dz_j), and
# the crystal MLP's logits reach |z| ~ 15, where an ulp is 9.5e-7: the same rows alone and
# batched differ by up to 1.2e-6 relative on an AVX2 CPU, and by up to 3.8e-6 under random
# reorderings of every sum. 1e-5 keeps a margin of 2.5 over that, far below a real change.
ANSWER_REL_TOL = 1e-5
# For probabilities near zero (1e-13 on the brief's rows): a large relative error there is
# still no change of the answer.
ANSWER_ABS_TOL = 1e-9


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


def answers_close(
    actual: Any, expected: Any, rel_tol: float = ANSWER_REL_TOL, abs_tol: float = ANSWER_ABS_TOL
) -> bool:
    """Whether two model answers (JSON values) are the same answer: identical structure, keys,
    strings, ints, bools and None; floats within `rel_tol` (or `abs_tol` near zero). Never
    compare scores exactly when the two sides may come from different batches (alone or
    batched, TorchServe's dynamic batches, a reference computed apart, another row of one
    batch, another CPU's kernels): each sums in its own order and rounds its own way."""
    if isinstance(expected, float):
        return isinstance(actual, float) and math.isclose(actual, expected, rel_tol=rel_tol, abs_tol=abs_tol)
    if isinstance(expected, Mapping):
        return (
            isinstance(actual, Mapping)
            and actual.keys() == expected.keys()
            and all(answers_close(actual[key], value, rel_tol, abs_tol) for key, value in expected.items())
        )
    if isinstance(expected, (list, tuple)):
        return (
            isinstance(actual, type(expected))
            and len(actual) == len(expected)
            and all(answers_close(a, e, rel_tol, abs_tol) for a, e in zip(actual, expected, strict=True))
        )
    return type(actual) is type(expected) and actual == expected


@dataclass
class FakeContext:
    """The parts of TorchServe's `Context` a handler touches, recording what it sets."""

    model_dir: Path
    handler_config: dict[str, Any]
    serialized_file: str = ""
    model_name: str = "test_model"
    statuses: dict[int, tuple[int, str]] = field(default_factory=dict)
    content_types: dict[int, str] = field(default_factory=dict)
    gpu_id: int | str | None = None  # TorchServe's for a GPU worker; None on a CPU-only server

    @property
    def system_properties(self) -> dict[str, Any]:
        """As TorchServe fills them for a worker."""
        return {"model_dir": str(self.model_dir), "gpu_id": self.gpu_id, "batch_size": 8}

    @property
    def model_yaml_config(self) -> dict[str, Any]:
        """The archive's model-config.yaml."""
        return {"minWorkers": 1, "handler": self.handler_config}

    @property
    def manifest(self) -> dict[str, Any]:
        """MAR-INF/MANIFEST.json."""
        return {"model": {"modelName": self.model_name, "serializedFile": self.serialized_file}}

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        """Record a per-request status."""
        self.statuses[idx] = (code, phrase)

    def set_response_content_type(self, idx: int, value: str) -> None:
        """Record a per-request content type."""
        self.content_types[idx] = value

    def status_of(self, idx: int) -> int:
        """The status TorchServe would send for request `idx`."""
        return self.statuses.get(idx, (200, ""))[0]


def write_catalogue(
    path: Path,
    extra: Mapping[str, dict[str, Any]] | None = None,
    **sections: Mapping[str, dict[str, Any]],
) -> Path:
    """The project's catalogue plus `extra` entries and per-model overrides of its sections
    (`handler_config=`, `torchserve=`, `admission=`: model -> values), with every path made
    absolute."""
    import yaml  # pylint: disable=import-outside-toplevel

    catalogue = yaml.safe_load((PROJECT_ROOT / "models.yaml").read_text(encoding="utf-8"))
    catalogue["models"].update(extra or {})
    for section, per_model in sections.items():
        for name, overrides in per_model.items():
            catalogue["models"][name].setdefault(section, {}).update(overrides)
    for entry in catalogue["models"].values():
        entry["handler"] = str(PROJECT_ROOT / entry["handler"])
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
    ports: Ports = field(default_factory=stack_ports)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The public base URL (Envoy)."""
        return f"http://127.0.0.1:{self.ports.public}"

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
        return command

    def start(self) -> Launcher:
        """Start the launcher in the background."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        # Never download in tests: an empty Hub cache, offline. Models come from folders.
        hub_home = self.workdir / "hf_home"
        env = {**os.environ, "HF_HOME": str(hub_home), "HF_HUB_OFFLINE": "1", **self.env}
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

    def tokens(self) -> dict[str, str]:
        """TorchServe's keys from the runtime folder."""
        keys = json.loads((self.runtime_dir / "torchserve" / "key_file.json").read_text(encoding="utf-8"))
        return {"inference": keys["inference"]["key"], "management": keys["management"]["key"]}

    def management(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """Call TorchServe's management API on loopback with the management key."""
        headers = {"Authorization": f"Bearer {self.tokens()['management']}"}
        return requests.request(
            method, f"http://127.0.0.1:{self.ports.management}{path}", headers=headers, timeout=30, **kwargs
        )


@contextlib.contextmanager
def running(launcher: Launcher) -> Iterator[Launcher]:
    """Start a launcher, wait until healthy, and always stop it."""
    launcher.start()
    try:
        yield launcher.wait_healthy()
    finally:
        launcher.stop()


def make_scale(stack: Launcher, model: str, workers: int) -> dict[str, object]:
    """`make scale`, as a user runs it, against this stack's runtime folder."""
    done = subprocess.run(
        ["make", "-s", "scale", f"MODEL={model}", f"WORKERS={workers}", f"RUN_DIR={stack.runtime_dir}"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout[done.stdout.index("{") :])

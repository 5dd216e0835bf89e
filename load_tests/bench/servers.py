"""The servers one benchmark run compares, each on free ports and the same weights: our stack
(the launcher `make run` uses) and the naive peers, with their process trees for CPU and RSS."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml

from load_tests.bench.scenarios import SCENARIOS
from load_tests.kit.stack import Launcher, free_ports, write_catalogue
from modelserver.project import PROJECT_ROOT

BIN = Path(sys.executable).parent
LABELS = PROJECT_ROOT / "modelserver" / "kinds" / "crystal_labels.json"


@dataclass(frozen=True)
class Weights:
    """What every server loads: a BERT folder, a sentiment classifier folder, a joblib file."""

    bert: Path
    bert_kind: str
    crystal: Path
    sentiment: Path

    def for_scenario(self, scenario: str) -> Path:
        """The weights a peer of `scenario` loads."""
        return {"fill_mask": self.bert, "crystal": self.crystal, "sentiment": self.sentiment}[scenario]


def tree_rss(root: psutil.Process) -> int:
    """Resident bytes of a process and all its descendants (those that vanish count nothing)."""
    try:
        tree = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for process in tree:
        with contextlib.suppress(psutil.Error):
            total += process.memory_info().rss
    return total


class Usage:
    """CPU seconds and peak resident memory of a process and all its descendants."""

    def __init__(self, pid: int) -> None:
        self._root = psutil.Process(pid)
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _tree(self) -> list[psutil.Process]:
        with contextlib.suppress(psutil.Error):
            return [self._root, *self._root.children(recursive=True)]
        return []

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            self.peak_rss = max(self.peak_rss, tree_rss(self._root))

    def cpu_seconds(self) -> float:
        """User and system CPU time of the processes alive now."""
        total = 0.0
        for process in self._tree():
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                total += times.user + times.system
        return total

    def reset_peak(self) -> None:
        """Start a new peak-RSS window."""
        self.peak_rss = 0

    def close(self) -> None:
        """Stop sampling."""
        self._stop.set()


@dataclass
class Server:
    """A running server: where it listens, what it answers, how to watch and stop it."""

    name: str
    scenario: str
    description: str
    url: str
    pid: int
    stop: Any
    metrics_url: str = ""
    paths: dict[str, str] = field(default_factory=dict)  # scenario -> path, where not the usual
    models: dict[str, str] = field(default_factory=dict)  # scenario -> TorchServe model name
    usage: Usage = field(init=False)

    def __post_init__(self) -> None:
        self.usage = Usage(self.pid)

    def answers(self, scenario: str) -> bool:
        """Whether this server takes part in `scenario`."""
        return self.scenario in {"*", scenario}

    def batch_counters(self, scenario: str) -> tuple[float, float]:
        """(batches, requests in them) so far for the scenario's model, from TorchServe's /metrics."""
        model = self.models.get(scenario)
        if not self.metrics_url or not model:
            return (0.0, 0.0)
        with urllib.request.urlopen(self.metrics_url, timeout=5) as response:
            text = response.read().decode()
        values = {"HandlerBatches": 0.0, "HandlerBatchRequests": 0.0}
        for line in text.splitlines():
            name, _, rest = line.partition("{")
            if name in values and f'ModelName="{model}"' in rest:
                values[name] = float(line.rsplit(" ", 1)[1])
        return values["HandlerBatches"], values["HandlerBatchRequests"]


def wait_all_idle(servers: list[Server], timeout_s: float = 120.0, idle_cores: float = 0.1) -> float:
    """Block until no server is still busy (a closed-loop run leaves queued work behind: a
    server that answers in seconds still burns CPU for the clients that have gone), so each
    run starts on a quiet machine. Returns the seconds waited."""
    usages = list({server.pid: server.usage for server in servers}.values())  # one per process tree
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        before = [usage.cpu_seconds() for usage in usages]
        time.sleep(0.5)
        if all(
            usage.cpu_seconds() - cpu < idle_cores * 0.5 for usage, cpu in zip(usages, before, strict=True)
        ):
            break
    return time.monotonic() - start


def wait_answering(url: str, scenario: str, process: subprocess.Popen[bytes], timeout_s: float = 180) -> None:
    """Block until the server answers one scenario request with 200."""
    spec = SCENARIOS[scenario]
    body = json.dumps(spec.body()).encode()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited with {process.returncode}")
        request = urllib.request.Request(
            url + spec.path, data=body, headers={"Content-Type": "application/json"}
        )
        with contextlib.suppress(OSError), urllib.request.urlopen(request, timeout=30) as response:
            if response.status == 200:
                return
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer {spec.path} within {timeout_s} s")


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL the whole tree if it lingers."""
    tree = []
    with contextlib.suppress(psutil.Error):
        tree = psutil.Process(process.pid).children(recursive=True)
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
    for child in tree:
        with contextlib.suppress(psutil.Error):
            child.kill()


def start_peer(
    name: str, scenario: str, description: str, command: list[str], env: dict[str, str], work: Path
) -> Server:
    """Start a peer server on a free port and wait until it answers."""
    port = free_ports(1)[0]
    command = [part.replace("{port}", str(port)) for part in command]
    with (work / f"{name}.log").open("ab") as log:  # the child keeps its own copy of the handle
        process = subprocess.Popen(  # pylint: disable=consider-using-with
            command, cwd=PROJECT_ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_answering(url, scenario, process)
    except RuntimeError:
        stop_process(process)
        raise
    return Server(name, scenario, description, url, process.pid, lambda: stop_process(process))


def start_ours(weights: Weights, work: Path) -> list[Server]:
    """Our stack through Envoy with the catalogue's settings: the timing BERT on /inference
    (compiled fp32, the pipeline's answers), the same weights quantised to int8 (the documented
    opt-in) on /predictions/fill_mask_int8, and the crystal models."""
    catalogue = yaml.safe_load((PROJECT_ROOT / "models.yaml").read_text(encoding="utf-8"))
    int8 = copy.deepcopy(catalogue["models"]["fill_mask"])
    # int8 tuned: 2 workers x 1 thread beat 1 x 2 by 17% at 16 clients (docs/BENCHMARKS.md).
    int8["handler_config"].update({"quantize": "int8", "threads": 1})
    int8["torchserve"].update({"minWorkers": 2, "maxWorkers": 2})
    # The fp32 default is 2 workers x 1 thread; the same weights as 1 worker x 2 threads, so
    # the choice is measured end to end in every run.
    one_by_two = copy.deepcopy(catalogue["models"]["fill_mask"])
    one_by_two["handler_config"].update({"threads": 2})
    one_by_two["torchserve"].update({"minWorkers": 1, "maxWorkers": 1})
    launcher = Launcher(
        work / "ours",
        catalogue=write_catalogue(
            work / "models.yaml", extra={"fill_mask_int8": int8, "fill_mask_1x2": one_by_two}
        ),
        env={
            "FILL_MASK_MODEL": str(weights.bert),
            "CRYSTAL_SKLEARN_MODEL": str(weights.crystal),
            "SENTIMENT_MODEL": str(weights.sentiment),
        },
        models=(
            "crystal_sklearn",
            "crystal_pytorch",
            "fill_mask",
            "fill_mask_int8",
            "fill_mask_1x2",
            "sentiment",
        ),
    )
    launcher.start().wait_healthy(timeout_s=600)
    assert launcher.process is not None
    metrics = f"http://127.0.0.1:{launcher.ports.metrics}/metrics"
    pid = launcher.process.pid
    return [
        Server(
            "ours",
            "*",
            "this server: Envoy -> TorchServe (dynamic batching) -> our handlers; fill-mask and "
            "sentiment in fp32 on the compiled runtime (OpenVINO), 2 workers x 1 thread each",
            launcher.url,
            pid,
            launcher.stop,
            metrics,
            models={"fill_mask": "fill_mask", "crystal": "crystal_sklearn", "sentiment": "sentiment"},
        ),
        *(
            Server(
                name,
                "fill_mask",
                description,
                launcher.url,
                pid,
                lambda: None,
                metrics,
                paths={"fill_mask": f"/predictions/{model}"},
                models={"fill_mask": model},
            )
            for name, model, description in FILL_MASK_VARIANTS
        ),
    ]


# The same stack's other fill-mask entries: (server name, served model, description).
FILL_MASK_VARIANTS = (
    (
        "ours_int8",
        "fill_mask_int8",
        "the same stack, fill-mask quantised to int8 by OpenVINO/NNCF (opt-in), 2 workers x 1 thread",
    ),
    (
        "ours_1x2",
        "fill_mask_1x2",
        "the same stack, fill-mask in fp32 (OpenVINO) as 1 worker x 2 threads instead of 2 x 1",
    ),
)

# Brief 000's server: 2 sync workers, each loading its own pipeline; a long timeout, because a
# request queued behind 64 clients waits seconds and gunicorn would otherwise kill the worker.
GUNICORN_FLASK = [
    str(BIN / "gunicorn"),
    *("-w", "2", "-b", "127.0.0.1:{port}", "--timeout", "300"),
    "load_tests.peers.flask_fill_mask:create_app()",
]

PEERS: dict[str, dict[str, Any]] = {
    "flask_default": {
        "scenario": "fill_mask",
        "description": "Flask + transformers pipeline, gunicorn 2 workers, torch default threads",
        "command": GUNICORN_FLASK,
        "env": {},
    },
    "flask_tuned": {
        "scenario": "fill_mask",
        "description": "the same, 1 torch thread per worker (tuned)",
        "command": GUNICORN_FLASK,
        "env": {"PEER_TORCH_THREADS": "1"},
    },
    "flask_sentiment": {
        "scenario": "sentiment",
        "description": "Flask + transformers text-classification pipeline, gunicorn 2 workers, "
        "1 torch thread per worker (tuned)",
        "command": [
            str(BIN / "gunicorn"),
            *("-w", "2", "-b", "127.0.0.1:{port}", "--timeout", "300"),
            "load_tests.peers.flask_text_classification:create_app()",
        ],
        "env": {"PEER_TORCH_THREADS": "1"},
    },
    "fastapi": {
        "scenario": "crystal",
        "description": "FastAPI + pydantic, uvicorn 2 workers (uvloop, httptools)",
        "command": [
            str(BIN / "uvicorn"),
            "--workers",
            "2",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            "{port}",
            "--no-access-log",
            "--log-level",
            "warning",
            "load_tests.peers.fastapi_crystal:create_app",
        ],
        "env": {},
    },
}


@contextlib.contextmanager
def all_servers(weights: Weights, work: Path, scenarios: list[str]) -> Iterator[list[Server]]:
    """Start ours and every peer of the chosen scenarios; stop them all at the end."""
    servers: list[Server] = []
    env = {"PEER_LABELS": str(LABELS)}
    try:
        servers += start_ours(weights, work)
        for name, peer in PEERS.items():
            if peer["scenario"] in scenarios:
                peer_env = {**env, **peer["env"], "PEER_MODEL": str(weights.for_scenario(peer["scenario"]))}
                servers.append(
                    start_peer(name, peer["scenario"], peer["description"], peer["command"], peer_env, work)
                )
        yield servers
    finally:
        for server in servers:
            server.usage.close()
            server.stop()

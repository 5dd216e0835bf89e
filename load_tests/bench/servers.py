"""The servers one benchmark run compares, each on free ports and the same weights: our stack
(the launcher `make run` uses) and the naive peers, with their process trees for CPU and RSS."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml

from load_tests.bench.peer_envs import LITSERVE, PeerEnv, ensure, mlserver_env
from load_tests.bench.scenarios import REQUESTS
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
class Server:  # pylint: disable=too-many-instance-attributes  # a record, read by the harness
    """A running server: where it listens, what it answers, how to watch and stop it."""

    name: str
    scenario: str
    description: str
    url: str
    pid: int
    stop: Any
    metrics_url: str = ""
    paths: dict[str, str] = field(default_factory=dict)  # scenario -> path, where not the usual
    requests: dict[str, str] = field(default_factory=dict)  # scenario -> request variant sent instead
    models: dict[str, str] = field(default_factory=dict)  # scenario -> TorchServe model name
    busy_when_idle: bool = False  # burns CPU with no request: frozen while others are measured
    usage: Usage = field(init=False)

    def __post_init__(self) -> None:
        self.usage = Usage(self.pid)

    def signal_tree(self, signal_number: int) -> None:
        """Send a signal to the server's whole process tree (SIGSTOP freezes it, SIGCONT thaws)."""
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(self.pid)
            for process in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    process.send_signal(signal_number)

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


def wait_answering(url: str, request: str, process: subprocess.Popen[bytes], timeout_s: float = 300) -> None:
    """Block until the server answers one `request` (a scenario or a variant) with 200."""
    spec = REQUESTS[request]
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


@dataclass(frozen=True)
class Peer:
    """A server we compare against: how to start it and what it answers. The command's
    `{python}` is the interpreter of its virtualenv (ours, or `venv`'s), `{port}`, `{port2}`...
    free ports (the first takes the requests); `{folder}` in `env` a folder of its own."""

    scenario: str
    description: str
    command: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    request: str = ""  # the request variant it answers, where not the scenario's own
    venv: PeerEnv | None = None
    ports: int = 1
    busy_when_idle: bool = False


def start_peer(name: str, peer: Peer, python: Path, env: dict[str, str], work: Path) -> Server:
    """Start a peer server on free ports and wait until it answers."""
    ports = free_ports(peer.ports)
    names = {"{python}": str(python), "{folder}": str(work / name)}
    names |= {"{port}": str(ports[0])} | {f"{{port{i + 1}}}": str(port) for i, port in enumerate(ports)}

    def fill(text: str) -> str:
        for key, value in names.items():
            text = text.replace(key, value)
        return text

    command = [fill(part) for part in peer.command]
    env = {key: fill(value) for key, value in {**env, **peer.env}.items()}
    with (work / f"{name}.log").open("ab") as log:  # the child keeps its own copy of the handle
        process = subprocess.Popen(  # pylint: disable=consider-using-with
            command, cwd=PROJECT_ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{ports[0]}"
    request = peer.request or peer.scenario
    try:
        wait_answering(url, request, process)
    except RuntimeError:
        stop_process(process)
        raise
    requests = {peer.scenario: peer.request} if peer.request else {}
    server = Server(
        name,
        peer.scenario,
        peer.description,
        url,
        process.pid,
        lambda: stop_process(process),
        requests=requests,
        busy_when_idle=peer.busy_when_idle,
    )
    if server.busy_when_idle:
        server.signal_tree(signal.SIGSTOP)
    return server


# The models each scenario needs served (the crystal pair: /pytorch shares the workers' cores).
SCENARIO_MODELS = {
    "crystal": ("crystal_sklearn", "crystal_pytorch"),
    "fill_mask": ("fill_mask", "fill_mask_int8", "fill_mask_1x2"),
    "sentiment": ("sentiment",),
}


def start_ours(weights: Weights, work: Path, scenarios: list[str]) -> list[Server]:
    """Our stack through Envoy with the catalogue's settings, serving what the scenarios need:
    the timing BERT on /inference (compiled fp32, the pipeline's answers), the same weights
    quantised to int8 (the documented opt-in) on /predictions/fill_mask_int8, sentiment, and
    the crystal models."""
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
        models=tuple(model for scenario in scenarios for model in SCENARIO_MODELS[scenario]),
    )
    launcher.start().wait_healthy(timeout_s=600)
    assert launcher.process is not None
    metrics = f"http://127.0.0.1:{launcher.ports.metrics}/metrics"
    pid = launcher.process.pid
    servers = [
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
        Server(
            "ours_v2",
            "crystal",
            "the same stack and model through the Open Inference Protocol "
            "(/v2/models/crystal_sklearn/infer, one FP32 row in, label and scores out)",
            launcher.url,
            pid,
            lambda: None,
            metrics,
            requests={"crystal": "crystal_v2"},
            models={"crystal": "crystal_sklearn"},
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
    return [server for server in servers if server.scenario == "*" or server.scenario in scenarios]


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
def _gunicorn(app: str) -> tuple[str, ...]:
    return (
        str(BIN / "gunicorn"),
        *("-w", "2", "-b", "127.0.0.1:{port}", "--timeout", "300"),
        f"load_tests.peers.{app}:create_app()",
    )


LITSERVE_COMMAND = ("{python}", "-m", "load_tests.peers.litserve_pipeline", "{port}")
MLSERVER_COMMAND = ("{python}", "-m", "load_tests.peers.mlserver_crystal", "{port1}", "{port2}", "{port3}")


def litserve(scenario: str, batch: int, timeout_ms: int, workers: int, threads: int) -> Peer:
    """LitServe serving `scenario`'s pipeline with this batching and workers x threads."""
    task = {"fill_mask": "fill-mask", "sentiment": "text-classification"}[scenario]
    return Peer(
        scenario,
        f"LitServe 0.2.19 + transformers {task} pipeline, batches of up to {batch} waiting up to "
        f"{timeout_ms} ms, {workers} worker(s) x {threads} torch thread(s)",
        LITSERVE_COMMAND,
        {
            "PEER_TASK": task,
            "PEER_MAX_BATCH": str(batch),
            "PEER_BATCH_TIMEOUT": str(timeout_ms / 1000),
            "PEER_WORKERS": str(workers),
            "PEER_TORCH_THREADS": str(threads),
        },
        venv=LITSERVE,
        # Its workers poll their queues: ~0.1 core each with no request, which would be taken
        # from whichever server is measured.
        busy_when_idle=True,
    )


def mlserver(workers: int, batch: int) -> Peer:
    """MLServer 1.7.1's scikit-learn runtime with `parallel_workers` and adaptive batching
    (off at 1; else batches of up to `batch` waiting up to 1 ms, as ours)."""
    batching = f"adaptive batching up to {batch} within 1 ms" if batch > 1 else "no adaptive batching"
    return Peer(
        "crystal",
        f"MLServer 1.7.1 + mlserver-sklearn (Open Inference Protocol, predict_proba), "
        f"parallel_workers {workers}, {batching}",
        MLSERVER_COMMAND,
        {"PEER_FOLDER": "{folder}", "PEER_WORKERS": str(workers), "PEER_MAX_BATCH": str(batch)},
        request="crystal_v2_proba",
        venv=mlserver_env(),
        ports=3,
    )


PEERS: dict[str, Peer] = {
    "flask_default": Peer(
        "fill_mask",
        "Flask + transformers pipeline, gunicorn 2 workers, torch default threads",
        _gunicorn("flask_fill_mask"),
    ),
    "flask_tuned": Peer(
        "fill_mask",
        "the same, 1 torch thread per worker (tuned)",
        _gunicorn("flask_fill_mask"),
        {"PEER_TORCH_THREADS": "1"},
    ),
    "litserve": litserve("fill_mask", batch=8, timeout_ms=10, workers=2, threads=1),
    "flask_sentiment": Peer(
        "sentiment",
        "Flask + transformers text-classification pipeline, gunicorn 2 workers, "
        "1 torch thread per worker (tuned)",
        _gunicorn("flask_text_classification"),
        {"PEER_TORCH_THREADS": "1"},
    ),
    "litserve_sentiment": litserve("sentiment", batch=8, timeout_ms=10, workers=2, threads=1),
    "fastapi": Peer(
        "crystal",
        "FastAPI + pydantic, uvicorn 2 workers (uvloop, httptools)",
        (
            str(BIN / "uvicorn"),
            *("--workers", "2", "--factory", "--host", "127.0.0.1", "--port", "{port}"),
            *("--no-access-log", "--log-level", "warning"),
            "load_tests.peers.fastapi_crystal:create_app",
        ),
    ),
    # MLServer's best settings in a run of the grid below: in its own process (no parallel
    # workers) at 1 and 4 clients, the same with adaptive batching at 16 and 64.
    "mlserver": mlserver(workers=0, batch=1),
    "mlserver_batch": mlserver(workers=0, batch=32),
}

# The settings a user would try before keeping the best (`--peer-grid`): the defaults above
# are the winners of such a run (docs/BENCHMARKS.md).
PEER_GRID: dict[str, Peer] = {
    **{
        f"mlserver_w{workers}" + ("_batch" if batch > 1 else ""): mlserver(workers, batch)
        for workers in (1, 2)
        for batch in (1, 32)
    },
    **{
        f"litserve_b{batch}_t{timeout}_{workers}x{threads}": litserve(
            "fill_mask", batch, timeout, workers, threads
        )
        for batch, timeout, workers, threads in ((1, 0, 2, 1), (4, 5, 2, 1), (16, 50, 2, 1), (8, 10, 1, 2))
    },
}


@contextlib.contextmanager
def all_servers(
    weights: Weights, work: Path, scenarios: list[str], peers: Mapping[str, Peer], envs: Path
) -> Iterator[tuple[list[Server], dict[str, str]]]:
    """Start ours and every peer of the chosen scenarios; stop them all at the end. Yields the
    servers and, by name, the peers skipped because their virtualenv could not be installed."""
    servers: list[Server] = []
    skipped: dict[str, str] = {}
    env = {"PEER_LABELS": str(LABELS)}
    try:
        servers += start_ours(weights, work, scenarios)
        for name, peer in peers.items():
            if peer.scenario not in scenarios:
                continue
            try:
                python = ensure(peer.venv, envs) if peer.venv else Path(sys.executable)
            except RuntimeError as error:
                skipped[name] = str(error)
                print(f"{name} skipped: {error}", flush=True)
                continue
            peer_env = {**env, "PEER_MODEL": str(weights.for_scenario(peer.scenario))}
            servers.append(start_peer(name, peer, python, peer_env, work))
        yield servers, skipped
    finally:
        for server in servers:
            server.usage.close()
            server.signal_tree(signal.SIGCONT)  # a frozen process cannot act on SIGTERM
            server.stop()

"""What the stack leaves on the machine: private files and sockets, and no process of its own
once the launcher is gone, even killed with SIGKILL (which no handler sees)."""

from __future__ import annotations

import os
import signal
import stat
import time
from pathlib import Path

from load_tests.kit.stack import Launcher, running
from modelserver.launcher.torchserve import KEY_FILE


def descendants(pid: int) -> set[int]:
    """Every process below `pid`, from the kernel's children lists."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = (task / "children").read_text(encoding="utf-8").split()
            except OSError:
                continue
            for child in map(int, children):
                if child not in found:
                    found.add(child)
                    todo.append(child)
    return found


def running_now(pids: set[int]) -> set[int]:
    """Those of `pids` that still run (a zombie waiting for its reaper does not)."""
    alive = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8").rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.add(pid)
    return alive


def mode(path: Path) -> int:
    """The permission bits of `path`."""
    return stat.S_IMODE(path.stat().st_mode)


def test_secrets_and_sockets_are_private_and_nothing_outlives_a_killed_launcher(tmp_path: Path) -> None:
    launcher = Launcher(tmp_path, models=("crystal_sklearn", "crystal_pytorch"))
    with running(launcher) as live:
        run = live.runtime_dir
        assert mode(run) == 0o700
        assert mode(run / "torchserve" / KEY_FILE) == 0o600
        sockets = [path for path in (run / "envoy").iterdir() if stat.S_ISSOCK(path.stat().st_mode)]
        hot_restart = [path for path in sockets if path.name.startswith("hot_restart")]
        assert hot_restart and all(mode(path) == 0o600 for path in sockets), sockets
        assert live.process is not None
        stack = descendants(live.process.pid)
        assert len(stack) >= 3, "TorchServe, its workers and Envoy run below the launcher"
        os.kill(live.process.pid, signal.SIGKILL)
        live.process.wait(timeout=10)
        deadline = time.monotonic() + 20
        while running_now(stack) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not running_now(stack), [
            Path(f"/proc/{pid}/cmdline").read_bytes()[:120] for pid in running_now(stack)
        ]

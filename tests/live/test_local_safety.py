"""What the stack leaves on the machine: private files and sockets, and no process of its own
once the launcher is gone, even killed with SIGKILL (which no handler sees)."""

from __future__ import annotations

import os
import signal
import stat
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import requests

from load_tests.kit.routes import BRIEF_ROWS
from load_tests.kit.stack import Launcher, running
from modelserver.launcher.envoy.config import ACCESS_LOG_NAME
from modelserver.launcher.torchserve.keys import KEY_FILE, Tokens


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
        assert mode(run / "envoy" / ACCESS_LOG_NAME) == 0o600, "clients' requests are the launcher's alone"
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


class ShortKeysLauncher(Launcher):
    """The launcher with TorchServe's keys living KEY_LIFETIME_MIN: renewed every ~9 s."""

    def command(self) -> list[str]:
        return [*super().command(), "--key-lifetime-min", str(KEY_LIFETIME_MIN)]


KEY_LIFETIME_MIN = 0.3


def current_keys(launcher: Launcher) -> Tokens | None:
    """The key file now, or None while TorchServe rewrites it in place."""
    try:
        return launcher.tokens()
    except (OSError, ValueError, KeyError, TypeError):
        return None


def test_keys_are_renewed_before_they_expire_and_requests_keep_being_answered(tmp_path: Path) -> None:
    """Keys living 18 s are renewed at half their life, several times over 45 s, and Envoy
    gets each new inference key: the stack keeps answering with keys that never expire.
    TorchServe takes one inference key at a time, so requests in the moment between its new
    key and Envoy's new epoch get a JSON 503 with Retry-After (measured: 14 per renewal at
    100 requests/s, 0.3 s; with the default lifetime of a year that moment comes every six
    months)."""
    launcher = ShortKeysLauncher(tmp_path, models=("crystal_sklearn",))
    outcomes: Counter[str] = Counter()
    stop = threading.Event()

    def client() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                reply = session.post(f"{launcher.url}/sklearn", json={"crystalData": BRIEF_ROWS}, timeout=20)
                if reply.status_code == 200:
                    outcomes["ok"] += 1
                else:
                    retry = "Retry-After" if reply.headers.get("retry-after") else "no Retry-After"
                    outcomes[f"{reply.status_code} {retry} {reply.json()['error']}"] += 1
                time.sleep(0.02)

    with running(launcher) as live:
        first = live.tokens()
        assert first.expires is not None
        seen = {first.inference}
        clients = [threading.Thread(target=client) for _ in range(2)]
        for thread in clients:
            thread.start()
        try:
            deadline = time.monotonic() + 45
            while time.monotonic() < deadline:
                keys = current_keys(live)
                if keys is not None:
                    seen.add(keys.inference)
                    # Never served with a key past its end.
                    assert keys.expires is not None and keys.expires > datetime.now(UTC)
                time.sleep(0.25)
        finally:
            stop.set()
            for thread in clients:
                thread.join(timeout=30)
        assert len(seen) >= 4, "renewed at least three times"
        assert requests.get(f"{live.url}/healthcheck", timeout=5).status_code == 200
        assert live.management("GET", "/models/crystal_sklearn").status_code == 200  # the new management key
    renewals = len(seen) - 1
    refused = sum(count for outcome, count in outcomes.items() if outcome != "ok")
    assert outcomes["ok"] > 100 and refused <= 50 * renewals, dict(outcomes)
    assert set(outcomes) <= {"ok", "503 Retry-After the model server is restarting; retry shortly"}, dict(
        outcomes
    )

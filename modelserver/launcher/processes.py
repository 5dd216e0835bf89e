"""Child processes in their own process group, so stopping one stops everything it spawned."""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

# Files a child creates (TorchServe's key file, Envoy's sockets and logs) are its user's alone
# from the moment they exist, rather than made private after they were written.
PRIVATE_UMASK = 0o077
# Every child runs under the guard, which kills the child's whole process group if the
# launcher dies: no TorchServe or Envoy is left serving unsupervised.
GUARD = Path(__file__).with_name("guard.py")


class ManagedProcess:
    """A child started in a new session; `stop` signals its whole group, then kills it."""

    def __init__(self, name: str, command: Sequence[str], env: Mapping[str, str], cwd: Path, log_file: Path):
        self.name = name
        self._command = list(command)
        self._env = dict(env)
        self._cwd = cwd
        self._log_file = log_file
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """Process id of the group leader, once started."""
        return self._process.pid if self._process else None

    def start(self) -> None:
        """Start the command; its output goes to the log file."""
        self._log_file.parent.mkdir(parents=True, exist_ok=True)
        with self._log_file.open("ab") as output:
            self._process = subprocess.Popen(  # pylint: disable=consider-using-with
                [sys.executable, str(GUARD), str(os.getpid()), *self._command],
                cwd=self._cwd,
                env=self._env,
                stdout=output,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                umask=PRIVATE_UMASK,
            )
        log.info("started %s (pid %d), log: %s", self.name, self._process.pid, self._log_file)

    def alive(self) -> bool:
        """True while the group leader runs."""
        return self._process is not None and self._process.poll() is None

    def exit_code(self) -> int | None:
        """The leader's exit code, or None while it runs."""
        return None if self._process is None else self._process.poll()

    def signal(self, signum: int) -> None:
        """Send `signum` to the whole process group."""
        if self._process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._process.pid, signum)

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM the group; SIGKILL what is left of it after `timeout_s`."""
        if self._process is None:
            return
        self.signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        # Children (TorchServe's Python workers) may outlive the leader: wait for the group.
        while (
            self._process.poll() is None or _group_alive(self._process.pid)
        ) and time.monotonic() < deadline:
            time.sleep(0.05)
        if self._process.poll() is None or _group_alive(self._process.pid):
            log.warning("%s did not stop within %.0f s; killing it", self.name, timeout_s)
            self.signal(signal.SIGKILL)
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            log.error("%s (pid %d) survived SIGKILL", self.name, self._process.pid)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def raise_open_files_limit(wanted: int) -> int:
    """Raise this process's soft limit of open files (children inherit it) towards `wanted`, as
    far as the hard limit allows; returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return soft
    granted = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
    resource.setrlimit(resource.RLIMIT_NOFILE, (granted, hard))
    return granted

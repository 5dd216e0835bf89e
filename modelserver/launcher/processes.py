"""Child processes in their own process group, so stopping one stops everything it spawned.

A child's stdout and stderr go to a pipe that a reader thread in the launcher drains into a
`RotatingLog`, not to a file the child holds open: Envoy and TorchServe never reopen their
output, so only the launcher can rotate it by renaming (nothing copied, no line lost or cut),
and a full or read-only disk costs the launcher a dropped chunk, never the child a blocked write
or the launcher its life. The thread drains the pipe whatever happens to the file.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from modelserver.launcher.settings import LOG_FILE_BYTES, LOG_FILES_KEPT

log = logging.getLogger(__name__)

# Files a child creates (TorchServe's key file, Envoy's sockets and logs) are its user's alone
# from the moment they exist, rather than made private after they were written.
PRIVATE_UMASK = 0o077
# Every child runs under the guard, which kills the child's whole process group if the
# launcher dies: no TorchServe or Envoy is left serving unsupervised.
GUARD = Path(__file__).with_name("guard.py")
# Every child gets the rotation limits (`LaunchSettings.log_file_bytes`, `log_files_kept`) in
# these variables: TorchServe's log4j2.xml sizes its own rolling files with them.
LOG_FILE_BYTES_ENV = "MODELSERVER_LOG_FILE_BYTES"
LOG_FILES_KEPT_ENV = "MODELSERVER_LOG_FILES_KEPT"
# A reader thread takes at most this much of a child's output at a time; a line longer than it
# is written in pieces.
READ_CHUNK_BYTES = 64 << 10


def shift_rotated(path: Path, kept: int) -> None:
    """Rename `path` to `path.1`, `path.1` to `path.2` ..., dropping what would pass `kept`."""
    path.with_name(f"{path.name}.{kept}").unlink(missing_ok=True)
    for index in range(kept - 1, 0, -1):
        older = path.with_name(f"{path.name}.{index}")
        if older.exists():
            older.rename(path.with_name(f"{path.name}.{index + 1}"))
    if kept > 0:
        path.rename(path.with_name(f"{path.name}.1"))
    else:
        path.unlink()


class RotatingLog:
    """An append-only log file of at most `max_bytes`, renamed away (`shift_rotated`) before a
    write would pass it, with `kept` older files. `write` never raises: on an OSError (a full or
    read-only disk) the bytes are dropped, one line is logged, and `problem` says why until a
    write succeeds again. Several writers (Envoy's epochs) may share one."""

    def __init__(self, path: Path, max_bytes: int, kept: int) -> None:
        self.path = path
        self._max_bytes = max_bytes
        self._kept = kept
        self._lock = threading.Lock()
        self._file: io.FileIO | None = None
        self._size = 0
        self._dropped = 0  # bytes of output lost since the last write that succeeded
        self.problem: str | None = None

    def write(self, data: bytes) -> None:
        """Append `data`, rotating first if it would not fit. More than a whole file's worth
        (one read of a busy child's pipe can be) is written in pieces cut at line ends, so no
        file ever grows past the limit."""
        with self._lock:
            for piece in line_pieces(data, self._max_bytes):
                self._write(piece)

    def retry(self) -> None:
        """After a failed write: try again with a line saying how much output was lost. A
        child may stay silent once its own writes failed (TorchServe's log4j does), so
        without this the problem would outlive the full disk."""
        with self._lock:
            if self.problem is not None:
                note = f"[launcher] {self._dropped} bytes of output were lost: {self.problem}\n"
                self._write(note.encode(), output=False)

    def _write(self, data: bytes, output: bool = True) -> None:
        try:
            self._append(data)
        except OSError as error:
            self._close()
            if self.problem is None:
                log.error("cannot write %s (%s); its output is dropped until it can", self.path, error)
            self.problem = f"cannot write {self.path.name}: {error.strerror or error}"
            self._dropped += len(data) if output else 0
            return
        if self.problem is not None:
            log.info("writing %s again (%d bytes were lost)", self.path, self._dropped)
            self.problem = None
            self._dropped = 0

    def _append(self, data: bytes) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("ab", buffering=0)
            self._size = os.fstat(self._file.fileno()).st_size
        if self._size > 0 and self._size + len(data) > self._max_bytes:
            self._close()
            shift_rotated(self.path, self._kept)
            self._file = self.path.open("ab", buffering=0)
            self._size = 0
        view = memoryview(data)
        while view:
            written = self._file.write(view) or 0
            self._size += written
            view = view[written:]

    def _close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None

    def close(self) -> None:
        """Close the file (a later write opens it again)."""
        with self._lock:
            self._close()


def line_pieces(data: bytes, limit: int) -> Iterator[bytes]:
    """`data` in pieces of at most `limit` bytes, each ending at a line end where one fits."""
    while len(data) > limit:
        cut = data.rfind(b"\n", 0, limit) + 1 or limit
        yield data[:cut]
        data = data[cut:]
    if data:
        yield data


class ChildLogs:
    """One `RotatingLog` per output file, shared by every child writing it, with the limits
    the launcher's settings gave (`configure`, once at start)."""

    def __init__(self, max_bytes: int, kept: int) -> None:
        self.max_bytes = max_bytes
        self.kept = kept
        self._logs: dict[Path, RotatingLog] = {}
        self._lock = threading.Lock()

    def configure(self, max_bytes: int, kept: int) -> None:
        """Set the limits of the logs opened from now on."""
        self.max_bytes, self.kept = max_bytes, kept

    def log(self, path: Path) -> RotatingLog:
        """The writer of `path`."""
        with self._lock:
            if path not in self._logs:
                self._logs[path] = RotatingLog(path, self.max_bytes, self.kept)
            return self._logs[path]

    def problems(self) -> list[str]:
        """Why some output cannot be written now (empty when all is well); each log that
        could not be written is tried again first, so a disk with room again clears it."""
        with self._lock:
            failing = [found for found in self._logs.values() if found.problem]
        for found in failing:
            found.retry()
        return [found.problem for found in failing if found.problem]


CHILD_LOGS = ChildLogs(max_bytes=LOG_FILE_BYTES, kept=LOG_FILES_KEPT)


def drain(pipe: int, sink: RotatingLog) -> None:
    """Copy a child's output from `pipe` to `sink` until every writer has closed it. Whole lines
    where it can (a line is not split between two files); nothing here waits but the read."""
    pending = b""
    with contextlib.suppress(OSError):
        while chunk := os.read(pipe, READ_CHUNK_BYTES):
            data = pending + chunk
            cut = data.rfind(b"\n") + 1
            if cut == 0 and len(data) < READ_CHUNK_BYTES:
                pending = data
                continue
            cut = cut or len(data)
            sink.write(data[:cut])
            pending = data[cut:]
    if pending:
        sink.write(pending)
    os.close(pipe)


GROUP_FILE_SUFFIX = ".group"  # beside a child's log (never in its cwd): its process group


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
        """Start the command; its output goes through a pipe to the (rotated) log file."""
        sink = CHILD_LOGS.log(self._log_file)
        limits = {LOG_FILE_BYTES_ENV: str(CHILD_LOGS.max_bytes), LOG_FILES_KEPT_ENV: str(CHILD_LOGS.kept)}
        reader, writer = os.pipe()
        try:
            self._process = subprocess.Popen(  # pylint: disable=consider-using-with
                [sys.executable, str(GUARD), str(os.getpid()), *self._command],
                cwd=self._cwd,
                env={**self._env, **limits},
                stdout=writer,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                umask=PRIVATE_UMASK,
            )
        except BaseException:
            os.close(reader)
            raise
        finally:
            os.close(writer)
        threading.Thread(target=drain, args=(reader, sink), name=f"{self.name}-output", daemon=True).start()
        # Where a later launcher finds this group if this one dies with its guard (end_orphans).
        self._log_file.parent.mkdir(parents=True, exist_ok=True)
        self._log_file.with_suffix(GROUP_FILE_SUFFIX).write_text(str(self._process.pid), encoding="utf-8")
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


def _members(group: int) -> list[int]:
    """The processes of a process group, from /proc (its leader may be gone)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text(encoding="utf-8").rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group and fields[0] != "Z":  # pgrp; zombies are already gone
            found.append(int(stat.parent.name))
    return found


def _belongs_to(pid: int, runtime_dir: Path) -> bool:
    """Whether a process works in `runtime_dir` (its cwd or command line names the folder)."""
    folder = str(runtime_dir.resolve())
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
        command = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return cwd == folder or cwd.startswith(folder + "/") or folder in command


def end_orphans(runtime_dir: Path, timeout_s: float = 10.0) -> list[int]:
    """Kill the process groups an earlier launcher on `runtime_dir` left running (it and its
    guard were killed at once, e.g. by the OOM killer) before this launcher reuses their
    folders and ports. A recorded group counts only while a member still works in this
    folder: a number some unrelated process reused is left alone. Returns the groups ended."""
    ended = []
    for record in sorted(runtime_dir.rglob(f"*{GROUP_FILE_SUFFIX}")):
        try:
            group = int(record.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            group = 0
        members = _members(group) if group > 1 else []
        if members and any(_belongs_to(pid, runtime_dir) for pid in members):
            log.warning("ending process group %d, left running by an earlier launcher", group)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
            deadline = time.monotonic() + timeout_s
            while _members(group) and time.monotonic() < deadline:
                time.sleep(0.05)
            ended.append(group)
        record.unlink(missing_ok=True)
    return ended

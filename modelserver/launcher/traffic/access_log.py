"""Envoy's access log read as it grows: each version's answers, as Envoy saw them, without a
hop of our own in the request path. The file is rotated under the reader (renamed, then Envoy
reopens a new one) or truncated, and the tail carries on across both."""

from __future__ import annotations

import io
import json
import logging
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from modelserver.launcher.envoy.routes import model_cluster
from modelserver.launcher.traffic.judge import Outcome

log = logging.getLogger(__name__)

# One call reads at most this much, so a launcher that fell behind catches up over several
# calls instead of stalling in one; a line longer than this is not Envoy's and is dropped.
MAX_READ_BYTES = 4 << 20
CHUNK_BYTES = 64 << 10
MODEL_CLUSTER_PREFIX = model_cluster("")


@dataclass
class _OpenFile:
    """The file being read and where in it: its (device, inode) tells a rotation."""

    handle: io.FileIO  # unbuffered: every read asks the file itself
    identity: tuple[int, int]
    offset: int
    pending: bytes = b""  # the start of a line not yet complete
    to_newline: bool = False  # drop bytes up to the next newline (a line begun unseen)


class AccessLogTail:
    """The JSON lines appended to `path` since the last `read`. The first read starts at the
    file's end (only requests from now on count) unless `from_start`; a file that appears only
    later is read from its start. Safe to share between threads."""

    def __init__(self, path: Path, from_start: bool = False, max_read_bytes: int = MAX_READ_BYTES) -> None:
        self.path = path
        self._from_start = from_start
        self._max_read_bytes = max_read_bytes
        self._lock = threading.Lock()
        self._open_file: _OpenFile | None = None
        self._started = False
        self._problem: str | None = None
        self.skipped_lines = 0

    def read(self) -> list[dict[str, Any]]:
        """The records of the complete lines written since the last call (at most
        `max_read_bytes` of them; the rest come with the next calls)."""
        with self._lock:
            at_end = not self._started and not self._from_start
            self._started = True
            records: list[dict[str, Any]] = []
            current = self._open_file or self._open(at_end)
            budget = self._max_read_bytes
            while current is not None:
                budget -= self._drain(current, records, budget)
                if budget <= 0 or not self._replaced(current):
                    break
                # Envoy flushes its last lines into the old file as it reopens: read them first.
                budget -= self._drain(current, records, budget)
                if budget <= 0:
                    break
                self._finish(current, records)
                current = self._open(at_end=False)
            return records

    def close(self) -> None:
        """Close the file being read; a later `read` opens the file at `path` from its start."""
        with self._lock:
            if self._open_file is not None:
                self._open_file.handle.close()
                self._open_file = None

    def __enter__(self) -> AccessLogTail:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def _open(self, at_end: bool) -> _OpenFile | None:
        """Open the file at `path` (at its end if `at_end`); None if there is none yet."""
        try:
            handle = self.path.open("rb", buffering=0)  # pylint: disable=consider-using-with  # kept open
        except FileNotFoundError:
            return None
        except OSError as error:
            if self._problem is None:
                log.warning("cannot read %s: %s", self.path, error)
            self._problem = str(error)
            return None
        self._problem = None
        stat = os.fstat(handle.fileno())
        offset = stat.st_size if at_end else 0
        handle.seek(offset)
        # Starting in the middle of a line, its end is not a record.
        to_newline = offset > 0 and os.pread(handle.fileno(), 1, offset - 1) != b"\n"
        self._open_file = _OpenFile(handle, (stat.st_dev, stat.st_ino), offset, to_newline=to_newline)
        return self._open_file

    def _replaced(self, current: _OpenFile) -> bool:
        """Whether `path` is now another file than the one open (rotated). While the path is
        missing (renamed, Envoy not yet reopened), Envoy still writes to the open one."""
        try:
            stat = self.path.stat()
        except OSError:
            return False
        return (stat.st_dev, stat.st_ino) != current.identity

    def _finish(self, current: _OpenFile, records: list[dict[str, Any]]) -> None:
        """Leave a rotated file: its last line, even without a newline, is all it will hold."""
        if current.pending and not current.to_newline:
            self._parse(current.pending, records)
        current.handle.close()
        self._open_file = None

    def _drain(self, current: _OpenFile, records: list[dict[str, Any]], budget: int) -> int:
        """Read the open file up to its end or `budget` bytes; the bytes read."""
        if os.fstat(current.handle.fileno()).st_size < current.offset:
            log.info("%s was truncated; reading it from its start", self.path)
            current.offset = 0
            current.pending = b""
            current.to_newline = False
            current.handle.seek(0)
        used = 0
        while used < budget:
            chunk = current.handle.read(min(CHUNK_BYTES, budget - used))
            if not chunk:
                break
            used += len(chunk)
            current.offset += len(chunk)
            self._take(current, chunk, records)
        return used

    def _take(self, current: _OpenFile, chunk: bytes, records: list[dict[str, Any]]) -> None:
        lines = (current.pending + chunk).split(b"\n")
        current.pending = lines.pop()
        for line in lines:
            if current.to_newline:
                current.to_newline = False
            else:
                self._parse(line, records)
        if len(current.pending) > self._max_read_bytes:
            self.skipped_lines += 0 if current.to_newline else 1
            current.pending = b""
            current.to_newline = True

    def _parse(self, line: bytes, records: list[dict[str, Any]]) -> None:
        if not line.strip():
            return
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        else:
            self.skipped_lines += 1


def _number(value: Any) -> float | None:
    """A finite number from a field Envoy may also write as "-" or null."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def outcome_of(record: dict[str, Any]) -> tuple[str, Outcome] | None:
    """The model cluster a request went to and its outcome (the upstream's time, else the whole
    request's when the upstream never answered), or None for a request no model cluster got."""
    cluster = record.get("model")
    if not isinstance(cluster, str) or not cluster.startswith(MODEL_CLUSTER_PREFIX):
        return None
    status = _number(record.get("status"))
    if status is None:
        return None
    milliseconds = _number(record.get("upstream_ms"))
    if milliseconds is None:
        milliseconds = _number(record.get("duration_ms")) or 0.0
    return cluster, Outcome(int(status), milliseconds / 1000)

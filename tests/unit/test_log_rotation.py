"""Log rotation and disk errors of the launcher, without TorchServe or Envoy."""

from __future__ import annotations

import errno
import logging
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from modelserver.launcher import processes
from modelserver.launcher.envoy.process import AccessLogRotation
from modelserver.launcher.processes import ChildLogs, ManagedProcess, RotatingLog, shift_rotated
from modelserver.launcher.settings import LaunchSettings, settings_from_command_line
from modelserver.launcher.supervisor import Supervisor


def _files(folder: Path, name: str) -> dict[str, int]:
    return {path.name: path.stat().st_size for path in folder.glob(f"{name}*")}


def test_rotating_log_keeps_n_files_of_at_most_m_bytes(tmp_path: Path) -> None:
    sink = RotatingLog(tmp_path / "out.log", max_bytes=1000, kept=2)
    for number in range(350):
        sink.write(f"line {number:04d}\n".encode())
    files = _files(tmp_path, "out.log")
    assert set(files) == {"out.log", "out.log.1", "out.log.2"}
    assert all(0 < size <= 1000 for size in files.values())
    # The newest lines are in out.log, the ones before them in out.log.1, nothing is cut.
    assert (tmp_path / "out.log").read_text().splitlines()[-1] == "line 0349"
    older = (tmp_path / "out.log.1").read_text().splitlines()
    newer = (tmp_path / "out.log").read_text().splitlines()
    assert int(older[-1].split()[1]) + 1 == int(newer[0].split()[1])


def test_shift_rotated_drops_the_oldest(tmp_path: Path) -> None:
    log_file = tmp_path / "access.log"
    for generation in range(4):
        log_file.write_text(str(generation))
        shift_rotated(log_file, kept=2)
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {"access.log.1": "3", "access.log.2": "2"}


def test_a_write_that_fails_is_dropped_logged_once_and_recovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    sink = RotatingLog(tmp_path / "out.log", max_bytes=1 << 20, kept=1)
    real_open = Path.open

    def full_disk(self: Path, *args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "open", full_disk)
    with caplog.at_level(logging.INFO, logger=processes.__name__):
        sink.write(b"lost\n")
        sink.write(b"lost too\n")
        assert sink.problem == "cannot write out.log: No space left on device"
        monkeypatch.setattr(Path, "open", real_open)
        sink.write(b"kept\n")
    assert sink.problem is None
    assert (tmp_path / "out.log").read_bytes() == b"kept\n"
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "cannot write" in errors[0].getMessage()


def test_a_log_a_child_no_longer_writes_recovers_with_a_note_of_what_was_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    logs = ChildLogs(max_bytes=1 << 20, kept=1)
    sink = logs.log(tmp_path / "out.log")
    real_open = Path.open

    def full_disk(self: Path, *args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "open", full_disk)
    sink.write(b"lost\n")
    assert logs.problems() == ["cannot write out.log: No space left on device"]  # the retry fails too
    monkeypatch.setattr(Path, "open", real_open)
    assert not logs.problems()  # room again: the retry's note is written, nobody else wrote
    assert (tmp_path / "out.log").read_bytes() == (
        b"[launcher] 5 bytes of output were lost: cannot write out.log: No space left on device\n"
    )


def test_a_file_size_limit_is_an_error_not_a_crash(tmp_path: Path) -> None:
    """RLIMIT_FSIZE stands for a full disk: past it a write is EFBIG (Python ignores SIGXFSZ)."""
    script = textwrap.dedent(
        f"""
        import resource
        from pathlib import Path
        from modelserver.launcher.processes import RotatingLog
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        sink = RotatingLog(Path({str(tmp_path / "out.log")!r}), max_bytes=1 << 20, kept=1)
        for _ in range(100):
            sink.write(b"x" * 99 + b"\\n")
        print(sink.problem)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "File too large" in done.stdout
    assert (tmp_path / "out.log").stat().st_size <= 4096


def test_a_child_writes_through_a_pipe_into_rotated_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(processes, "CHILD_LOGS", ChildLogs(max_bytes=20_000, kept=2))
    command = [sys.executable, "-c", "import sys\nfor i in range(10000): print(f'line {i:05d}')"]
    child = ManagedProcess("writer", command, {}, tmp_path, tmp_path / "child.out")
    child.start()
    newest = tmp_path / "child.out"
    deadline = time.monotonic() + 30
    # The reader thread writes what was left in the pipe after the child exits.
    while time.monotonic() < deadline and not (
        newest.exists() and newest.read_text().endswith("line 09999\n")
    ):
        time.sleep(0.05)
    files = _files(tmp_path, "child.out")
    assert set(files) == {"child.out", "child.out.1", "child.out.2"}
    assert all(size <= 20_000 for size in files.values())
    assert (tmp_path / "child.out").read_text().splitlines()[-1] == "line 09999"
    for name in files:
        assert all(len(line) == 10 for line in (tmp_path / name).read_text().splitlines())


def test_children_get_the_limits_for_log4j() -> None:
    assert "${env:" + processes.LOG_FILE_BYTES_ENV in (Path(__file__).parents[2] / "log4j2.xml").read_text()
    settings = settings_from_command_line(["--log-file-mib", "0.5", "--log-files-kept", "5"], {})
    assert (settings.log_file_bytes, settings.log_files_kept) == (1 << 19, 5)


class _Envoy:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.refuse = False

    def admin(self, method: str, path: str) -> str:
        """Note the call, or fail like an Envoy that is not there."""
        if self.refuse:
            raise OSError("Envoy admin: connection refused")
        self.calls.append((method, path))
        return "OK"


def test_access_log_is_renamed_and_envoy_reopens_it(tmp_path: Path) -> None:
    envoy = _Envoy()
    access_log = tmp_path / "access.log"
    rotation = AccessLogRotation(envoy, access_log, max_bytes=100, kept=2)  # type: ignore[arg-type]
    access_log.write_bytes(b"x" * 100)
    rotation.check()
    assert not envoy.calls and access_log.exists()
    access_log.write_bytes(b"x" * 101)
    rotation.check()
    assert envoy.calls == [("POST", "/reopen_logs")]
    assert not access_log.exists() and (tmp_path / "access.log.1").stat().st_size == 101
    access_log.write_bytes(b"y" * 101)
    envoy.refuse = True
    rotation.check()
    assert rotation.problem is not None and "cannot rotate access.log" in rotation.problem
    envoy.refuse = False
    access_log.write_bytes(b"z" * 101)
    rotation.check()
    assert rotation.problem is None


class _Process:
    def __init__(self, alive: bool = True) -> None:
        self._alive = alive

    def alive(self) -> bool:
        """Whether it runs."""
        return self._alive

    def exit_code(self) -> int | None:
        """None while it runs."""
        return None if self._alive else 1


class _TorchServe:
    process = _Process()

    def model_status(self, _name: str) -> str:
        """Every model is ready."""
        return "ready"


class _StaleEnvoy:
    """An Envoy holding an old key whose reload cannot write its config."""

    def __init__(self) -> None:
        self.process = _Process()
        self.access_log = AccessLogRotation(self, Path("/nonexistent/access.log"), 100, 1)  # type: ignore[arg-type]
        self.full = True

    def reap(self) -> None:
        """No older epochs."""


def test_the_serving_loop_survives_a_full_disk_and_reports_not_ready(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    supervisor = Supervisor(LaunchSettings(runtime_dir=tmp_path), {})
    envoy = _StaleEnvoy()
    supervisor._torchserve = _TorchServe()  # type: ignore[assignment]  # pylint: disable=protected-access
    supervisor._envoy = envoy  # type: ignore[assignment]  # pylint: disable=protected-access
    monkeypatch.setattr(supervisor, "_envoy_key_is_stale", lambda: True)

    def hand_over() -> bool:
        if envoy.full:
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "envoy" / "envoy.yaml"))
        return True

    monkeypatch.setattr(supervisor, "_hand_envoy_the_key", hand_over)
    with caplog.at_level(logging.INFO):
        for _ in range(3):
            supervisor._tend()  # pylint: disable=protected-access
        status = supervisor._model_status("crystal_sklearn")  # pylint: disable=protected-access
        assert "No space left on device" in status and "envoy.yaml" in status
        envoy.full = False
        supervisor._tend()  # pylint: disable=protected-access
    assert supervisor._model_status("crystal_sklearn") == "ready"  # pylint: disable=protected-access
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "No space left on device" in errors[0]
    assert any("writable again" in r.getMessage() for r in caplog.records)


def test_a_write_larger_than_a_file_is_split_at_line_ends(tmp_path: Path) -> None:
    """One read of a busy child's pipe can hold more than a whole file (64 KiB): no file may
    grow past the limit all the same, and no line is split while a line end fits."""
    sink = processes.RotatingLog(tmp_path / "out", max_bytes=1000, kept=100)
    data = b"".join(f"line {i:05d}\n".encode() for i in range(500))  # 5,500 bytes in one write
    sink.write(data)
    files = _files(tmp_path, "out")
    assert all(size <= 1000 for size in files.values()), files
    pieces = [
        (tmp_path / name).read_bytes()
        for name in sorted(files, key=lambda n: -int(n.split(".")[-1]) if "." in n else 0)
    ]
    assert all(piece.endswith(b"\n") for piece in pieces)
    assert b"".join(pieces) == data
    assert list(processes.line_pieces(b"x" * 25, 10)) == [b"x" * 10, b"x" * 10, b"x" * 5]

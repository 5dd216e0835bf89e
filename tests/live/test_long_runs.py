"""Long runs: Envoy's access log (one JSON line per request, no body or query value) and every
log of the stack rotated within its limits."""

from __future__ import annotations

import errno
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
import requests

from load_tests.kit.routes import BRIEF_ROWS
from load_tests.kit.stack import Launcher, running
from tests.helpers import access_log

LOG_FILE_MIB = 0.05  # about 50 KiB: some 800 requests rotate the access log several times
LOG_FILE_BYTES = int(LOG_FILE_MIB * (1 << 20))
KEPT = 2
# Envoy flushes its access log every second, and the launcher checks its size four times a
# second: a file passes the limit by about a second of requests, at most ~30 KB at the pace
# the test sends them (100 a second).
SLACK_BYTES = 64 << 10
PACE_S = 0.01
QUERY_MARKER = "qsecret7f3a9"
BODY_MARKER = "bsecret4c1e2"
FIELDS = {
    "time",
    "method",
    "path",
    "protocol",
    "status",
    "flags",
    "duration_ms",
    "upstream_ms",
    "request_us",
    "upstream_us",
    "response_us",
    "attempts",
    "bytes_received",
    "bytes_sent",
    "model",
}


class SmallLogsLauncher(Launcher):
    """The launcher with small log files, so rotation shows within a test."""

    def command(self) -> list[str]:
        return [*super().command(), "--log-file-mib", str(LOG_FILE_MIB), "--log-files-kept", str(KEPT)]


@pytest.fixture(scope="module", name="stack")
def small_logs_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launcher]:
    """A crystal stack with small log limits."""
    launcher = SmallLogsLauncher(
        tmp_path_factory.mktemp("long_runs"), models=("crystal_sklearn", "crystal_pytorch")
    )
    with running(launcher) as started:
        yield started


def test_one_json_line_per_request_without_bodies_or_query_values(stack: Launcher) -> None:
    with requests.Session() as session:
        predicted = session.post(
            f"{stack.url}/sklearn?token={QUERY_MARKER}",
            json={"crystalData": BRIEF_ROWS, "note": BODY_MARKER},  # a 422: the field is unknown
            timeout=30,
        )
        refused = session.post(f"{stack.url}/pytorch", data=f'{{"crystalData": "{BODY_MARKER}"}}', timeout=30)
        health = session.get(f"{stack.url}/healthcheck?probe={QUERY_MARKER}", timeout=30)
    time.sleep(2.5)  # Envoy flushes its access log about every second
    lines = access_log(stack)
    assert all(set(line) == FIELDS for line in lines), lines[-3:]
    sklearn = [line for line in lines if line["path"] == "/sklearn"]
    assert len(sklearn) == 1, [(line["path"], line["model"], line["status"]) for line in lines]
    [line] = sklearn
    assert line["method"] == "POST" and line["status"] == predicted.status_code
    assert line["model"] == "model_crystal_sklearn" and int(str(line["bytes_received"])) > 0
    assert int(str(line["bytes_sent"])) == len(predicted.content)
    assert isinstance(line["duration_ms"], int | float) or str(line["duration_ms"]).isdigit()
    [pytorch] = [line for line in lines if line["path"] == "/pytorch"]
    assert pytorch["status"] == refused.status_code
    [probe] = [line for line in lines if line["path"] == "/healthcheck"][-1:]
    assert probe["status"] == health.status_code == 200
    for path in stack.runtime_dir.rglob("*"):
        if path.is_file() and not path.is_socket():
            content = path.read_bytes()
            assert QUERY_MARKER.encode() not in content, path
            assert BODY_MARKER.encode() not in content, path


def test_every_log_stays_within_its_limits(stack: Launcher) -> None:
    with requests.Session() as session:
        for number in range(800):
            session.get(f"{stack.url}/healthcheck", timeout=30)
            time.sleep(PACE_S)
            if number % 50 == 0:
                session.post(f"{stack.url}/sklearn", json={"crystalData": BRIEF_ROWS}, timeout=30)
    time.sleep(3.5)  # a flush by Envoy, then a check by the launcher
    rotated = sorted(path.name for path in (stack.runtime_dir / "envoy").glob("access.log*"))
    assert rotated == ["access.log", "access.log.1", "access.log.2"]
    logs = [
        *(stack.runtime_dir / "envoy").glob("access.log*"),
        *(stack.runtime_dir / "envoy").glob("envoy.log*"),
        *(stack.runtime_dir / "torchserve" / "logs").glob("*"),
    ]
    for path in logs:
        assert path.stat().st_size <= LOG_FILE_BYTES + SLACK_BYTES, path
    names = {path.name for path in logs}
    assert "torchserve.out" in names  # envoy.log exists only once Envoy has warned of something
    assert not any(name.endswith(f".{KEPT + 1}") for name in names), names
    # Rotation lost no line of the newest files: they end with the last requests sent.
    assert access_log(stack)[-1]["path"] in {"/healthcheck", "/sklearn"}
    assert requests.get(f"{stack.url}/healthcheck", timeout=30).status_code == 200


DISK_MIB = 64


@pytest.fixture(name="small_disk")
def small_disk_fixture(tmp_path: Path) -> Iterator[Path]:
    """A 64 MiB tmpfs to hold a stack's runtime folder; skips where mounting is not allowed."""
    disk = tmp_path / "run"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_MIB}m,mode=0700", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield tmp_path
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path) -> Path:
    """Write a file until the disk is full; the file, to free the space again."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as out:
        try:
            while True:
                out.write(b"\0" * (1 << 20))
        except OSError as error:
            assert error.errno == errno.ENOSPC, error
    return filler


def kill_a_worker(stack: Launcher) -> None:
    """SIGKILL the model's worker: TorchServe reports it on its output, which the launcher
    writes into the runtime folder."""
    [version] = stack.management("GET", "/models/crystal_sklearn").json()
    psutil.Process(version["workers"][0]["pid"]).kill()


def health(stack: Launcher) -> tuple[int, str]:
    """The public /healthcheck: status and body."""
    reply = requests.get(f"{stack.url}/healthcheck", timeout=5)
    return reply.status_code, reply.text


def eventually(condition: Callable[[], bool], timeout_s: float = 30.0) -> bool:
    """Whether `condition` holds within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.25)
    return True


def sklearn_answers(stack: Launcher) -> bool:
    """Whether /sklearn answers 200 now."""
    reply = requests.post(f"{stack.url}/sklearn", json={"crystalData": BRIEF_ROWS}, timeout=10)
    return reply.status_code == 200


def test_a_full_runtime_folder_turns_health_503_and_the_launcher_keeps_serving(small_disk: Path) -> None:
    launcher = Launcher(small_disk, models=("crystal_sklearn",))
    with running(launcher) as stack:
        filler = fill(stack.runtime_dir)

        def disk_full_reported() -> bool:
            # Each kill makes TorchServe write a few KB; the first may still fit in the last
            # page of its log file.
            if "No space left on device" in health(stack)[1]:
                return True
            if sklearn_answers(stack):
                kill_a_worker(stack)
            return False

        # Not ready, saying why (without the folder's path), for as long as writes fail.
        assert eventually(disk_full_reported, timeout_s=60), health(stack)
        status, body = health(stack)
        assert status == 503 and str(small_disk) not in body, body
        assert stack.process is not None and stack.process.poll() is None, "the launcher lives on"
        # What still runs keeps answering: the worker came back on a full disk.
        assert eventually(lambda: sklearn_answers(stack))
        filler.unlink()  # room again: readiness comes back by itself
        assert eventually(lambda: health(stack)[0] == 200), health(stack)
        assert sklearn_answers(stack)
        logged = (stack.runtime_dir / "torchserve" / "logs" / "torchserve.out").read_bytes()
        assert b"bytes of output were lost: cannot write torchserve.out" in logged

"""`python -m modelserver traffic`: its argument checks, and a change made in a fake Envoy's
runtime (its admin interface on the runtime folder's unix socket) before the runtime folder's
file; a refused change leaves the file as it was."""

from __future__ import annotations

import json
import socketserver
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from modelserver.launcher.traffic.command import main
from modelserver.launcher.traffic.state import TRAFFIC_FILE, Shares, catalogue_shares, write_shares
from tests.helpers import candidate_catalogue

PROG = "python -m modelserver traffic"


@dataclass
class FakeAdmin:
    """What Envoy's admin interface answers, and the requests it got."""

    status: int = 200
    requests: list[tuple[str, str]] = field(default_factory=list)


def admin_handler(fake: FakeAdmin) -> type[BaseHTTPRequestHandler]:
    """Envoy's admin interface as `fake` says it answers."""

    class Handler(BaseHTTPRequestHandler):
        """Notes each POST and answers with the fake's status."""

        def do_POST(self) -> None:  # pylint: disable=invalid-name
            """Note the request, answer as Envoy does."""
            fake.requests.append((self.command, self.path))
            body = b"OK\n" if fake.status == 200 else b"runtime layer is read-only\n"
            self.send_response(fake.status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # pylint: disable=redefined-builtin
            pass

    return Handler


@pytest.fixture(name="runtime_dir")
def fixture_runtime_dir(tmp_path: Path) -> Path:
    """A running stack's runtime folder: the catalogue's shares (a candidate on crystal_sklearn,
    no traffic) written by its launcher."""
    runtime_dir = tmp_path / "run"
    (runtime_dir / "envoy").mkdir(parents=True)
    write_shares(runtime_dir, catalogue_shares(candidate_catalogue(tmp_path)))
    return runtime_dir


@pytest.fixture(name="admin")
def fixture_admin(runtime_dir: Path) -> Iterator[FakeAdmin]:
    """A fake Envoy admin interface on the runtime folder's `envoy/admin.sock`."""
    fake = FakeAdmin()
    server = socketserver.ThreadingUnixStreamServer(
        str(runtime_dir / "envoy" / "admin.sock"), admin_handler(fake)
    )
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield fake
    server.shutdown()
    server.server_close()


def the_file(runtime_dir: Path) -> dict[str, Any]:
    """The runtime folder's shares, as written."""
    found: dict[str, Any] = json.loads((runtime_dir / TRAFFIC_FILE).read_text(encoding="utf-8"))
    return found


def refused(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run the command with arguments it refuses: exit 2, and the one line saying why."""
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    [line] = [line for line in captured.err.splitlines() if line.startswith(f"{PROG}: error: ")]
    return line


@pytest.mark.parametrize("value", ["101", "x", "-1", "2.5", ""])
def test_a_share_must_be_a_percentage(capsys: pytest.CaptureFixture[str], tmp_path: Path, value: str) -> None:
    line = refused(capsys, ["crystal_sklearn", "--canary", value, "--runtime-dir", str(tmp_path)])
    assert line == f"{PROG}: error: argument --canary: {value!r} is not a percentage from 0 to 100"


def test_a_shadow_share_is_checked_the_same_way(capsys: pytest.CaptureFixture[str]) -> None:
    line = refused(capsys, ["crystal_sklearn", "--shadow", "101"])
    assert line == f"{PROG}: error: argument --shadow: '101' is not a percentage from 0 to 100"


@pytest.mark.parametrize("end", ["--promote", "--rollback"])
def test_promote_and_rollback_take_no_share(capsys: pytest.CaptureFixture[str], end: str) -> None:
    line = refused(capsys, ["crystal_sklearn", end, "--canary", "10"])
    assert "give neither --canary nor --shadow" in line


def test_promote_and_rollback_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    line = refused(capsys, ["crystal_sklearn", "--promote", "--rollback"])
    assert "not allowed with argument" in line


def test_a_change_names_its_model(capsys: pytest.CaptureFixture[str]) -> None:
    assert refused(capsys, ["--canary", "10"]) == f"{PROG}: error: name the MODEL whose shares change"


@pytest.mark.parametrize("argv", [[], ["crystal_sklearn"], ["crystal_sklearn", "--canary", "10"]])
def test_without_a_running_stack_it_says_to_start_one(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str]
) -> None:
    assert main([*argv, "--runtime-dir", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"error: no running stack with a candidate in {tmp_path}")
    assert "`make run`" in captured.err and len(captured.err.splitlines()) == 1


def test_a_change_before_any_stack_ran_says_to_start_one(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    never_started = tmp_path / "run"
    assert main(["crystal_sklearn", "--canary", "10", "--runtime-dir", str(never_started)]) == 1
    assert "`make run`" in capsys.readouterr().err


def test_the_shares_are_shown_without_a_change(capsys: pytest.CaptureFixture[str], runtime_dir: Path) -> None:
    assert main(["--runtime-dir", str(runtime_dir)]) == 0
    assert json.loads(capsys.readouterr().out) == the_file(runtime_dir)
    assert main(["crystal_sklearn", "--runtime-dir", str(runtime_dir)]) == 0
    assert json.loads(capsys.readouterr().out) == the_file(runtime_dir)


def test_a_canary_share_goes_to_envoy_then_to_the_file(
    capsys: pytest.CaptureFixture[str], runtime_dir: Path, admin: FakeAdmin
) -> None:
    assert main(["crystal_sklearn", "--canary", "25", "--runtime-dir", str(runtime_dir)]) == 0
    assert admin.requests == [
        ("POST", "/runtime_modify?modelserver.canary.crystal_sklearn=25&modelserver.shadow.crystal_sklearn=0")
    ]
    written = the_file(runtime_dir)["crystal_sklearn"]
    assert (written["canary"], written["shadow"], written["changed_by"]) == (25, 0, "operator")
    assert json.loads(capsys.readouterr().out) == {"crystal_sklearn": written}


def test_a_shadow_share_keeps_the_canary_share(runtime_dir: Path, admin: FakeAdmin) -> None:
    assert main(["crystal_sklearn", "--canary", "25", "--runtime-dir", str(runtime_dir)]) == 0
    assert main(["crystal_sklearn", "--shadow", "50", "--runtime-dir", str(runtime_dir)]) == 0
    assert admin.requests[-1] == (
        "POST",
        "/runtime_modify?modelserver.canary.crystal_sklearn=25&modelserver.shadow.crystal_sklearn=63",
    )
    written = the_file(runtime_dir)["crystal_sklearn"]
    assert (written["canary"], written["shadow"]) == (25, 50)


def test_promote_sends_every_request_to_the_candidate(
    capsys: pytest.CaptureFixture[str], runtime_dir: Path, admin: FakeAdmin
) -> None:
    assert main(["crystal_sklearn", "--shadow", "40", "--runtime-dir", str(runtime_dir)]) == 0
    assert main(["crystal_sklearn", "--promote", "--runtime-dir", str(runtime_dir)]) == 0
    assert admin.requests[-1] == (
        "POST",
        "/runtime_modify?modelserver.canary.crystal_sklearn=100&modelserver.shadow.crystal_sklearn=0",
    )
    written = the_file(runtime_dir)["crystal_sklearn"]
    assert (written["canary"], written["shadow"], written["promoted"], written["rolled_back"]) == (
        100,
        0,
        True,
        None,
    )
    printed = capsys.readouterr().out
    assert json.loads(printed[printed.rindex('{\n  "crystal_sklearn"') :]) == {"crystal_sklearn": written}


def test_rollback_sends_every_request_to_the_primary_saying_who(runtime_dir: Path, admin: FakeAdmin) -> None:
    assert main(["crystal_sklearn", "--promote", "--runtime-dir", str(runtime_dir)]) == 0
    assert main(["crystal_sklearn", "--rollback", "--runtime-dir", str(runtime_dir)]) == 0
    assert admin.requests[-1] == (
        "POST",
        "/runtime_modify?modelserver.canary.crystal_sklearn=0&modelserver.shadow.crystal_sklearn=0",
    )
    written = the_file(runtime_dir)["crystal_sklearn"]
    assert (written["canary"], written["shadow"], written["promoted"], written["rolled_back"]) == (
        0,
        0,
        False,
        "by the operator",
    )


def test_an_operators_change_rearms_a_rolled_back_candidate(runtime_dir: Path, admin: FakeAdmin) -> None:
    rolled_back = Shares(rolled_back="candidate 5xx rate 50.0%").changed("launcher")
    write_shares(runtime_dir, {"crystal_sklearn": rolled_back})
    assert main(["crystal_sklearn", "--canary", "5", "--runtime-dir", str(runtime_dir)]) == 0
    assert len(admin.requests) == 1
    written = the_file(runtime_dir)["crystal_sklearn"]
    assert (written["canary"], written["rolled_back"], written["changed_by"]) == (5, None, "operator")


def test_a_change_envoy_refuses_leaves_the_file_as_it_was(
    capsys: pytest.CaptureFixture[str], runtime_dir: Path, admin: FakeAdmin
) -> None:
    admin.status = 500
    before = (runtime_dir / TRAFFIC_FILE).read_bytes()
    assert main(["crystal_sklearn", "--canary", "25", "--runtime-dir", str(runtime_dir)]) == 1
    assert len(admin.requests) == 1
    assert (runtime_dir / TRAFFIC_FILE).read_bytes() == before
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "error: Envoy refused the change (HTTP 500: runtime layer is read-only)\n"


def test_a_change_without_envoy_leaves_the_file_as_it_was(
    capsys: pytest.CaptureFixture[str], runtime_dir: Path
) -> None:
    before = (runtime_dir / TRAFFIC_FILE).read_bytes()
    assert main(["crystal_sklearn", "--canary", "25", "--runtime-dir", str(runtime_dir)]) == 1
    assert (runtime_dir / TRAFFIC_FILE).read_bytes() == before
    err = capsys.readouterr().err
    assert err.startswith("error: Envoy's admin socket does not answer") and "is the stack running?" in err


@pytest.mark.parametrize("argv", [["topics", "--canary", "5"], ["topics"]])
def test_a_model_without_a_candidate_is_refused_naming_those_with_one(
    capsys: pytest.CaptureFixture[str], runtime_dir: Path, admin: FakeAdmin, argv: list[str]
) -> None:
    before = (runtime_dir / TRAFFIC_FILE).read_bytes()
    assert main([*argv, "--runtime-dir", str(runtime_dir)]) == 1
    assert admin.requests == []
    assert (
        capsys.readouterr().err
        == "error: model 'topics' has no candidate; models with one: crystal_sklearn\n"
    )
    assert (runtime_dir / TRAFFIC_FILE).read_bytes() == before

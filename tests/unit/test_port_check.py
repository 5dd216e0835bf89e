"""A port already taken is one line naming it and its option, exit 2, before anything starts."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from load_tests.kit.stack import Launcher, stack_ports
from modelserver.errors import ConfigError
from modelserver.launcher.port_check import refuse_taken_ports
from modelserver.launcher.settings import LaunchSettings
from modelserver.project import PROJECT_ROOT


@pytest.fixture(name="listener")
def listener_fixture() -> Iterator[int]:
    """A port something listens on (loopback), as another server would."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


def test_free_ports_pass_and_a_taken_one_is_named_with_its_option(listener: int) -> None:
    free = stack_ports()
    refuse_taken_ports(LaunchSettings(ports=free, listen_address="127.0.0.1"))
    for field, option in [
        ("health", "--health-port"),
        ("public", "--port or PORT"),
        ("metrics", "--metrics-port"),
    ]:
        ports = free.model_copy(update={field: listener})
        with pytest.raises(ConfigError) as refused:
            refuse_taken_ports(LaunchSettings(ports=ports, listen_address="127.0.0.1"))
        assert str(refused.value).startswith(f"port {listener} ({option}) is already in use"), refused.value


def test_the_launcher_refuses_a_taken_port_in_one_line_before_it_builds(
    listener: int, tmp_path: Path
) -> None:
    ports = stack_ports().model_copy(update={"health": listener})
    command = Launcher(tmp_path, ports=ports).command()  # the launcher as the live tests start it
    ran = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert ran.returncode == 2, ran.stderr[-2000:]
    assert "Traceback" not in ran.stderr and not (tmp_path / "model_store").exists()
    [line] = [line for line in ran.stderr.splitlines() if "ERROR" in line]
    assert line.endswith(
        f"port {listener} (--health-port) is already in use, by another server or another"
        " launcher; stop it, or give this launcher another port with --health-port"
    ), line

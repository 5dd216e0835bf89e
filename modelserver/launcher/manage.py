"""`python -m modelserver.launcher.manage`: list, describe and scale the models of a running stack.

`make scale MODEL=<name> WORKERS=<n>` runs `scale`. It talks to TorchServe's management API on
loopback with the management key, both read from the launcher's runtime folder (`run/` by
default), so it works for any ports the launcher was started with and needs no token by hand.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelserver.launcher.runtime_folder import find_private_folder
from modelserver.launcher.torchserve.config import read_properties
from modelserver.launcher.torchserve.keys import read_key_file
from modelserver.launcher.torchserve.management import call_management, record_scaled_workers, scale_path
from modelserver.project import PROJECT_ROOT


class ManagementError(RuntimeError):
    """The management API refused or failed a call; the message says why."""


class Management:
    """The management API of the stack whose runtime folder is `runtime_dir`."""

    def __init__(self, runtime_dir: Path, timeout_s: float = 180.0) -> None:
        runtime_dir = find_private_folder(runtime_dir)
        self._runtime_dir = runtime_dir
        folder = runtime_dir / "torchserve"
        try:
            config = read_properties((folder / "config.properties").read_text(encoding="utf-8"))
            key = read_key_file(folder).management
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ManagementError(
                f"no running stack in {runtime_dir} ({type(error).__name__}); start it with `make run`"
            ) from None
        self._base_url = config["management_address"]
        self._key = key
        self._timeout_s = timeout_s

    def call(self, method: str, path: str) -> Any:
        """One call; a non-2xx answer raises with TorchServe's message."""
        try:
            status, body = call_management(self._base_url, self._key, method, path, self._timeout_s)
        except OSError as error:
            raise ManagementError(f"TorchServe's management API is not reachable: {error}") from None
        if status >= 300:
            message = body.get("message", body) if isinstance(body, dict) else body
            raise ManagementError(f"HTTP {status}: {message}")
        return body

    def list(self) -> list[str]:
        """Names of the registered models."""
        return sorted(model["modelName"] for model in self.call("GET", "/models")["models"])

    def describe(self, model: str) -> dict[str, Any]:
        """The model's batch settings and its workers, in short."""
        versions = self.call("GET", f"/models/{urllib.parse.quote(model)}")
        version = versions[0]
        return {
            "model": version["modelName"],
            "minWorkers": version["minWorkers"],
            "maxWorkers": version["maxWorkers"],
            "batchSize": version["batchSize"],
            "maxBatchDelay": version["maxBatchDelay"],
            "workers": [
                {"id": w["id"], "status": w["status"], "pid": w.get("pid")} for w in version["workers"]
            ],
        }

    def scale(self, model: str, workers: int, timeout_s: float = 180.0) -> dict[str, Any]:
        """Set min = max = `workers` and wait until exactly that many are READY."""
        self.call("PUT", scale_path(model, workers))
        # Kept for the launcher, which sets it again if it has to restart TorchServe.
        record_scaled_workers(self._runtime_dir, model, workers)
        deadline = time.monotonic() + timeout_s
        while True:
            described = self.describe(model)
            ready = [w for w in described["workers"] if w["status"] == "READY"]
            if len(ready) == len(described["workers"]) == workers:
                return described
            if time.monotonic() > deadline:
                raise ManagementError(
                    f"{model} has {len(ready)} ready workers of {workers} after {timeout_s:.0f} s"
                )
            time.sleep(0.2)


MAX_WORKERS = 64  # per model, per replica: more is a sign the replica count should grow instead


def worker_count(text: str) -> int:
    """A number of workers, 0 (the model stops answering) to MAX_WORKERS; a short reason otherwise."""
    if not text.isdigit() or int(text) > MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of workers from 0 to {MAX_WORKERS}")
    return int(text)


COMMANDS: dict[str, Callable[[Management, argparse.Namespace], Any]] = {
    "list": lambda management, _: management.list(),
    "describe": lambda management, args: management.describe(args.model),
    "scale": lambda management, args: management.scale(args.model, args.workers),
}


def main(argv: list[str] | None = None) -> int:
    """Run one command; print its answer as JSON. Exit 1 with the reason on failure."""
    parser = argparse.ArgumentParser(prog="python -m modelserver.launcher.manage", description=__doc__)
    parser.add_argument("--runtime-dir", type=Path, default=PROJECT_ROOT / "run")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="the registered models")
    commands.add_parser("describe", help="a model's workers and batch settings").add_argument("model")
    scale = commands.add_parser("scale", help="set a model's number of workers and wait for them")
    scale.add_argument("model")
    scale.add_argument("workers", type=worker_count, metavar=f"WORKERS (0-{MAX_WORKERS})")
    args = parser.parse_args(argv)
    try:
        answer = COMMANDS[args.command](Management(args.runtime_dir), args)
    except ManagementError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # the scale was made, but it could not be written down (a full disk)
        print(f"error: cannot record the change in {args.runtime_dir}: {error}", file=sys.stderr)
        return 1
    print(json.dumps(answer, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

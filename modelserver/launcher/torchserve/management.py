"""TorchServe's management API: one call, a model's readiness read from its answer, and the
worker counts an operator scaled to while serving."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

# Worker counts set while serving (`make scale`), in the runtime folder beside torchserve/ (which
# each TorchServe start empties): the launcher applies them again after restarting TorchServe.
SCALED_WORKERS_FILE = "scaled_workers.json"


def scale_path(model: str, workers: int) -> str:
    """The management API path (for PUT) that sets `model` to exactly `workers` and answers once
    they are started."""
    query = urllib.parse.urlencode({"min_worker": workers, "max_worker": workers, "synchronous": "true"})
    return f"/models/{urllib.parse.quote(model)}?{query}"


def record_scaled_workers(runtime_dir: Path, model: str, workers: int) -> None:
    """Remember that `model` was scaled to `workers` while this launcher serves."""
    scaled = read_scaled_workers(runtime_dir)
    scaled[model] = workers
    (runtime_dir / SCALED_WORKERS_FILE).write_text(json.dumps(scaled, sort_keys=True), encoding="utf-8")


def read_scaled_workers(runtime_dir: Path) -> dict[str, int]:
    """Model -> workers as scaled while serving; empty if none (or the file is unreadable)."""
    try:
        found = json.loads((runtime_dir / SCALED_WORKERS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(found, dict):
        return {}
    return {str(model): int(n) for model, n in found.items() if isinstance(n, int) and n >= 0}


def call_management(base_url: str, key: str, method: str, path: str, timeout_s: float) -> tuple[int, Any]:
    """One management API call: (HTTP status, decoded JSON body, or text if not JSON)."""
    request = urllib.request.Request(
        f"{base_url}{path}", method=method, headers={"Authorization": f"Bearer {key}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, _json_or_text(response.read())
    except urllib.error.HTTPError as error:
        return error.code, _json_or_text(error.read())


def _json_or_text(body: bytes) -> Any:
    """A management answer's body: JSON, or its text (the token API answers with a blank line)."""
    try:
        return json.loads(body or b"null")
    except ValueError:
        return body.decode("utf-8", "replace")


def describe_model(status: int, body: Any) -> str:
    """Read a management API `describe model` answer: 'ready' or what is wrong."""
    if status == 404:
        return "not registered (still loading, or its archive failed to load)"
    if status != 200 or not isinstance(body, list) or not body:
        return f"unexpected answer from TorchServe (HTTP {status})"
    workers = [worker for version in body for worker in version.get("workers", [])]
    if any(worker.get("status") == "READY" for worker in workers):
        return "ready"
    if not workers:
        return "no workers (scaled to zero)"
    return f"no ready worker ({', '.join(sorted({str(w.get('status')) for w in workers}))})"

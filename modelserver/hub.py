"""Fetch a model from the Hugging Face Hub into the local cache, at build time only.

Serving never downloads: archives hold the files. When the Hub cannot be reached (these
machines, an air-gapped cluster) a default model is skipped with the reason, never replaced.
A catalogue revision (a commit id) pins what is fetched; without one the Hub's main branch is
fetched and `snapshot_commit` tells which commit that was, for the build log and record.
"""

from __future__ import annotations

import functools
import logging
import socket
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

from modelserver.catalogue import HUB_COMMIT
from modelserver.errors import SourceUnavailable

log = logging.getLogger(__name__)

# What from_pretrained needs: config, tokenizer files, and one copy of the weights.
METADATA = ["*.json", "*.txt", "*.model"]
WEIGHTS_BY_PREFERENCE = ["*.safetensors", "pytorch_model*.bin"]
DEFAULT_ENDPOINT = "https://huggingface.co"


@functools.cache
def _reachable(host: str, port: int) -> bool:
    # huggingface_hub retries an unreachable Hub for about 25 s per call: ask the network once.
    try:
        with socket.create_connection((host, port), timeout=3):
            return True
    except OSError:
        return False


def hub_host(environ: Mapping[str, str]) -> str:
    """The Hub's host name (HF_ENDPOINT's, else huggingface.co), for messages."""
    return urlparse(environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).hostname or ""


def hub_online(environ: Mapping[str, str]) -> bool:
    """Whether to ask the Hub at all: not with HF_HUB_OFFLINE set, nor when its port refuses."""
    endpoint = urlparse(environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT)
    if environ.get("HF_HUB_OFFLINE", "") in ("1", "true", "True"):
        return False
    return _reachable(endpoint.hostname or "", endpoint.port or (443 if endpoint.scheme == "https" else 80))


def snapshot_commit(folder: Path) -> str | None:
    """The Hub commit a cache snapshot holds: huggingface_hub names it `snapshots/<commit>`."""
    if folder.parent.name == "snapshots" and HUB_COMMIT.fullmatch(folder.name):
        return folder.name
    return None


def fetch_from_hub(hub_id: str, environ: Mapping[str, str], revision: str | None = None) -> Path:
    """Download (or find in the local Hub cache) `hub_id` at `revision` (a commit id; None is
    the main branch); returns its snapshot folder."""
    from huggingface_hub import HfApi, snapshot_download  # pylint: disable=import-outside-toplevel

    online = hub_online(environ)
    try:
        if not online:
            return Path(snapshot_download(hub_id, revision=revision, local_files_only=True))
        files = HfApi().list_repo_files(hub_id, revision=revision)
        weights = next(
            (pattern for pattern in WEIGHTS_BY_PREFERENCE if any(Path(f).match(pattern) for f in files)),
            WEIGHTS_BY_PREFERENCE[0],
        )
        return Path(snapshot_download(hub_id, revision=revision, allow_patterns=[*METADATA, weights]))
    except Exception as error:  # pylint: disable=broad-exception-caught
        if not online:
            reason = f"the Hub ({hub_host(environ)}) is not reachable and it is not in the local cache"
            reason += f" at revision {revision}" if revision else ""
        else:
            reason = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
        raise SourceUnavailable(f"cannot fetch {hub_id}: {reason}") from None


def current_commit(hub_id: str, environ: Mapping[str, str], branch: str = "main") -> str:
    """The commit `branch` of `hub_id` points at now, as the Hub says (for pin-revisions)."""
    if not hub_online(environ):
        raise SourceUnavailable(f"cannot ask the Hub about {hub_id}: {hub_host(environ)} is not reachable")
    from huggingface_hub import HfApi  # pylint: disable=import-outside-toplevel

    try:
        commit = HfApi().model_info(hub_id, revision=branch).sha
    except Exception as error:  # pylint: disable=broad-exception-caught
        reason = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
        raise SourceUnavailable(f"cannot ask the Hub about {hub_id}: {reason}") from None
    if not commit or not HUB_COMMIT.fullmatch(commit):
        raise SourceUnavailable(f"the Hub gave no commit id for {hub_id}@{branch} (got {commit!r})")
    return commit

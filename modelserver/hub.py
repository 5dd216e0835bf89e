"""Fetch a model from the Hugging Face Hub into the local cache, at build time only.

Serving never downloads: archives hold the files. When the Hub cannot be reached (these
machines, an air-gapped cluster) a default model is skipped with the reason, never replaced.
"""

from __future__ import annotations

import functools
import logging
import socket
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

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


def fetch_from_hub(hub_id: str, environ: Mapping[str, str]) -> Path:
    """Download (or find in the local Hub cache) `hub_id`; returns its snapshot folder."""
    from huggingface_hub import HfApi, snapshot_download  # pylint: disable=import-outside-toplevel

    endpoint = urlparse(environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT)
    online = environ.get("HF_HUB_OFFLINE", "") not in ("1", "true", "True") and _reachable(
        endpoint.hostname or "", endpoint.port or (443 if endpoint.scheme == "https" else 80)
    )
    try:
        if not online:
            return Path(snapshot_download(hub_id, local_files_only=True))
        files = HfApi().list_repo_files(hub_id)
        weights = next(
            (pattern for pattern in WEIGHTS_BY_PREFERENCE if any(Path(f).match(pattern) for f in files)),
            WEIGHTS_BY_PREFERENCE[0],
        )
        return Path(snapshot_download(hub_id, allow_patterns=[*METADATA, weights]))
    except Exception as error:  # pylint: disable=broad-exception-caught
        if not online:
            reason = f"the Hub ({endpoint.hostname}) is not reachable and it is not in the local cache"
        else:
            reason = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
        raise SourceUnavailable(f"cannot fetch {hub_id}: {reason}") from None

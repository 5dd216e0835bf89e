"""TorchServe's bearer keys, as it writes them in its key file."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

KEY_FILE = "key_file.json"


@dataclass(frozen=True)
class Tokens:
    """TorchServe's bearer keys: inference (given to Envoy), management (health, scaling), and
    the token API's, which renews the other two before `expires` (the earlier of their ends)."""

    inference: str
    management: str
    api: str = ""
    expires: datetime | None = None


def read_key_file(folder: Path) -> Tokens:
    """The keys from the key file TorchServe writes in its folder (the one reader of it); a
    missing or half-written file (TorchServe rewrites it in place) raises OSError, ValueError,
    KeyError or TypeError."""
    keys = json.loads((folder / KEY_FILE).read_text(encoding="utf-8"))
    stamps = [keys[kind].get("expiration time") for kind in ("inference", "management")]
    ends = [datetime.fromisoformat(stamp) for stamp in stamps if stamp]
    api = keys.get("API", {}).get("key", "")  # without it (or an end) nothing is renewed
    return Tokens(keys["inference"]["key"], keys["management"]["key"], api, min(ends, default=None))

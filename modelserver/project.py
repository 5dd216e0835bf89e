"""Where the repository is, and the one read of the process environment its entry points make.

Every path the project builds (the catalogue, the model store, the handler, proxy files) is
relative to `PROJECT_ROOT`; the command-line entry points call `environment()` once and pass the
snapshot down, so nothing reads the environment per request.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def environment() -> dict[str, str]:
    """A snapshot of the process environment, read once by the CLI entry points."""
    return dict(os.environ)

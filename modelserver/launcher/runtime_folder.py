"""The launcher's runtime folder: TorchServe's keys, Envoy's sockets, logs. Only its user may
read it, so it must be a folder that user owns, mode 0700.

Given a folder the user owns (`run/`, a path of its own), that folder is used. Given one it
cannot own, such as a Kubernetes emptyDir (root's, group fsGroup, mode 2777: the pod's user can
write in it but not chmod it), the launcher keeps its state in a private subfolder it creates
there, named after its uid. That subfolder is checked and made private through a handle
that never follows a link; a volume shared with other users' processes (none in a pod) could
still rename it afterwards, so give the launcher a volume of its own.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from modelserver.errors import ConfigError


def private_subfolder(requested: Path) -> Path:
    """The subfolder used where `requested` belongs to another user."""
    return requested / f"uid-{os.geteuid()}"


def owned_by_me(path: Path) -> bool:
    """Whether `path` exists and this process's user owns it."""
    try:
        return path.stat().st_uid == os.geteuid()
    except FileNotFoundError:
        return False


def make_private_folder(requested: Path) -> Path:
    """Create (or take) the folder the launcher works in, mode 0700; returns it."""
    requested.mkdir(mode=0o700, parents=True, exist_ok=True)
    if owned_by_me(requested):
        requested.chmod(0o700)
        return requested
    own = private_subfolder(requested)
    with contextlib.suppress(FileExistsError):
        own.mkdir(mode=0o700)
    refused = ConfigError(
        f"{own} is not a folder of this user (uid {os.geteuid()}): remove it or pass another --runtime-dir"
    )
    try:
        handle = os.open(own, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:  # a link, or not a folder
        raise refused from None
    try:
        if os.fstat(handle).st_uid != os.geteuid():
            raise refused
        os.fchmod(handle, 0o700)  # also clears the setgid bit it inherits from an fsGroup volume
    finally:
        os.close(handle)
    return own


def find_private_folder(requested: Path) -> Path:
    """Where a launcher started on `requested` keeps its state (for tools that talk to it)."""
    if requested.exists() and not owned_by_me(requested):
        return private_subfolder(requested)
    return requested

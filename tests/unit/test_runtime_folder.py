"""The runtime folder: 0700 where the launcher owns it, a private subfolder where it cannot
(a Kubernetes emptyDir: root's, group fsGroup, mode 2777)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from modelserver.errors import ConfigError
from modelserver.launcher.runtime_folder import find_private_folder, make_private_folder
from modelserver.launcher.supervisor import exclusive

OTHER_UID = 54321


def mode(path: Path) -> int:
    """The permission bits, setuid/setgid/sticky included."""
    return stat.S_IMODE(path.stat().st_mode)


def kubelet_empty_dir(path: Path) -> Path:
    """A folder as kubelet makes an emptyDir with fsGroup, seen by a user who does not own it."""
    path.mkdir()
    os.chown(path, OTHER_UID, OTHER_UID)  # any owner but us stands for root here
    path.chmod(0o2777)
    return path


def test_an_owned_folder_is_used_and_made_private(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir(mode=0o755)
    assert make_private_folder(folder) == folder
    assert mode(folder) == 0o700
    assert find_private_folder(folder) == folder


def test_a_missing_folder_is_created_private(tmp_path: Path) -> None:
    folder = tmp_path / "a" / "run"
    assert make_private_folder(folder) == folder and mode(folder) == 0o700


@pytest.mark.skipif(os.geteuid() != 0, reason="making a folder of another user needs root")
def test_a_folder_of_another_user_gets_a_private_subfolder(tmp_path: Path) -> None:
    volume = kubelet_empty_dir(tmp_path / "run")
    private = make_private_folder(volume)
    assert private == volume / f"uid-{os.geteuid()}"
    assert private.stat().st_uid == os.geteuid()
    assert mode(private) == 0o700, "no setgid bit, no group access"
    assert mode(volume) == 0o2777, "the volume itself is left as kubelet made it"
    assert make_private_folder(volume) == private  # a restart takes the same folder
    assert find_private_folder(volume) == private
    with exclusive(volume) as held:
        assert held == private and (private / "launcher.lock").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="making a folder of another user needs root")
def test_a_subfolder_someone_else_planted_is_refused(tmp_path: Path) -> None:
    volume = kubelet_empty_dir(tmp_path / "run")
    planted = volume / f"uid-{os.geteuid()}"
    planted.mkdir()
    os.chown(planted, OTHER_UID, OTHER_UID)
    with pytest.raises(ConfigError, match="not a folder of this user"):
        make_private_folder(volume)
    planted.rmdir()
    planted.symlink_to(tmp_path)
    with pytest.raises(ConfigError, match="not a folder of this user"):
        make_private_folder(volume)

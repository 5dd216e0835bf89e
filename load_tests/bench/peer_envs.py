"""The virtualenvs of the real serving peers (MLServer, LitServe), installed by the benchmark
itself, pinned, outside the project's environment (their dependencies would clash with ours).

Each is built once under the given folder and reused while its pins are unchanged. One that
cannot be installed (no package index, say) is skipped with the reason, never faked.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import site
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

PINS_FILE = "pins.txt"  # written last: its presence means the install finished


@dataclass(frozen=True)
class PeerEnv:
    """One peer's virtualenv: its pinned packages, and whether it also sees the project's own
    packages (LitServe serves our torch and transformers; MLServer brings its own stack)."""

    name: str
    pins: tuple[str, ...]
    sees_project: bool = False

    def python(self, root: Path) -> Path:
        """The interpreter of this virtualenv under `root`."""
        return root / self.name / "bin" / "python"


def mlserver_env() -> PeerEnv:
    """MLServer with the project's scikit-learn, which unpickles the joblib file as ours does."""
    return PeerEnv(
        "mlserver-1.7.1",
        # uvloop 0.22 breaks MLServer 1.7.1's parallel workers ("There is no current event loop").
        (
            "mlserver==1.7.1",
            "mlserver-sklearn==1.7.1",
            "uvloop<0.22",
            f"scikit-learn=={importlib.metadata.version('scikit-learn')}",
        ),
    )


LITSERVE = PeerEnv("litserve-0.2.19", ("litserve==0.2.19",), sees_project=True)


def ensure(env: PeerEnv, root: Path, timeout_s: float = 900) -> Path:
    """The interpreter of `env` under `root`, installing it first if its pins changed. Raises
    RuntimeError with pip's last lines when it cannot be installed."""
    folder = root / env.name
    pins = "\n".join(env.pins) + "\n"
    marker = folder / PINS_FILE
    if marker.is_file() and marker.read_text(encoding="utf-8") == pins:
        return env.python(root)
    shutil.rmtree(folder, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True, capture_output=True)
    if env.sees_project:
        purelib = Path(
            subprocess.run(
                [str(env.python(root)), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip()
        )
        # After the venv's own folder on sys.path: its pins win, the rest comes from ours.
        (purelib / "project.pth").write_text(site.getsitepackages()[0] + "\n", encoding="utf-8")
    try:
        installed = subprocess.run(
            [
                str(env.python(root)),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                *env.pins,
            ],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        raise RuntimeError(f"installing {env.name} took over {timeout_s:.0f} s") from error
    if installed.returncode != 0:
        tail = " ".join(line for line in installed.stderr.splitlines()[-3:] if "is ignored" not in line)
        raise RuntimeError(f"pip could not install {' '.join(env.pins)}: {tail[-400:]}")
    marker.write_text(pins, encoding="utf-8")
    return env.python(root)

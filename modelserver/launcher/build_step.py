"""The launcher's first step: the archive of every model it serves, built (or reused) by the build
CLI in a child process, or taken from the model store as it is (`--no-build`), with what each
model answers to and why the others are skipped."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelserver.build.archive import archive_path, recorded_names, recorded_trained_on
from modelserver.catalogue import Catalogue
from modelserver.errors import ConfigError
from modelserver.launcher.settings import LaunchSettings
from modelserver.project import PROJECT_ROOT

# The build CLI the launcher runs as a child process, and the report it writes for it.
BUILD_MODULE = "archive_scripts.build_archives"
BUILD_REPORT = "build-report.json"


@dataclass
class Served:
    """What this launcher serves: the archives, the models skipped (and why), and the names
    each model answers to."""

    archives: dict[str, Path] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    names: dict[str, tuple[str, ...]] = field(default_factory=dict)
    trained_on: dict[str, str] = field(default_factory=dict)  # what a recipe trained it on


def run_build(settings: LaunchSettings, environ: Mapping[str, str], names: tuple[str, ...]) -> dict[str, Any]:
    """Run the build CLI in a child process (its log lines go to ours) and read its report."""
    settings.runtime_dir.mkdir(parents=True, exist_ok=True)
    report_file = settings.runtime_dir / BUILD_REPORT
    report_file.unlink(missing_ok=True)
    command = [
        sys.executable,
        "-m",
        BUILD_MODULE,
        "--model-store",
        str(settings.model_store),
        "--catalogue",
        str(settings.catalogue),
        "--report",
        str(report_file),
        *names,
    ]
    done = subprocess.run(command, env=dict(environ), cwd=PROJECT_ROOT, check=False)
    try:
        report: dict[str, Any] = json.loads(report_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        problem = f"the archive build exited {done.returncode} without a report; see its log above"
        raise RuntimeError(problem) from None
    if report.get("error"):
        raise ConfigError(report["error"])
    return report


def unbuilt_reasons(store: Path, absent: set[str]) -> dict[str, str]:
    """Why each model of `absent` has no archive in `store`: the reason the build that filled
    the store recorded (an image build skips a Hub model it cannot fetch), else that it was
    never built."""
    try:
        recorded = json.loads((store / BUILD_REPORT).read_text(encoding="utf-8")).get("skipped", {})
    except (OSError, ValueError, AttributeError):
        recorded = {}
    fallback = "no archive in the model store (served with --no-build): build it with `make archives`"
    return {name: str(recorded.get(name) or fallback) for name in sorted(absent)}


def served_archives(settings: LaunchSettings, environ: Mapping[str, str], catalogue: Catalogue) -> Served:
    """Build (or reuse) the archive of every served model; skip defaults that cannot be had.
    The build runs in a child process (the build CLI): training a recipe or exporting a
    graph loads ML frameworks, which must stay out of the supervising process. Its report
    says what each model answers to; unbuilt (`--no-build`), the catalogue's names apply."""
    chosen = settings.models or tuple(catalogue.models)
    unselected = {
        name: "not selected for this server (--models)"
        for name in sorted(set(catalogue.models) - set(chosen))
    }
    selected = tuple(name for model in chosen for name in catalogue.registered_as(model))
    if not settings.build:
        store = settings.model_store
        archives = {name: archive_path(catalogue.entry(name), store) for name in selected}
        absent = {name for name, archive in archives.items() if not archive.exists()}
        recorded = {name: recorded_names(catalogue.entry(name), store) for name in selected}
        return Served(
            archives={name: archive for name, archive in archives.items() if name not in absent},
            skipped={**unselected, **unbuilt_reasons(store, absent)},
            names={name: names for name, names in recorded.items() if names},
            trained_on={
                name: note for name in selected if (note := recorded_trained_on(catalogue.entry(name), store))
            },
        )
    report = run_build(settings, environ, selected)
    return Served(
        archives={name: Path(report["archives"][name]) for name in selected if name in report["archives"]},
        skipped={**unselected, **report["skipped"]},
        names={name: tuple(names) for name, names in report["names"].items()},
        trained_on=dict(report.get("trained_on", {})),
    )

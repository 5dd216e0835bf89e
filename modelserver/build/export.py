"""The export child: compile one kind's forward pass at archive build, as that kind declares.

    python -m modelserver.build.export --kind fill_mask --archive-dir DIR --settings JSON

DIR is an unpacked-archive-like folder holding `model/`; the kind's export (its `Kind.export`)
writes the compiled graph and its parity report to `DIR/compiled/`. Exit 0: the compiled
backend may serve. Exit 1: one line on stderr says why (the archive builder then serves the
model with PyTorch eager). The builder runs this in a child process, so torch and OpenVINO stay
out of it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel

from modelserver.kinds.kind import ExportReport
from modelserver.kinds.registry import KINDS, kind_named


def export(kind_name: str, archive_dir: Path, settings: BaseModel) -> ExportReport:
    """Run the export the kind declares; its parity report says whether the compiled graph may serve."""
    return kind_named(kind_name).compile(archive_dir, settings)


def main(argv: Sequence[str] | None = None) -> int:
    """The CLI the archive builder runs in a child process."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    compiled = sorted(name for name, kind in KINDS.items() if kind.export)
    parser.add_argument("--kind", choices=compiled, required=True)
    parser.add_argument("--archive-dir", type=Path, required=True)
    parser.add_argument("--settings", default="{}", help="the model's handler settings, as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = kind_named(args.kind).settings.model_validate_json(args.settings)
        report = export(args.kind, args.archive_dir, settings)
    except Exception as error:  # pylint: disable=broad-exception-caught
        # Any failure of the export means "serve eager": say why in one line.
        first_line = (str(error).splitlines() or [""])[0][:300]
        sys.stderr.write(f"export failed: {type(error).__name__}: {first_line}\n")
        return 1
    if not report.passed:
        sys.stderr.write(f"parity failed: {report.first_problem}\n")
        return 1
    sys.stdout.write(json.dumps(report.as_json()) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

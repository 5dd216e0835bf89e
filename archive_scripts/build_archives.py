"""Build the TorchServe archives of the catalogue into a model store.

    python -m archive_scripts.build_archives [--model-store DIR] [--catalogue FILE] [NAME ...]
                                             [--strict] [--report FILE]

Each model's source follows its catalogue entry: the variable it names (e.g.
CRYSTAL_SKLEARN_MODEL=/path/to/sklearn.model) if set, else the project's default.
An archive whose inputs did not change is reused. A model whose default source cannot be had
now (the Hub out of reach, no training data) is skipped, as `make run` skips it: one line
says why and which variable fixes it, the others are built, and the exit status is 0;
`--strict` fails on the first such model instead (exit 2), for pipelines that must have them
all. The launcher runs this as a child process (`--report FILE`), so training and Hub
downloads never load an ML framework into the supervising process; the report says what was
built, each model's served names, what was skipped and why, what each trained model was
trained on, or the configuration error that stopped the build.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from modelserver.build.archive import build_archive
from modelserver.catalogue import DEFAULT_CATALOGUE, Catalogue
from modelserver.errors import ConfigError, SourceUnavailable
from modelserver.launcher.pages.health import public_reason
from modelserver.project import PROJECT_ROOT, environment

log = logging.getLogger("archive_scripts.build_archives")


def build_all(  # pylint: disable=too-many-arguments
    catalogue: Catalogue,
    names: Sequence[str],
    model_store: Path,
    environ: Mapping[str, str],
    skip_unavailable: bool,
    report: dict[str, Any],
) -> None:
    """Build (or reuse) each named model's archive into `report`; a default source that
    cannot be had now is skipped with the reason and the fix, when `skip_unavailable`."""
    for name in names:
        entry = catalogue.entry(name)
        try:
            result = build_archive(entry, model_store, environ)
        except SourceUnavailable as error:
            env = entry.source.env
            hint = f"set {env} to a local folder or a reachable Hub id" if env else ""
            reason = f"{error}; {hint}".rstrip("; ")
            if not skip_unavailable:
                raise SourceUnavailable(f"{name}: {reason}") from error
            # Clients see this reason (/healthcheck, the model's routes): file names, no paths.
            report["skipped"][name] = public_reason(reason)
            print(f"skipped {name}: {reason}", flush=True)
            continue
        report["archives"][name] = str(result.archive)
        report["names"][name] = list(result.names)
        if result.trained_on:
            report["trained_on"][name] = result.trained_on
        verb = "built" if result.rebuilt else "reused"
        print(f"{verb:7} {result.archive}  <- {result.source}", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Build the named models (all by default); print one line per model."""
    parser = argparse.ArgumentParser(
        prog="python -m archive_scripts.build_archives", description=__doc__.splitlines()[0]
    )
    parser.add_argument("names", nargs="*", help="models to build (default: all)")
    parser.add_argument("--model-store", type=Path, default=PROJECT_ROOT / "model_store")
    parser.add_argument("--catalogue", type=Path, default=DEFAULT_CATALOGUE)
    parser.add_argument(
        "--strict",
        action="store_true",
        help="fail (exit 2) on the first model whose source is out of reach, instead of skipping it",
    )
    parser.add_argument(
        "--skip-unavailable",
        action="store_true",
        help="skip models whose source is out of reach (the default)",
    )
    parser.add_argument("--report", type=Path, help="write what was built and skipped here, as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    report: dict[str, Any] = {"archives": {}, "names": {}, "trained_on": {}, "skipped": {}, "error": None}
    code = 0
    try:
        catalogue = Catalogue.load(args.catalogue)
        chosen = args.names or catalogue.models
        names = list(dict.fromkeys(name for model in chosen for name in catalogue.registered_as(model)))
        build_all(catalogue, names, args.model_store, environment(), not args.strict, report)
        if report["skipped"]:
            print(
                f"{len(report['skipped'])} of {len(names)} models skipped (set the variables above to"
                " serve them); --strict fails instead",
                flush=True,
            )
    except ConfigError as error:
        report["error"] = str(error)
        print(f"error: {error}", file=sys.stderr)
        code = 2
    if args.report is not None:
        args.report.write_text(json.dumps(report, indent=2), encoding="utf-8")
    return code


if __name__ == "__main__":
    sys.exit(main())

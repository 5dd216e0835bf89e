"""Build the TorchServe archives of the catalogue into a model store.

    python -m archive_scripts.build_archives [--model-store DIR] [--catalogue FILE] [NAME ...]

Each model's source follows its catalogue entry: the variable it names (e.g.
CRYSTAL_SKLEARN_MODEL=/path/to/sklearn.model) if set, else the project's default.
An archive whose inputs did not change is reused.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from modelserver.archive import build_archive
from modelserver.catalogue import DEFAULT_CATALOGUE, PROJECT_ROOT, Catalogue, environment
from modelserver.errors import ConfigError


def main(argv: list[str] | None = None) -> int:
    """Build the named models (all by default); print one line per model."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="models to build (default: all)")
    parser.add_argument("--model-store", type=Path, default=PROJECT_ROOT / "model_store")
    parser.add_argument("--catalogue", type=Path, default=DEFAULT_CATALOGUE)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        catalogue = Catalogue.load(args.catalogue)
        environ = environment()
        for name in args.names or list(catalogue.models):
            result = build_archive(catalogue.entry(name), args.model_store, environ)
            verb = "built" if result.rebuilt else "reused"
            print(f"{verb:7} {result.archive}  <- {result.source}")
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

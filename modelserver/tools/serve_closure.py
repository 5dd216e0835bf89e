"""What serving needs of an environment, and what it does not.

    python -m modelserver.tools.serve_closure requirements-serve.txt [--build-only]

The image builds archives with every package of `requirements.txt`, then removes what serving
never imports, so the runtime stage carries no build tool. The list is computed, not written:
the distributions the serve requirements pull in (their installed metadata, markers evaluated
for this Python) are kept; every other installed distribution is build-only. Standard library
and `packaging` only, so it runs in any venv before or after the removal.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import sys
from collections.abc import Iterable
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

# Installers are kept out of the runtime too: nothing installs at serve time.
INSTALLERS = frozenset({"pip"})


def requirement_names(path: Path) -> list[str]:
    """The pinned names of a requirements file, following its `-r` includes."""
    names: list[str] = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if include := re.match(r"^-r\s+(\S+)$", line):
            names += requirement_names(path.parent / include.group(1))
        elif match := re.match(r"^([A-Za-z0-9][\w.-]*)\s*==", line):
            names.append(canonicalize_name(match.group(1)))
    return names


def closure(names: Iterable[str]) -> set[str]:
    """The installed distributions `names` pull in, themselves included."""
    seen: set[str] = set()
    todo = [canonicalize_name(name) for name in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for line in importlib.metadata.requires(name) or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(requirement.name))
    return seen


def installed() -> set[str]:
    """Every distribution installed in this environment."""
    return {canonicalize_name(d.metadata["Name"]) for d in importlib.metadata.distributions()}


def build_only(serve_requirements: Path) -> list[str]:
    """Installed distributions outside the serve closure (installers included), sorted."""
    keep = closure(requirement_names(serve_requirements)) - INSTALLERS
    return sorted(installed() - keep)


def main(argv: list[str] | None = None) -> int:
    """Print the serve closure, or with --build-only what lies outside it, one name a line."""
    parser = argparse.ArgumentParser(
        prog="python -m modelserver.tools.serve_closure", description=__doc__.splitlines()[0]
    )
    parser.add_argument("requirements", type=Path)
    parser.add_argument("--build-only", action="store_true", help="print what serving does not need")
    args = parser.parse_args(argv)
    try:
        names = (
            build_only(args.requirements)
            if args.build_only
            else sorted(closure(requirement_names(args.requirements)))
        )
    except importlib.metadata.PackageNotFoundError as error:
        print(f"error: {error.name} is required but not installed", file=sys.stderr)
        return 1
    print("\n".join(names))
    return 0


if __name__ == "__main__":
    sys.exit(main())

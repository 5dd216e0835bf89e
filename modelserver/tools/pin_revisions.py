"""Pin each Hub model of models.yaml to the commit its main branch points at now.

    python -m modelserver pin-revisions                 # every Hub model; rewrites models.yaml
    python -m modelserver pin-revisions fill_mask       # only these models
    python -m modelserver pin-revisions --dry-run       # say what would change, write nothing

This is how a revision is bumped: it asks the Hub (so it needs the network, or HF_ENDPOINT set
to a mirror), rewrites only the `revision:` line under each model's `hub:` (comments and layout
stay), and checks that the result loads and pins exactly what the Hub said. Then regenerate the
ConfigMap (`python -m modelserver configmap`); the next build fetches the new commit, and the
changed revision rebuilds the archive. Review the diff like any dependency bump.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from modelserver.catalogue import DEFAULT_CATALOGUE, Catalogue
from modelserver.errors import ConfigError, SourceUnavailable
from modelserver.hub import current_commit
from modelserver.project import environment

log = logging.getLogger(__name__)

# A Hub id -> the commit id its main branch points at now (the Hub, or a fake in the tests).
Resolver = Callable[[str], str]

_KEY = re.compile(r"^(?P<indent>\s*)(?P<key>[^\s#:][^:#]*?):(?P<value>[^#]*?)\s*(?P<comment>#.*)?$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _is_content(line: str) -> bool:
    """A line that holds YAML (not blank, not only a comment)."""
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith("#")


def _children(lines: list[str], start: int, end: int, parent_indent: int) -> dict[str, int]:
    """The keys one level below the line `start` (up to `end`), by name, at their line index."""
    found: dict[str, int] = {}
    child_indent = None
    for index in range(start + 1, end):
        line = lines[index]
        if not _is_content(line):
            continue
        indent = _indent(line)
        if indent <= parent_indent:
            break
        child_indent = indent if child_indent is None else child_indent
        match = _KEY.match(line.rstrip("\n"))
        if indent == child_indent and match:
            found[match.group("key").strip()] = index
    return found


def _block_end(lines: list[str], start: int) -> int:
    """The index after the block the key at `start` opens (its deeper lines)."""
    indent = _indent(lines[start])
    end = start + 1
    while end < len(lines) and (not _is_content(lines[end]) or _indent(lines[end]) > indent):
        end += 1
    return end


def _source_lines(lines: list[str], name: str) -> tuple[int, int]:
    """The `source:` key line of model `name` and the index after its block."""
    top = _children(lines, -1, len(lines), -1)
    if "models" not in top:
        raise ConfigError("the catalogue has no `models:` section")
    models = top["models"]
    entries = _children(lines, models, _block_end(lines, models), _indent(lines[models]))
    if name not in entries:
        raise ConfigError(f"no block-style entry {name!r} under `models:`")
    entry = entries[name]
    fields = _children(lines, entry, _block_end(lines, entry), _indent(lines[entry]))
    source = fields.get("source")
    if source is None or _block_end(lines, source) == source + 1:
        raise ConfigError(f"models.{name}.source must be written in block style to be pinned")
    return source, _block_end(lines, source)


def with_revisions(text: str, revisions: Mapping[str, str]) -> str:
    """`text` (models.yaml) with `revision: "<commit>"` set under each named model's `hub:`
    line: the existing `revision:` line replaced, or a new one right after `hub:`."""
    lines = text.splitlines(keepends=True)
    for name, commit in revisions.items():
        source, end = _source_lines(lines, name)
        keys = _children(lines, source, end, _indent(lines[source]))
        if "hub" not in keys:
            raise ConfigError(f"models.{name}.source has no `hub:` line")
        hub_line = lines[keys["hub"]]
        pinned = f'{" " * _indent(hub_line)}revision: "{commit}"'
        if "revision" in keys:
            old = _KEY.match(lines[keys["revision"]].rstrip("\n"))
            comment = f"  {old.group('comment')}" if old and old.group("comment") else ""
            lines[keys["revision"]] = pinned + comment + "\n"
        else:
            lines.insert(keys["hub"] + 1, pinned + "\n")
    return "".join(lines)


def hub_models(catalogue: Catalogue, names: Sequence[str]) -> dict[str, str]:
    """The named models (every Hub model if none) with their Hub ids; a name that is not a Hub
    model of the catalogue fails, so a typo never pins nothing quietly."""
    hub = {name: entry.source.hub for name, entry in catalogue.models.items() if entry.source.hub}
    for name in names:
        if name not in hub:
            raise ConfigError(f"{name!r} is not a Hub model of the catalogue; Hub models: {sorted(hub)}")
    return {name: hub[name] for name in (names or list(hub))}


def pin_revisions(
    catalogue_path: Path, names: Sequence[str], resolve: Resolver, dry_run: bool = False
) -> dict[str, tuple[str | None, str]]:
    """Ask `resolve` for each Hub model's current commit and write it into the catalogue (not
    with `dry_run`). Returns {model: (old revision, new revision)} for the models that change.
    Nothing is written unless every model resolved and the new catalogue loads."""
    catalogue = Catalogue.load(catalogue_path)
    models = hub_models(catalogue, names)
    commits = {hub_id: resolve(hub_id) for hub_id in dict.fromkeys(models.values())}
    wanted = {name: commits[hub_id] for name, hub_id in models.items()}
    changes = {
        name: (catalogue.models[name].source.revision, commit)
        for name, commit in wanted.items()
        if catalogue.models[name].source.revision != commit
    }
    text = catalogue_path.read_text(encoding="utf-8")
    updated = with_revisions(text, {name: wanted[name] for name in changes})
    _check_pins(updated, catalogue, wanted, catalogue_path.name)
    if changes and not dry_run:
        catalogue_path.write_text(updated, encoding="utf-8")
    return changes


def _check_pins(text: str, catalogue: Catalogue, wanted: Mapping[str, str], file_name: str) -> None:
    """The rewritten catalogue must load, hold the same models, and pin exactly `wanted`."""
    with tempfile.TemporaryDirectory() as work:
        check = Path(work) / file_name
        check.write_text(text, encoding="utf-8")
        reloaded = Catalogue.load(check)
    wrong = [name for name, commit in wanted.items() if reloaded.models[name].source.revision != commit]
    if wrong or set(reloaded.models) != set(catalogue.models):
        raise ConfigError(
            f"the rewritten catalogue does not pin {wrong or 'the same models'}; nothing written"
        )


def main(argv: list[str] | None = None) -> int:
    """Pin the named Hub models (all by default) to their main branch's current commit."""
    parser = argparse.ArgumentParser(
        prog="python -m modelserver pin-revisions", description=__doc__.splitlines()[0]
    )
    parser.add_argument("names", nargs="*", help="Hub models to pin (default: every one)")
    parser.add_argument("--catalogue", type=Path, default=DEFAULT_CATALOGUE)
    parser.add_argument("--dry-run", action="store_true", help="say what would change; write nothing")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    environ = environment()
    try:
        changes = pin_revisions(
            args.catalogue, args.names, lambda hub_id: current_commit(hub_id, environ), args.dry_run
        )
    except (ConfigError, SourceUnavailable) as error:
        log.error("%s; %s is unchanged", error, args.catalogue)
        return 1
    for name, (old, new) in changes.items():
        log.info("%s: revision %s -> %s", name, old or "(unpinned)", new)
    if not changes:
        log.info("every Hub model is pinned to its current commit already")
    elif args.dry_run:
        log.info("dry run: %s is unchanged", args.catalogue)
    else:
        log.info("wrote %s; now run: python -m modelserver configmap", args.catalogue)
    return 0


if __name__ == "__main__":
    sys.exit(main())

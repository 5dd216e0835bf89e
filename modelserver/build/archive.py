"""Build a TorchServe archive from a catalogue entry; reuse it while its inputs are unchanged.

One function, `build_archive`, serves the CLI (`archive_scripts/build_archives.py`), the
launcher and the tests. A build record beside each archive holds the fingerprint of every
input (source bytes, handler, extra files, settings, the Hub commit), so a changed source, or a
bumped revision, rebuilds.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import yaml
from pydantic import BaseModel

from modelserver.backends import COMPILED_SUBDIR, PARITY_REPORT, BackendSettings
from modelserver.catalogue import ModelEntry, Source, resolve_source
from modelserver.errors import ConfigError, SourceUnavailable
from modelserver.hub import fetch_from_hub, snapshot_commit
from modelserver.kinds import MODEL_SUBDIR
from modelserver.project import PROJECT_ROOT
from modelserver.training import run_recipe

log = logging.getLogger(__name__)

BUILDER_VERSION = "5"
LARGE_FILE_BYTES = 32 << 20
RECORDS_DIR = ".builds"
# Every archive's handler: it reads the kind from model-config.yaml and asks the kind registry.
HANDLER = PROJECT_ROOT / "handlers" / "model_handler.py"
RECIPE_INPUTS = (PROJECT_ROOT / "modelserver" / "training", PROJECT_ROOT / "modelserver" / "kinds")
# An exported graph depends on the code that exports and checks it, and on the model code.
EXPORT_INPUTS = (
    PROJECT_ROOT / "modelserver" / "backends",
    PROJECT_ROOT / "modelserver" / "kinds",
    PROJECT_ROOT / "modelserver" / "build" / "export.py",
)
EXPORT_TIMEOUT_S = 1800
EXPORT_MODULE = "modelserver.build.export"  # run in a child: `python -m EXPORT_MODULE`
# What an exported graph also depends on (read from the installed metadata, never imported).
EXPORT_PACKAGES = ("torch", "transformers", "openvino", "nncf")


@dataclass(frozen=True)
class BuildResult:
    """What `build_archive` did for one model."""

    name: str
    archive: Path
    rebuilt: bool
    source: str
    names: tuple[str, ...]
    backend: str = ""  # where the forward pass runs, for the kinds that have one
    trained_on: str = ""  # what a recipe trained it on (file names or a download), for clients


def _is_bytecode(path: Path) -> bool:
    """Python's compiled caches: written by whoever imports the code first, never an input
    (hashing them would rebuild an archive after the first run of changed code)."""
    return path.suffix == ".pyc" or "__pycache__" in path.parts


def _hash_path(digest: hashlib._Hash, path: Path) -> None:  # pylint: disable=protected-access
    """Content of small files; name, size and mtime of large ones (weights: GBs per start)."""
    files = (
        sorted(p for p in path.rglob("*") if p.is_file() and not _is_bytecode(p.relative_to(path)))
        if path.is_dir()
        else [path]
    )
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        info = file.stat()
        if info.st_size > LARGE_FILE_BYTES:
            digest.update(f"{info.st_size}:{info.st_mtime_ns}".encode())
            continue
        with file.open("rb") as stream:
            for chunk in iter(lambda s=stream: s.read(1 << 20), b""):
                digest.update(chunk)


def fingerprint(entry: ModelEntry, source: Source, root: Path = PROJECT_ROOT) -> str:
    """A digest of everything that ends up in the archive."""
    digest = hashlib.sha256(f"{BUILDER_VERSION}\n{entry.model_dump_json()}".encode())
    for path in [HANDLER, *(root / f for f in entry.extra_files)]:
        _hash_path(digest, path)
    if source.recipe:
        # A recipe's output depends on its module and what it imports (data, architectures).
        digest.update(f"recipe:{source.recipe}".encode())
        for folder in RECIPE_INPUTS:
            _hash_path(digest, folder)
        for name, path in sorted(source.inputs.items()):
            digest.update(name.encode())
            _hash_path(digest, path)
        if source.download:  # its files are not here yet: the name stands for them
            digest.update(f"download:{source.download}".encode())
    elif source.path is not None:
        if source.hub_id:
            # The commit the snapshot holds: an unpinned model whose main branch moved rebuilds
            # even where the new files have the sizes and times of the old ones.
            digest.update(f"hub:{source.hub_id}@{snapshot_commit(source.path)}".encode())
        _hash_path(digest, source.path)
    if compiles(entry):
        for folder in EXPORT_INPUTS:
            _hash_path(digest, folder)
        for package in EXPORT_PACKAGES:
            digest.update(f"{package}=={_installed_version(package)}".encode())
    return digest.hexdigest()


def _installed_version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def requested_backend(entry: ModelEntry) -> str:
    """The backend the entry's settings ask for ('' for kinds whose forward pass never compiles)."""
    settings = entry.settings
    if entry.kind_declared.export is None or not isinstance(settings, BackendSettings):
        return ""
    return settings.backend


def compiles(entry: ModelEntry) -> bool:
    """Whether the entry's forward pass is compiled at build (by its kind's export)."""
    return requested_backend(entry) not in ("", "torch")


def archive_path(entry: ModelEntry, model_store: Path) -> Path:
    """Where the archive of `entry` lives in the model store."""
    suffix = "" if entry.archive_format == "no-archive" else ".mar"
    return model_store / f"{entry.name}{suffix}"


@dataclass(frozen=True)
class BackendChoice:
    """The backend the build settled on ('' for kinds without one), and why: the parity
    figures, or the reason it fell back to PyTorch eager."""

    backend: str = ""
    note: str = ""
    fell_back: bool = False

    def updates(self) -> dict[str, str]:
        """The settings it changes (eager serves fp32: no int8 without the graph)."""
        if not self.backend:
            return {}
        return {"backend": self.backend, **({"quantize": "none"} if self.fell_back else {})}


def handler_section(settings: BaseModel, choice: BackendChoice | None) -> dict[str, object]:
    """The `handler:` section of model-config.yaml: the settings the catalogue entry gave, as
    its settings model writes them, then those the build's backend choice changed."""
    written = settings.model_dump(mode="json", by_alias=True, exclude_unset=True)
    updates = choice.updates() if choice else {}
    if not updates:
        return written
    chosen = settings.model_copy(update=updates)
    return {**written, **chosen.model_dump(mode="json", by_alias=True, include=set(updates))}


def model_config(entry: ModelEntry, source: Source, choice: BackendChoice | None = None) -> dict[str, object]:
    """The archive's model-config.yaml: TorchServe settings, the `handler:` section (with the
    backend the build settled on), the model's kind, and the names a request may use for it."""
    handler = handler_section(entry.settings, choice)
    return {
        **entry.torchserve.model_dump(),
        "kind": entry.kind,
        "served_names": entry.served_names(source.hub_id),
        "handler": handler,
    }


def _record_path(entry: ModelEntry, model_store: Path) -> Path:
    return model_store / RECORDS_DIR / f"{entry.name}.json"


def _is_current(entry: ModelEntry, model_store: Path, digest: str) -> bool:
    record = _record_path(entry, model_store)
    if not archive_path(entry, model_store).exists() or not record.exists():
        return False
    try:
        return json.loads(record.read_text(encoding="utf-8")).get("fingerprint") == digest
    except ValueError:
        return False


def build_archive(
    entry: ModelEntry,
    model_store: Path,
    environ: Mapping[str, str],
    root: Path = PROJECT_ROOT,
) -> BuildResult:
    """Build (or reuse) the archive for `entry` in `model_store`."""
    source = resolve_source(entry, environ, root)
    if source.hub_id:
        source = replace(source, path=fetch_from_hub(source.hub_id, environ, source.revision))
        _check_hub_commit(entry, source)
    _refuse_links_out(entry, source)
    digest = fingerprint(entry, source, root)
    target = archive_path(entry, model_store)
    names = tuple(entry.served_names(source.hub_id))
    if _is_current(entry, model_store, digest):
        choice = _recorded_choice(entry, model_store)
        log.info("%s: archive is current (%s)", entry.name, source.describe())
        if choice.fell_back:
            log.warning("%s: serving with PyTorch eager (as built): %s", entry.name, choice.note)
        return BuildResult(entry.name, target, False, source.describe(), names, choice.backend, source.data)
    model_store.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"build-{entry.name}-") as work:
        workdir = Path(work)
        model_file = _materialise_source(entry, source, workdir)
        if model_file.is_dir():
            staged = _stage_folder(model_file, workdir)
            choice = _compile(entry, staged, environ)
        elif compiles(entry):
            raise ConfigError(
                f"{entry.name}: a compiled runtime needs a model folder, not the file {model_file.name}"
            )
        else:
            staged, choice = model_file, BackendChoice(requested_backend(entry))
        config_file = workdir / "model-config.yaml"
        config = model_config(entry, source, choice)
        config_file.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        _run_archiver(entry, staged, config_file, workdir, model_store, root, environ)
    _write_record(entry, model_store, digest, source, choice, names)
    log.info("%s: built %s from %s", entry.name, target.name, source.describe())
    return BuildResult(entry.name, target, True, source.describe(), names, choice.backend, source.data)


def _check_hub_commit(entry: ModelEntry, source: Source) -> None:
    """Log which Hub commit is built: the pinned one (the snapshot must be it), or, unpinned,
    the one the main branch pointed at, with how to pin it."""
    assert source.path is not None
    commit = snapshot_commit(source.path)
    if source.revision:
        log.info("%s: %s at pinned revision %s", entry.name, source.hub_id, source.revision)
        if commit and commit != source.revision:
            raise ConfigError(f"{entry.name}: asked {source.hub_id} for {source.revision}, got {commit}")
    else:
        log.warning(
            "%s: %s has no pinned revision; building commit %s of its main branch (pin it in "
            "models.yaml: python -m modelserver pin-revisions)",
            entry.name,
            source.hub_id,
            commit or "unknown",
        )


def _refuse_links_out(entry: ModelEntry, source: Source) -> None:
    """A model folder may not link outside itself; a Hub snapshot's files link into its
    cache's blobs/, which is allowed."""
    if source.path is None or not source.path.is_dir():
        return
    within = [source.path.parents[1]] if source.hub_id else []
    if leaving := links_leaving(source.path, within):
        shown = ", ".join(str(link.relative_to(source.path)) for link in leaving[:5])
        raise ConfigError(f"{entry.name}: the model folder has links that point outside it: {shown}")


def links_leaving(folder: Path, within: Sequence[Path] = ()) -> list[Path]:
    """Symbolic links under `folder` whose targets are outside it (and outside `within`): the
    archiver copies what a link points to, so such a link would pack a file from elsewhere on
    the build machine into the archive."""
    roots = [root.resolve() for root in (folder, *within)]
    leaving = []
    for path in sorted(folder.rglob("*")):  # does not descend into linked folders
        if path.is_symlink():
            target = path.resolve()
            if not any(target == root or root in target.parents for root in roots):
                leaving.append(path)
    return leaving


def _stage_folder(model_folder: Path, workdir: Path) -> Path:
    """A folder holding `model` (a link to the source folder): the archiver copies a folder's
    contents to the archive root, and the export writes `compiled/` beside `model`."""
    holder = workdir / "holder"
    holder.mkdir()
    (holder / MODEL_SUBDIR).symlink_to(model_folder, target_is_directory=True)
    return holder


def _compile(entry: ModelEntry, holder: Path, environ: Mapping[str, str]) -> BackendChoice:
    """Export and parity-check the forward pass in a child process (torch and OpenVINO stay
    out of the builder): the compiled backend if it passed, else eager with the reason."""
    if not compiles(entry):
        return BackendChoice(requested_backend(entry))
    command = [
        sys.executable,
        "-m",
        EXPORT_MODULE,
        "--kind",
        entry.kind,
        "--archive-dir",
        str(holder),
        "--settings",
        entry.settings.model_dump_json(by_alias=True, exclude_unset=True),
    ]
    try:
        result = subprocess.run(
            command,
            env=dict(environ),
            cwd=PROJECT_ROOT,
            stdin=subprocess.DEVNULL,  # never a terminal: no tool in the export may prompt
            capture_output=True,
            text=True,
            check=False,
            timeout=EXPORT_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        reason = f"the export took over {EXPORT_TIMEOUT_S} s"
    else:
        report = _parity_report(holder) if result.returncode == 0 else None
        if report is not None and report.get("passed"):
            backend = requested_backend(entry)
            log.info("%s: %s graph exported, parity passed: %s", entry.name, backend, report["summary"])
            return BackendChoice(backend, str(report["summary"]))
        lines = result.stderr.strip().splitlines()
        last = lines[-1] if lines else "no message"
        reason = (
            f"{last} (exit code {result.returncode})" if result.returncode else "no passing parity report"
        )
    shutil.rmtree(holder / COMPILED_SUBDIR, ignore_errors=True)
    log.warning("%s: serving with PyTorch eager: %s", entry.name, reason)
    return BackendChoice("torch", reason, fell_back=True)


def _parity_report(holder: Path) -> dict[str, object] | None:
    """The report the export wrote beside its graph (None if absent or unreadable)."""
    try:
        report = json.loads((holder / COMPILED_SUBDIR / PARITY_REPORT).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) else None


def _recorded_choice(entry: ModelEntry, model_store: Path) -> BackendChoice:
    try:
        record = json.loads(_record_path(entry, model_store).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return BackendChoice()
    return BackendChoice(
        str(record.get("runtime", "")), str(record.get("runtime_note", "")), bool(record.get("fell_back"))
    )


def recorded_trained_on(entry: ModelEntry, model_store: Path) -> str:
    """What the archive in `model_store` was trained on, as its build recorded it ('' if
    unknown): what a launcher serving the store as it is (`--no-build`) reports."""
    try:
        note = json.loads(_record_path(entry, model_store).read_text(encoding="utf-8")).get("trained_on")
    except (OSError, ValueError, AttributeError):
        return ""
    return note if isinstance(note, str) else ""


def recorded_names(entry: ModelEntry, model_store: Path) -> tuple[str, ...]:
    """The names the archive in `model_store` answers to, as its build recorded them (empty if
    it has no record): what a launcher serving the store as it is (`--no-build`) routes by."""
    try:
        names = json.loads(_record_path(entry, model_store).read_text(encoding="utf-8")).get("served_names")
    except (OSError, ValueError, AttributeError):
        return ()
    return tuple(str(name) for name in names) if isinstance(names, list) else ()


def _write_record(  # pylint: disable=too-many-arguments,too-many-positional-arguments
    entry: ModelEntry,
    model_store: Path,
    digest: str,
    source: Source,
    choice: BackendChoice,
    names: tuple[str, ...],
) -> None:
    record = _record_path(entry, model_store)
    record.parent.mkdir(exist_ok=True)
    fields: dict[str, object] = {"fingerprint": digest, "source": source.describe()}
    fields["runtime"] = choice.backend  # the record keeps its published field name
    if source.hub_id and source.path is not None:
        # What was built, pinned or not: the revision to pin, or to compare with models.yaml.
        fields.update(hub_id=source.hub_id, hub_revision=snapshot_commit(source.path))
        fields.update(hub_pinned=source.revision is not None)
    fields.update(runtime_note=choice.note, fell_back=choice.fell_back, served_names=list(names))
    if source.data:
        fields["trained_on"] = source.data
    record.write_text(json.dumps(fields, indent=2), encoding="utf-8")


def _materialise_source(entry: ModelEntry, source: Source, workdir: Path) -> Path:
    if source.recipe:
        output = workdir / f"{entry.name}.model"
        try:
            scores = run_recipe(source.recipe, output, source.inputs)
        except SourceUnavailable as error:
            # The recipe downloads because the files were not there: the reason says both.
            why = f"{source.download_reason}; {error}" if source.download_reason else str(error)
            raise SourceUnavailable(why) from None
        log.info("%s: trained with %s: %s", entry.name, source.recipe, scores)
        return output
    assert source.path is not None
    if not source.path.exists():
        raise ConfigError(f"{entry.name}: source {source.path} does not exist")
    return source.path


def _run_archiver(
    entry: ModelEntry,
    model_file: Path,
    config_file: Path,
    workdir: Path,
    model_store: Path,
    root: Path,
    environ: Mapping[str, str],
) -> None:
    target = archive_path(entry, model_store)
    if target.is_dir():
        shutil.rmtree(target)
    options = {
        "--model-name": entry.name,
        "--version": "1.0",
        "--handler": HANDLER,
        "--config-file": config_file,
        "--export-path": model_store,
        "--archive-format": entry.archive_format,
    }
    extra_files = [root / f for f in entry.extra_files]
    if model_file.is_dir():
        extra_files.append(model_file)  # the staged folder: model/ (and compiled/)
    else:
        options["--serialized-file"] = model_file
    command = [sys.executable, "-m", "model_archiver.model_packaging", "--force"]
    for option, value in options.items():
        command += [option, str(value)]
    if extra_files:
        command += ["--extra-files", ",".join(map(str, extra_files))]
    # The archiver stages files in $TMPDIR/<model name>: give each build its own.
    env = {**environ, "TMPDIR": str(workdir)}
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ConfigError(f"{entry.name}: torch-model-archiver failed: {result.stderr.strip()[-2000:]}")

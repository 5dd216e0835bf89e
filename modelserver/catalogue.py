"""The model catalogue (`models.yaml`), parsed once into typed entries."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from modelserver.errors import ConfigError, SourceUnavailable
from modelserver.kinds.kind import Kind
from modelserver.kinds.registry import KINDS
from modelserver.project import PROJECT_ROOT
from modelserver.training import RECIPES
from modelserver.validation import first_problem

DEFAULT_CATALOGUE = PROJECT_ROOT / "models.yaml"


# TorchServe's `job_queue_size` (config.properties): the requests one model may hold. Envoy
# never admits more than this to a model, so TorchServe's misleading "no worker" 503 does not
# show under load (only if clients that gave up leave jobs behind in TorchServe's queue).
TORCHSERVE_JOB_QUEUE = 100

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
# A Hub revision is a full commit id: a branch or a tag can be moved under a build, a commit cannot.
HUB_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def catalogue_problem(error: ValidationError) -> str:
    """The first problem of a catalogue (or of a part of it), where it is: a check of a whole
    part (no location) says its own sentence, without pydantic's "Value error," before it."""
    problems = error.errors(include_url=False)
    if problems and problems[0]["type"] == "value_error" and not problems[0]["loc"]:
        return str(problems[0]["ctx"]["error"])
    return first_problem(error)


class InputSpec(BaseModel):
    """A data file a recipe reads: `$env` if set, else `default` (relative to the repository)."""

    model_config = ConfigDict(extra="forbid")

    env: str
    default: str | None = None


class DownloadSpec(BaseModel):
    """Data a recipe downloads itself when its `inputs` files are absent. `$env` chooses:
    unset or `auto`, the files where they are, else the download; `files`, never download;
    `name`, the download even where the files are."""

    model_config = ConfigDict(extra="forbid")

    env: str
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")


class SourceSpec(BaseModel):
    """Where a model comes from: a user's variable, else a default file, Hub id or recipe."""

    model_config = ConfigDict(extra="forbid")

    inputs: dict[str, InputSpec] = Field(default_factory=dict)  # data a recipe trains on
    download: DownloadSpec | None = None  # what a recipe fetches without its input files
    env: str | None = None
    default: str | None = None  # a file or folder, relative to the repository
    hub: str | None = None  # a Hugging Face Hub id, fetched at build time
    # The Hub commit `hub` is built from; `python -m modelserver pin-revisions` sets it.
    revision: str | None = None
    recipe: str | None = None  # trained by the project

    @field_validator("revision")
    @classmethod
    def _revision_is_a_commit(cls, value: str | None) -> str | None:
        """Only a full commit id pins: `main` or a tag would let the Hub change what is built."""
        if value is not None and not HUB_COMMIT.fullmatch(value):
            raise ValueError(
                f"revision {value!r} is not a full 40-hex commit id (a branch or tag can move);"
                " set it with `python -m modelserver pin-revisions`"
            )
        return value

    @model_validator(mode="after")
    def _has_one_fallback(self) -> SourceSpec:
        if sum(x is not None for x in (self.default, self.hub, self.recipe)) != 1:
            raise ValueError("give exactly one of 'default', 'hub' or 'recipe'")
        if self.revision is not None and self.hub is None:
            raise ValueError("'revision' pins a 'hub' model; a local file or recipe has none")
        if self.recipe is not None and self.recipe not in RECIPES:
            raise ValueError(f"unknown recipe {self.recipe!r}; known: {sorted(RECIPES)}")
        if self.download is not None and (self.recipe is None or not self.inputs):
            raise ValueError("'download' stands in for a recipe's 'inputs'; give both")
        return self


class TorchServeSettings(BaseModel):
    """TorchServe's per-model settings, written into model-config.yaml as they are."""

    model_config = ConfigDict(extra="forbid")

    minWorkers: int = Field(default=1, ge=1)
    maxWorkers: int = Field(default=1, ge=1)
    batchSize: int = Field(default=1, ge=1)
    maxBatchDelay: int = Field(default=5, ge=1)  # 0 is silently turned into 100 by TorchServe
    responseTimeout: int = Field(default=30, ge=1)

    @model_validator(mode="after")
    def _workers_in_order(self) -> TorchServeSettings:
        if self.maxWorkers < self.minWorkers:  # TorchServe would ignore minWorkers
            raise ValueError("maxWorkers must be >= minWorkers")
        return self


class AdmissionSettings(BaseModel):
    """How much of one model's traffic Envoy admits: `concurrency` requests at TorchServe at
    once and `queue` more waiting in Envoy. A request beyond both is refused at once with 503
    and Retry-After, so under overload the accepted ones keep a bounded wait and memory stays
    flat. Unset, `concurrency` is two full batches per worker (one running, one forming) and
    `queue` four times that."""

    model_config = ConfigDict(extra="forbid")

    concurrency: int | None = Field(default=None, ge=1, le=TORCHSERVE_JOB_QUEUE)
    # At least 1: over HTTP/1.1 a request waiting for a new connection to open is pending too.
    queue: int | None = Field(default=None, ge=1, le=10_000)


# A model's version: what the `x-model-version` header names, on answers and to pin one.
VERSION_PATTERN = r"^[0-9A-Za-z][0-9A-Za-z._-]{0,31}$"
# A candidate is served as a model of its own under its primary's name and this suffix, which
# no catalogue name may contain (`__` is refused in names).
CANDIDATE_SUFFIX = "__candidate"


def candidate_name(model: str) -> str:
    """The name a model's candidate is built and registered under."""
    return f"{model}{CANDIDATE_SUFFIX}"


class RollbackPolicy(BaseModel):
    """When the launcher moves every request back to the primary on its own: over the last
    `window` requests of each version (and once the candidate has `min_requests`), the
    candidate's 5xx share above the primary's by more than `max_error_rate_increase`, its p99
    above `max_p99_ratio` times the primary's (and above `p99_floor_ms`, below which the
    difference is noise), or, in shadow, its agreement with the primary below `min_agreement`."""

    model_config = ConfigDict(extra="forbid")

    window: int = Field(default=100, ge=5, le=10_000)
    min_requests: int = Field(default=20, ge=1)
    max_error_rate_increase: float = Field(default=0.01, ge=0, le=1)
    max_p99_ratio: float | None = Field(default=2.0, gt=1)
    p99_floor_ms: float = Field(default=50.0, ge=0)
    min_agreement: float | None = Field(default=None, ge=0, le=1)

    @model_validator(mode="after")
    def _judged_within_the_window(self) -> RollbackPolicy:
        if self.min_requests > self.window:
            raise ValueError("min_requests must be at most window")
        return self


class TrafficPolicy(BaseModel):
    """How a model's requests are shared with its candidate: `canary` percent answered by the
    candidate, `shadow` percent of the primary's also sent to the candidate (answers compared,
    never returned), and when to roll back on its own. Changed while serving with
    `python -m modelserver traffic`; these are the values at start."""

    model_config = ConfigDict(extra="forbid")

    canary: int = Field(default=0, ge=0, le=100)
    shadow: int = Field(default=0, ge=0, le=100)
    rollback: RollbackPolicy = Field(default_factory=RollbackPolicy)
    # Shadow pairs compared at once per model; a mirrored request beyond them is counted, skipped.
    shadow_concurrency: int = Field(default=2, ge=1, le=16)


class CandidateSpec(BaseModel):
    """The next version of a model: another source of the same kind, served beside it on the
    same routes. `handler_config` and `torchserve` default to the primary's."""

    model_config = ConfigDict(extra="forbid")

    version: str = Field(pattern=VERSION_PATTERN)
    source: SourceSpec
    handler_config: dict[str, Any] | None = None
    torchserve: TorchServeSettings | None = None


class ModelEntry(BaseModel):
    """One catalogue entry: everything needed to build and serve one model."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    version: str = Field(default="1", pattern=VERSION_PATTERN)
    kind: str  # a name in the kind registry: how the model is loaded and what it answers
    source: SourceSpec
    extra_files: list[str] = Field(default_factory=list)
    handler_config: dict[str, Any] = Field(default_factory=dict)
    torchserve: TorchServeSettings = Field(default_factory=TorchServeSettings)
    archive_format: Literal["default", "no-archive"] = "default"
    aliases: list[str] = Field(default_factory=list)  # other names a request may use (Hub ids)
    admission: AdmissionSettings = Field(default_factory=AdmissionSettings)
    candidate: CandidateSpec | None = None
    traffic: TrafficPolicy = Field(default_factory=TrafficPolicy)
    # `handler_config` parsed by the kind's settings model, once, when the entry loads.
    _settings: BaseModel = PrivateAttr()
    # A candidate's primary's names (it answers to them too); empty for an entry of the file.
    _stands_in_for: tuple[str, ...] = PrivateAttr(default=())

    @model_validator(mode="after")
    def _extra_files_stay_put(self) -> ModelEntry:
        """An extra file is named where it is: `..` could reach any file of the build machine."""
        for name in self.extra_files:
            if ".." in Path(name).parts:
                raise ValueError(f"extra file {name!r} has a '..' part; name the file where it is")
        return self

    @model_validator(mode="after")
    def _settings_fit_the_kind(self) -> ModelEntry:
        """A typo in `handler_config` fails here, when the catalogue loads, naming the field;
        not later inside a model worker."""
        if self.kind not in KINDS:
            raise ValueError(f"kind {self.kind!r} is not one of {sorted(KINDS)}")
        try:
            self._settings = KINDS[self.kind].settings.model_validate(self.handler_config)
        except ValidationError as error:
            raise ValueError(f"handler_config.{first_problem(error)}") from None
        return self

    @model_validator(mode="after")
    def _traffic_needs_a_candidate(self) -> ModelEntry:
        """A share for a candidate that does not exist is a mistake, not a no-op; a candidate
        is checked as the entry it becomes, now."""
        if self.candidate is None and (self.traffic.canary or self.traffic.shadow):
            raise ValueError("traffic: 'canary' and 'shadow' need a 'candidate'")
        if self.candidate is not None and self.candidate.version == self.version:
            raise ValueError(f"candidate.version {self.version!r} is the primary's version too")
        self.candidate_entry()
        return self

    def candidate_entry(self) -> ModelEntry | None:
        """The candidate as an entry of its own (what is built and registered), or None: the
        primary's entry with the candidate's version and source, and its settings if given."""
        if self.candidate is None:
            return None
        spec = self.candidate
        fields = self.model_dump(exclude={"name", "version", "source", "candidate", "traffic"})
        fields["admission"] = {}  # from the candidate's own batch size and workers
        if spec.handler_config is not None:
            fields["handler_config"] = spec.handler_config
        if spec.torchserve is not None:
            fields["torchserve"] = spec.torchserve.model_dump()
        try:
            candidate = ModelEntry.model_validate(
                {
                    **fields,
                    "name": candidate_name(self.name),
                    "version": spec.version,
                    "source": spec.source.model_dump(exclude_none=True),
                }
            )
        except ValidationError as error:
            raise ValueError(f"candidate.{catalogue_problem(error)}") from None
        candidate._stands_in_for = tuple(self.served_names())  # pylint: disable=protected-access
        return candidate

    @property
    def settings(self) -> BaseModel:
        """`handler_config` as the kind's typed settings (parsed when the entry loaded)."""
        return self._settings

    @property
    def kind_declared(self) -> Kind:
        """The kind this entry names, as its package declares it."""
        return KINDS[self.kind]

    def served_names(self, hub_id: str | None = None) -> list[str]:
        """Names a request may use for this model: its served name, then the Hub ids of what
        it holds. A Hub id brought through the variable (`hub_id`) is a different model: only
        that id names it. A local folder is taken to be a copy of the catalogue's model (an
        offline mirror), so the catalogue's aliases and Hub id still apply. A candidate also
        answers to every name of its primary (a body naming the model may reach either)."""
        if hub_id and hub_id != self.source.hub:
            own = [self.name, hub_id]
        else:
            own = [self.name, *self.aliases, *([self.source.hub] if self.source.hub else [])]
        return list(dict.fromkeys([*own, *self._stands_in_for]))

    @model_validator(mode="after")
    def _admission_defaults(self) -> ModelEntry:
        """Fill the unset limits from the batch size and workers, so every entry has both."""
        if self.admission.concurrency is None:
            running = 2 * self.torchserve.batchSize * self.torchserve.maxWorkers
            self.admission.concurrency = min(running, TORCHSERVE_JOB_QUEUE)
        if self.admission.queue is None:
            self.admission.queue = 4 * self.admission.concurrency
        return self


@dataclass(frozen=True)
class Source:
    """A resolved source: a file or folder to package, a Hub id to fetch, or a recipe to run."""

    path: Path | None = None
    hub_id: str | None = None
    recipe: str | None = None
    origin: str = "default"
    inputs: dict[str, Path] = field(default_factory=dict)
    revision: str | None = None  # the Hub commit asked for (None: the Hub's main branch)
    download: str | None = None  # the data set a recipe downloads instead of reading `inputs`
    download_reason: str = ""  # why it downloads: the input files it could not have
    data: str = ""  # what a recipe trains on, for clients (/healthcheck): file names, no paths

    def describe(self) -> str:
        """Human wording for logs and build records."""
        if self.recipe:
            on = f", on {self.data}" if self.data else ""
            return f"recipe {self.recipe} ({self.origin}{on})"
        if self.hub_id:
            at = f"@{self.revision[:12]}" if self.revision else ""
            return f"Hub {self.hub_id}{at} ({self.origin})"
        return f"{self.path} ({self.origin})"


def resolve_source(entry: ModelEntry, environ: Mapping[str, str], root: Path = PROJECT_ROOT) -> Source:
    """Pick the model source: `$ENV` if set (a path that exists, or a Hub id where the model
    comes from the Hub), else the catalogue default. The catalogue's revision pins its own Hub
    id only: another id brought through the variable is another model, fetched from its main
    branch (the build logs and records the commit it got)."""
    spec = entry.source
    chosen = environ.get(spec.env, "") if spec.env else ""
    if chosen:
        path = Path(chosen).expanduser()
        if path.exists():
            return Source(path=path.resolve(), origin=f"from {spec.env}")
        if spec.hub is not None and HUB_ID.match(chosen) and not chosen.startswith((".", "/")):
            revision = spec.revision if chosen == spec.hub else None
            return Source(hub_id=chosen, origin=f"from {spec.env}", revision=revision)
        raise ConfigError(f"{spec.env}={chosen} does not exist")
    if spec.recipe:
        return _recipe_source(spec, environ, root)
    if spec.hub:
        return Source(hub_id=spec.hub, origin="catalogue default", revision=spec.revision)
    return Source(path=(root / str(spec.default)).resolve(), origin="catalogue default")


def _recipe_source(spec: SourceSpec, environ: Mapping[str, str], root: Path) -> Source:
    """A recipe's data: its input files, else, where the entry has a `download` and the user
    named none of the files, the data set the recipe downloads (`$download.env` decides)."""
    assert spec.recipe is not None
    trained = Source(recipe=spec.recipe, origin="trained by the project")
    download = spec.download
    if download is None:
        inputs = _recipe_inputs(spec, environ, root)
        return replace(trained, inputs=inputs, data=_inputs_note(spec, environ, inputs))
    choice = environ.get(download.env, "") or "auto"
    if choice not in ("auto", "files", download.name):
        raise ConfigError(f"{download.env}={choice} is not one of auto, files, {download.name}")
    named = [wanted.env for wanted in spec.inputs.values() if environ.get(wanted.env)]
    if choice == download.name:
        if named:
            raise ConfigError(f"{download.env}={choice} and {', '.join(named)} both name the data; set one")
        return replace(
            trained, download=download.name, data=f"the {download.name} download ({download.env}={choice})"
        )
    try:
        inputs = _recipe_inputs(spec, environ, root)
    except SourceUnavailable as missing:
        if named or choice == "files":
            no_download = f"{download.env}=files: no {download.name} download" if choice == "files" else ""
            raise SourceUnavailable(f"{missing}; {no_download}".rstrip("; ")) from None
        files = " and ".join(wanted.env for wanted in spec.inputs.values())
        return replace(
            trained,
            download=download.name,
            download_reason=str(missing),
            data=f"the {download.name} download (no {files} files)",
        )
    return replace(trained, inputs=inputs, data=_inputs_note(spec, environ, inputs))


def _inputs_note(spec: SourceSpec, environ: Mapping[str, str], inputs: dict[str, Path]) -> str:
    """Which files a recipe reads, by name (a client sees this; paths stay in the log)."""
    return ", ".join(
        f"{inputs[name].name} ({'from ' + wanted.env if environ.get(wanted.env) else 'catalogue default'})"
        for name, wanted in spec.inputs.items()
    )


def _recipe_inputs(spec: SourceSpec, environ: Mapping[str, str], root: Path) -> dict[str, Path]:
    """Each data file a recipe reads; a missing default skips the model, a missing `$env` fails."""
    found = {}
    for name, wanted in spec.inputs.items():
        chosen = environ.get(wanted.env, "")
        if chosen:
            path = Path(chosen).expanduser()
            if not path.is_file():
                raise ConfigError(f"{wanted.env}={chosen} is not a file")
        else:
            path = root / str(wanted.default) if wanted.default else Path()
            if not wanted.default or not path.is_file():
                needed = " and ".join(w.env for w in spec.inputs.values())
                raise SourceUnavailable(f"no {name} data ({wanted.default or 'no default'}); set {needed}")
        found[name] = path.resolve()
    return found


class RouteSpec(BaseModel):
    """A public path and the model that answers it.

    `model` answers by default. `select_by` names a body field that picks the model instead:
    among `choices` (value -> model) if given, else among every served model by name or alias.
    """

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    select_by: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    choices: dict[str, str] | None = None
    timeout_s: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _answerable(self) -> RouteSpec:
        if self.model is None and not self.choices:
            raise ValueError("a route needs a 'model' or 'select_by' with 'choices'")
        if self.choices and not self.select_by:
            raise ValueError("'choices' needs 'select_by'")
        return self


class Catalogue(BaseModel):
    """All models, by name."""

    model_config = ConfigDict(extra="forbid")

    models: dict[str, ModelEntry]
    routes: dict[str, RouteSpec] = Field(default_factory=dict)
    # Every model built and registered: each entry, then its candidate if it has one.
    _registrations: dict[str, ModelEntry] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _register_candidates(self) -> Catalogue:
        """The candidates as entries of their own, checked now: a typo in one fails the load."""
        registrations: dict[str, ModelEntry] = {}
        for name, entry in self.models.items():
            if "__" in name:
                raise ValueError(f"model name {name!r} has '__', which names candidates ({CANDIDATE_SUFFIX})")
            registrations[name] = entry
            if (candidate := entry.candidate_entry()) is not None:
                registrations[candidate.name] = candidate
        self._registrations = registrations
        return self

    @property
    def registrations(self) -> dict[str, ModelEntry]:
        """Every model built and served under its own name: the entries and their candidates."""
        return dict(self._registrations)

    def registered_as(self, model: str) -> list[str]:
        """The names `model` is built and served under: its own, then its candidate's."""
        entry = self.entry(model)
        return [model, *([candidate_name(model)] if entry.candidate is not None else [])]

    def candidates(self) -> dict[str, ModelEntry]:
        """Model name -> its candidate's entry, for the models that have one."""
        return {
            name: self._registrations[candidate_name(name)]
            for name, entry in self.models.items()
            if entry.candidate is not None
        }

    @model_validator(mode="after")
    def _routes_name_models(self) -> Catalogue:
        for path, route in self.routes.items():
            if not re.fullmatch(r"/[a-z][a-z0-9_-]*", path):
                raise ValueError(f"route {path!r} must look like /name")
            for target in [route.model, *(route.choices or {}).values()]:
                if target is not None and target not in self.models:
                    raise ValueError(f"route {path} names unknown model {target!r}")
        return self

    @classmethod
    def load(cls, path: Path = DEFAULT_CATALOGUE) -> Catalogue:
        """Parse and validate a catalogue file; a bad one fails with the first problem."""
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as error:
            raise ConfigError(f"cannot read catalogue {path}: {error}") from None
        if isinstance(raw, dict) and isinstance(raw.get("models"), dict):
            for name, entry in raw["models"].items():
                if isinstance(entry, dict):
                    entry.setdefault("name", name)
                    if "handler" in entry and "kind" not in entry:
                        raise ConfigError(
                            f"{path}: models.{name}: 'handler' is now 'kind', one of {sorted(KINDS)};"
                            " every archive gets handlers/model_handler.py"
                        )
        try:
            return cls.model_validate(raw)
        except ValidationError as error:
            raise ConfigError(f"{path}: {catalogue_problem(error)}") from None

    def entry(self, name: str) -> ModelEntry:
        """The entry (or candidate) called `name`, or a `ConfigError` listing the known ones."""
        if name not in self._registrations:
            raise ConfigError(f"no model {name!r} in the catalogue; known: {sorted(self._registrations)}")
        return self._registrations[name]

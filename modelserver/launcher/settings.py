"""Launcher settings: parsed once from the command line, `PORT`, `METRICS_PORT` and the
OpenTelemetry variables, never re-read later.

Each setting is declared once, on its field: its type, bounds and default, and (`Option`) its
command-line option, help and environment variable. The parser is built from the fields, and a
bad value is one line naming the option or variable that gave it, exit 2.
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from modelserver.catalogue import DEFAULT_CATALOGUE
from modelserver.errors import ConfigError
from modelserver.launcher.tracing_settings import TracingSettings, tracing_from_environment
from modelserver.project import PROJECT_ROOT


@dataclass(frozen=True)
class Option:
    """A setting's command-line option (and environment variable, which the option overrides)."""

    flag: str
    help: str
    variable: str | None = None
    per_unit: int = 1  # the field holds the option's value times this (MiB given, bytes kept)
    many: bool = False  # any number of values
    switch_off: bool = False  # a flag that turns a setting that is on by default off


Port = Annotated[int, Field(ge=1, le=65535)]
# Every log file the stack writes (the children's output, Envoy's access log, TorchServe's own
# log4j2 files) is rotated at about LOG_FILE_BYTES, keeping LOG_FILES_KEPT older files: at most
# (LOG_FILES_KEPT + 1) x LOG_FILE_BYTES each. `--log-file-mib`, `--log-files-kept` tune them.
LOG_FILE_BYTES = 10 << 20
LOG_FILES_KEPT = 3
MIB = 1 << 20


def _loopback(what: str) -> str:
    return f"{what} (loopback only)"


class Ports(BaseModel):
    """Every TCP port the stack listens on, no two the same. Only `public` (the API) and
    `prometheus` (GET /metrics) are reachable from other machines."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    public: Annotated[Port, Option("--port", "the public port: the API", "PORT")] = 3000
    prometheus: Annotated[
        Port, Option("--prometheus-port", "GET /metrics and /healthcheck for the kubelet", "METRICS_PORT")
    ] = 3001
    inference: Annotated[Port, Option("--inference-port", _loopback("TorchServe's inference API"))] = 9080
    management: Annotated[Port, Option("--management-port", _loopback("TorchServe's management API"))] = 9081
    metrics: Annotated[Port, Option("--metrics-port", _loopback("TorchServe's metrics"))] = 9082
    grpc_inference: Annotated[
        Port, Option("--grpc-inference-port", _loopback("TorchServe's gRPC inference"))
    ] = 9070
    grpc_management: Annotated[
        Port, Option("--grpc-management-port", _loopback("TorchServe's gRPC management"))
    ] = 9071
    health: Annotated[Port, Option("--health-port", _loopback("the launcher's health and pages"))] = 9090

    @model_validator(mode="after")
    def _each_port_once(self) -> Ports:
        """Two listeners on one port: the second would fail at start, after the first started."""
        for first, second in itertools.combinations(type(self).model_fields, 2):
            if getattr(self, first) == getattr(self, second):
                raise PydanticCustomError(
                    "port_collision",
                    "{first} and {second} are both {port}",
                    {"first": first, "second": second, "port": getattr(self, first)},
                )
        return self


class LaunchSettings(BaseModel):
    """What the launcher serves, where, and how long it waits."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ports: Ports = Field(default_factory=Ports)
    listen_address: Annotated[str, Option("--listen-address", "the address the public ports listen on")] = (
        "0.0.0.0"
    )
    catalogue: Annotated[Path, Option("--catalogue", "the model catalogue")] = DEFAULT_CATALOGUE
    # Empty: every model in the catalogue.
    models: Annotated[
        tuple[str, ...], Option("--models", "serve only these models (default: all)", many=True)
    ] = ()
    model_store: Annotated[Path, Option("--model-store", "where the archives are built")] = (
        PROJECT_ROOT / "model_store"
    )
    runtime_dir: Annotated[Path, Option("--runtime-dir", "the run folder: logs, sockets, configs")] = (
        PROJECT_ROOT / "run"
    )
    build: Annotated[bool, Option("--no-build", "use the archives as they are", switch_off=True)] = True
    startup_timeout_s: Annotated[
        float, Option("--startup-timeout", "seconds to wait for every model to be ready")
    ] = Field(default=180.0, gt=0)
    # A candidate that is not ready this long after its primary gets no traffic (rolled back).
    candidate_grace_s: Annotated[
        float, Option("--candidate-grace", "seconds a candidate may take to load after its primary")
    ] = Field(default=60.0, ge=0)
    # On a stop: /healthcheck answers 503 for this long before Envoy drains, so load balancers
    # stop sending traffic first; then in-flight requests get up to drain_timeout_s to finish.
    unready_delay_s: Annotated[
        float, Option("--unready-delay", "seconds of 503 health before draining on a stop")
    ] = Field(default=1.0, ge=0)
    drain_timeout_s: Annotated[
        float, Option("--drain-timeout", "seconds in-flight requests get to finish on a stop")
    ] = Field(default=15.0, ge=0)
    # Client connections Envoy holds at once; more are closed as they arrive (each may buffer a
    # 1 MiB body, so this also bounds Envoy's memory).
    # ~8 KB of Envoy's heap per idle connection, ~20 KB while a request dribbles in, ~30 KB once
    # it has served one: 16,384 fit the 768 MiB heap, and a crowd of slow connections from one
    # machine fits beside everyone else (docs/operations.md, "Limits, overload and faults").
    max_connections: Annotated[int, Option("--max-connections", "client connections Envoy holds at once")] = (
        Field(default=16_384, ge=16, le=100_000)
    )
    # Envoy's worker threads. Its default is one per hardware thread, which in a container is the
    # node's, not the pod's CPU limit; two carry ~4,000 requests/s here (docs/BENCHMARKS.md).
    envoy_workers: Annotated[int, Option("--envoy-workers", "Envoy's worker threads")] = Field(
        default=2, ge=1, le=64
    )
    log_file_bytes: Annotated[
        int, Option("--log-file-mib", "rotate every log file at this size (MiB)", per_unit=MIB)
    ] = Field(default=LOG_FILE_BYTES, ge=4096)
    log_files_kept: Annotated[int, Option("--log-files-kept", "rotated files kept per log")] = Field(
        default=LOG_FILES_KEPT, ge=1, le=100
    )
    # How long TorchServe's keys live (its token_expiration_min); None: config.properties's.
    # The launcher renews them when half of that has passed.
    key_lifetime_min: Annotated[
        float | None,
        Option(
            "--key-lifetime-min",
            "minutes TorchServe's keys live (renewed at half); default: config.properties",
        ),
    ] = Field(default=None, gt=0)
    # Envoy's OpenTelemetry tracing, from OTEL_EXPORTER_OTLP_ENDPOINT and its kin; None: off.
    tracing: TracingSettings | None = None

    @property
    def envoy_admin_socket(self) -> Path:
        """Envoy's admin interface: a unix socket, never a TCP port."""
        return self.runtime_dir / "envoy" / "admin.sock"

    @property
    def shadow_socket(self) -> Path:
        """Where the launcher compares mirrored (shadow) requests: a unix socket Envoy sends to."""
        return self.runtime_dir / "shadow.sock"


LAUNCHER_HELP = (
    "Serve the catalogue's models: TorchServe on loopback, Envoy on the public port "
    "(`PORT`, default 3000, or --port); every other port is loopback-only."
)
SettingPath = tuple[str, ...]  # where a setting is: ("ports", "public")


@dataclass(frozen=True)
class Declared:
    """A setting with an option: where it is, its option, its default."""

    path: SettingPath
    option: Option
    default: Any

    @property
    def dest(self) -> str:
        """Its name among the parsed arguments."""
        return "/".join(self.path)


def declared_options(model: type[BaseModel] = LaunchSettings, at: SettingPath = ()) -> Iterator[Declared]:
    """Every setting with an option, in the order of the fields."""
    for name, info in model.model_fields.items():
        option = next((item for item in info.metadata if isinstance(item, Option)), None)
        if option is not None:
            yield Declared((*at, name), option, info.get_default(call_default_factory=True))
        elif isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            yield from declared_options(info.annotation, (*at, name))


def _parser(prog: str) -> argparse.ArgumentParser:
    """The command line, built from the declared options."""
    parser = argparse.ArgumentParser(prog=prog, description=LAUNCHER_HELP)
    for setting in declared_options():
        option, default = setting.option, setting.default
        shown = default / option.per_unit if isinstance(default, int) and option.per_unit != 1 else default
        said = [] if default in ((), None) else [f"default: {shown}"]
        said += [f"or {option.variable}"] if option.variable else []
        kwargs: dict[str, Any] = {"dest": setting.dest, "default": argparse.SUPPRESS}
        if option.switch_off:
            parser.add_argument(option.flag, action="store_const", const=False, help=option.help, **kwargs)
            continue
        kwargs["metavar"] = option.flag.removeprefix("--").replace("-", "_").upper()
        if option.many:
            kwargs["nargs"] = "*"
        parser.add_argument(
            option.flag, help=option.help + (f" ({'; '.join(said)})" if said else ""), **kwargs
        )
    return parser


def _refuse(parser: argparse.ArgumentParser, message: str) -> NoReturn:
    """One line on stderr, exit 2: no usage block, no traceback."""
    parser.exit(2, f"{parser.prog}: error: {message}\n")


def _given(
    parser: argparse.ArgumentParser, argv: list[str] | None, environ: Mapping[str, str]
) -> tuple[dict[str, Any], dict[SettingPath, str]]:
    """The values given (options over variables) as nested fields, and what gave each one."""
    given = vars(parser.parse_args(argv))
    values: dict[str, Any] = {}
    sources: dict[SettingPath, str] = {}
    for setting in declared_options():
        option = setting.option
        if setting.dest in given:
            raw, source = given[setting.dest], option.flag
        elif option.variable and option.variable in environ:
            raw, source = environ[option.variable], option.variable
        else:
            continue
        if option.per_unit != 1:
            try:
                raw = round(float(raw) * option.per_unit)
            except ValueError:
                _refuse(parser, f"{source} {raw!r}: not a number")
        sources[setting.path] = source
        target = values
        for part in setting.path[:-1]:
            target = target.setdefault(part, {})
        target[setting.path[-1]] = raw
    return values, sources


def _explain(problem: Any, sources: Mapping[SettingPath, str]) -> str:
    """A validation error as a sentence naming the option or variable that gave the value."""
    flags = {setting.path: setting.option.flag for setting in declared_options()}
    path = tuple(str(part) for part in problem["loc"])
    if problem["type"] == "port_collision":
        context = problem["ctx"]
        first, second = (
            sources.get(p, flags[p]) for p in ((*path, context["first"]), (*path, context["second"]))
        )
        return f"{first} and {second} are both {context['port']}: each port takes one listener"
    source = sources.get(path, flags.get(path, ".".join(path)))
    return f"{source} {problem['input']!r}: {problem['msg']}"


def settings_from_command_line(
    argv: list[str] | None, environ: Mapping[str, str], prog: str = "python -m modelserver.launcher"
) -> LaunchSettings:
    """Command line, `PORT`, `METRICS_PORT` and the OpenTelemetry variables -> typed settings
    (the only place the launcher reads them); every default is `LaunchSettings`'s own."""
    parser = _parser(prog)
    values, sources = _given(parser, argv, environ)
    try:
        values["tracing"] = tracing_from_environment(environ)
        return LaunchSettings.model_validate(values)
    except ConfigError as error:
        _refuse(parser, str(error))
    except ValidationError as error:
        _refuse(parser, _explain(error.errors()[0], sources))

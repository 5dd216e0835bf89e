"""Launcher settings: parsed once from the command line, `PORT`, `METRICS_PORT` and the
OpenTelemetry variables, never re-read later."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from modelserver.catalogue import DEFAULT_CATALOGUE
from modelserver.errors import ConfigError
from modelserver.launcher.tracing import TracingSettings, tracing_from_environment
from modelserver.project import PROJECT_ROOT

Port = int
# Every log file the stack writes (the children's output, Envoy's access log, TorchServe's own
# log4j2 files) is rotated at about LOG_FILE_BYTES, keeping LOG_FILES_KEPT older files: at most
# (LOG_FILES_KEPT + 1) x LOG_FILE_BYTES each. `--log-file-mib`, `--log-files-kept` tune them.
LOG_FILE_BYTES = 10 << 20
LOG_FILES_KEPT = 3


class Ports(BaseModel):
    """Every TCP port the stack listens on. Only `public` (the API) and `prometheus` (GET
    /metrics) are reachable from other machines."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    public: Port = Field(default=3000, ge=1, le=65535)
    prometheus: Port = Field(default=3001, ge=1, le=65535)
    inference: Port = 9080
    management: Port = 9081
    metrics: Port = 9082
    grpc_inference: Port = 9070
    grpc_management: Port = 9071
    health: Port = 9090


class LaunchSettings(BaseModel):
    """What the launcher serves, where, and how long it waits."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ports: Ports = Field(default_factory=Ports)
    listen_address: str = "0.0.0.0"
    catalogue: Path = DEFAULT_CATALOGUE
    models: tuple[str, ...] = ()  # empty: every model in the catalogue
    model_store: Path = PROJECT_ROOT / "model_store"
    runtime_dir: Path = PROJECT_ROOT / "run"
    build: bool = True
    startup_timeout_s: float = Field(default=180.0, gt=0)
    # On a stop: /healthcheck answers 503 for this long before Envoy drains, so load balancers
    # stop sending traffic first; then in-flight requests get up to drain_timeout_s to finish.
    unready_delay_s: float = Field(default=1.0, ge=0)
    drain_timeout_s: float = Field(default=15.0, ge=0)
    # Client connections Envoy holds at once; more are closed as they arrive (each may buffer a
    # 1 MiB body, so this also bounds Envoy's memory).
    # ~8 KB of Envoy's heap per idle connection, ~20 KB while a request dribbles in, ~30 KB once
    # it has served one: 16,384 fit the 768 MiB heap, and a crowd of slow connections from one
    # machine fits beside everyone else (docs/operations.md, "Limits, overload and faults").
    max_connections: int = Field(default=16_384, ge=16, le=100_000)
    # Envoy's worker threads. Its default is one per hardware thread, which in a container is the
    # node's, not the pod's CPU limit; two carry ~4,000 requests/s here (docs/BENCHMARKS.md).
    envoy_workers: int = Field(default=2, ge=1, le=64)
    log_file_bytes: int = Field(default=LOG_FILE_BYTES, ge=4096)
    log_files_kept: int = Field(default=LOG_FILES_KEPT, ge=1, le=100)
    # How long TorchServe's keys live (its token_expiration_min); None: config.properties's.
    # The launcher renews them when half of that has passed.
    key_lifetime_min: float | None = Field(default=None, gt=0)
    # Envoy's OpenTelemetry tracing, from OTEL_EXPORTER_OTLP_ENDPOINT and its kin; None: off.
    tracing: TracingSettings | None = None

    @property
    def envoy_admin_socket(self) -> Path:
        """Envoy's admin interface: a unix socket, never a TCP port."""
        return self.runtime_dir / "envoy" / "admin.sock"


LAUNCHER_HELP = (
    "Serve the catalogue's models: TorchServe on loopback, Envoy on the public port "
    "(`PORT`, default 3000, or --port); every other port is loopback-only."
)
# Every port but the public one gets a --NAME-port option; these two also read a variable.
PORT_VARIABLES = {"public": "PORT", "prometheus": "METRICS_PORT"}
PORT_OPTIONS = tuple(name for name in Ports().model_dump() if name != "public")


def settings_from_command_line(
    argv: list[str] | None, environ: Mapping[str, str], prog: str = "python -m modelserver.launcher"
) -> LaunchSettings:
    """Command line, `PORT` and the OpenTelemetry variables -> typed settings (the only place the
    launcher reads them); every default is `LaunchSettings`'s own."""
    defaults = LaunchSettings()
    parser = argparse.ArgumentParser(prog=prog, description=LAUNCHER_HELP)

    def port_default(name: str) -> int:
        variable = PORT_VARIABLES.get(name)
        return int(
            environ.get(variable, getattr(defaults.ports, name))
            if variable
            else getattr(defaults.ports, name)
        )

    parser.add_argument("--port", type=int, default=port_default("public"))
    for name in PORT_OPTIONS:
        parser.add_argument(
            f"--{name.replace('_', '-')}-port", dest=name, type=int, default=port_default(name)
        )
    parser.add_argument("--listen-address", default=defaults.listen_address)
    parser.add_argument("--catalogue", type=Path, default=defaults.catalogue)
    parser.add_argument("--model-store", type=Path, default=defaults.model_store)
    parser.add_argument("--runtime-dir", type=Path, default=defaults.runtime_dir)
    parser.add_argument("--models", nargs="*", default=list(defaults.models), help="serve only these models")
    parser.add_argument("--no-build", action="store_true", help="use the archives as they are")
    parser.add_argument("--startup-timeout", type=float, default=defaults.startup_timeout_s)
    parser.add_argument(
        "--unready-delay",
        type=float,
        default=defaults.unready_delay_s,
        help="seconds of 503 health before draining on a stop",
    )
    parser.add_argument("--drain-timeout", type=float, default=defaults.drain_timeout_s)
    parser.add_argument(
        "--max-connections",
        type=int,
        default=defaults.max_connections,
        help="client connections Envoy holds at once",
    )
    parser.add_argument(
        "--envoy-workers", type=int, default=defaults.envoy_workers, help="Envoy's worker threads"
    )
    parser.add_argument(
        "--log-file-mib",
        type=float,
        default=defaults.log_file_bytes / (1 << 20),
        help="rotate every log file at this size (MiB)",
    )
    parser.add_argument(
        "--log-files-kept", type=int, default=defaults.log_files_kept, help="rotated files kept per log"
    )
    parser.add_argument(
        "--key-lifetime-min",
        type=float,
        default=defaults.key_lifetime_min,
        help="minutes TorchServe's keys live (renewed at half); default: config.properties",
    )
    args = parser.parse_args(argv)
    try:
        tracing = tracing_from_environment(environ)
    except ConfigError as error:
        parser.error(str(error))
    ports = Ports(public=args.port, **{name: getattr(args, name) for name in PORT_OPTIONS})
    return LaunchSettings(
        ports=ports,
        listen_address=args.listen_address,
        catalogue=args.catalogue,
        models=tuple(args.models),
        model_store=args.model_store,
        runtime_dir=args.runtime_dir,
        build=not args.no_build,
        startup_timeout_s=args.startup_timeout,
        unready_delay_s=args.unready_delay,
        drain_timeout_s=args.drain_timeout,
        max_connections=args.max_connections,
        envoy_workers=args.envoy_workers,
        log_file_bytes=int(args.log_file_mib * (1 << 20)),
        log_files_kept=args.log_files_kept,
        key_lifetime_min=args.key_lifetime_min,
        tracing=tracing,
    )

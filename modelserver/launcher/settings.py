"""Launcher settings: parsed once from the command line and `PORT`, never re-read later."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from modelserver.catalogue import DEFAULT_CATALOGUE, PROJECT_ROOT

Port = int


class Ports(BaseModel):
    """Every TCP port the stack listens on. Only `public` is reachable from other machines."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    public: Port = Field(default=3000, ge=1, le=65535)
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
    max_connections: int = Field(default=1024, ge=16, le=100_000)
    # Envoy's worker threads. Its default is one per hardware thread, which in a container is the
    # node's, not the pod's CPU limit; two carry ~4,000 requests/s here (docs/BENCHMARKS.md).
    envoy_workers: int = Field(default=2, ge=1, le=64)

    @property
    def envoy_admin_socket(self) -> Path:
        """Envoy's admin interface: a unix socket, never a TCP port."""
        return self.runtime_dir / "envoy" / "admin.sock"

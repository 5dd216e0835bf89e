"""The OpenTelemetry variables, read once at launch into `TracingSettings` (None: tracing off).

What Envoy does with them, and why tracing is opt-in, is in `modelserver.launcher.envoy.tracing`:
these are settings, parsed with the launcher's others, so Envoy's config is built from them and
never reads the environment itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, cast, get_args
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

from modelserver.errors import ConfigError

DEFAULT_SERVICE_NAME = "modelserver"
DEFAULT_PORTS = {"http/protobuf": 4318, "grpc": 4317}
TRACES_PATH = "v1/traces"  # appended to OTEL_EXPORTER_OTLP_ENDPOINT's path, as the spec says
# Envoy's exporter buffers spans per worker thread and sends them every FLUSH_INTERVAL_MS, or
# as soon as EXPORT_BATCH_SPANS are waiting; beyond MAX_QUEUED_SPANS it drops new spans (stat
# tracing.opentelemetry.spans_dropped). The defaults are OpenTelemetry's batch span processor's
# (OTEL_BSP_*); Envoy's own (an export per 5 spans) would send one per couple of requests under
# load.
FLUSH_INTERVAL_MS = 5_000
EXPORT_BATCH_SPANS = 512
MAX_QUEUED_SPANS = 2_048
EXPORT_TIMEOUT_MS = 10_000
Protocol = Literal["http/protobuf", "grpc"]
# OTEL_TRACES_SAMPLER's values Envoy's samplers implement. parentbased_*: a request whose
# `traceparent` says sampled (or not) follows it; the rest are sampled as the name says.
# The default is not OpenTelemetry's (parentbased_always_on): this is the edge, where the
# `traceparent` comes from any client, and a client must not decide what is recorded and
# exported (every request sampled, or none). A trace id it sends is still continued; a
# deployment behind its own trusted gateway may choose a parentbased sampler.
DEFAULT_SAMPLER = "always_on"
Sampler = Literal[
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
    "always_on",
    "always_off",
    "traceidratio",
]
SAMPLERS: tuple[str, ...] = get_args(Sampler)


class TracingSettings(BaseModel):
    """Where spans go and how many: the OpenTelemetry variables, parsed once at launch."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    protocol: Protocol = "http/protobuf"
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    path: str = "/" + TRACES_PATH  # OTLP/HTTP only
    service_name: str = Field(default=DEFAULT_SERVICE_NAME, min_length=1)
    sampler: Sampler = DEFAULT_SAMPLER
    sampler_ratio: float = Field(default=1.0, ge=0, le=1)  # for the traceidratio samplers
    export_timeout_ms: int = Field(default=EXPORT_TIMEOUT_MS, gt=0)
    flush_interval_ms: int = Field(default=FLUSH_INTERVAL_MS, gt=0)
    export_batch_spans: int = Field(default=EXPORT_BATCH_SPANS, ge=1)
    max_queued_spans: int = Field(default=MAX_QUEUED_SPANS, ge=1)

    @property
    def url(self) -> str:
        """The collector's URL as Envoy's HTTP exporter posts to it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{self.path}"


def _number(environ: Mapping[str, str], name: str, default: float) -> float:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None


def _endpoint(environ: Mapping[str, str], protocol: Protocol) -> tuple[str, str, str, int, str] | None:
    """(variable, scheme, host, port, path) of the collector, or None when no endpoint is set.
    The signal's own variable is a full URL; the general one a base to which v1/traces is added."""
    own = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    base = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    if not own and not base:
        return None
    name = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" if own else "OTEL_EXPORTER_OTLP_ENDPOINT"
    url = urlsplit(own or base)
    try:
        port = url.port or DEFAULT_PORTS[protocol]
    except ValueError:
        raise ConfigError(f"{name}={own or base!r}: the port is not a number in 1-65535") from None
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ConfigError(f"{name}={own or base!r} is not an http:// URL with a host (http://collector:4318)")
    path = url.path or "/"
    if not own:
        path = path + TRACES_PATH if path.endswith("/") else f"{path}/{TRACES_PATH}"
    return name, url.scheme, url.hostname, port, path


def _sampler(environ: Mapping[str, str]) -> tuple[str, float]:
    sampler = environ.get("OTEL_TRACES_SAMPLER", "").strip().lower() or DEFAULT_SAMPLER
    if sampler not in SAMPLERS:
        raise ConfigError(
            f"OTEL_TRACES_SAMPLER={sampler!r}: Envoy's tracer takes one of {', '.join(SAMPLERS)}"
        )
    if not sampler.endswith("traceidratio"):
        return sampler, 1.0
    ratio = _number(environ, "OTEL_TRACES_SAMPLER_ARG", 1.0)
    if not 0 <= ratio <= 1:
        raise ConfigError(f"OTEL_TRACES_SAMPLER_ARG={ratio:g} is not a ratio in [0, 1]")
    return sampler, ratio


def tracing_from_environment(environ: Mapping[str, str]) -> TracingSettings | None:
    """The OpenTelemetry variables -> settings, or None (tracing off) when no endpoint is set, or
    `OTEL_SDK_DISABLED=true`, or `OTEL_TRACES_EXPORTER=none`. A value Envoy cannot honour (an
    https endpoint, OTLP/JSON, a remote sampler) is a ConfigError naming the variable."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() or "otlp"
    if exporter == "none":
        return None
    if exporter != "otlp":
        raise ConfigError(f"OTEL_TRACES_EXPORTER={exporter!r}: only otlp (or none) is supported")
    protocol_name = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
    protocol = (
        environ.get(protocol_name, "").strip() or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "").strip()
    )
    protocol = protocol or "http/protobuf"
    if protocol not in DEFAULT_PORTS:
        raise ConfigError(f"OTLP protocol {protocol!r}: Envoy exports http/protobuf or grpc")
    endpoint = _endpoint(environ, cast(Protocol, protocol))
    if endpoint is None:
        return None
    name, scheme, host, port, path = endpoint
    if scheme == "https":
        raise ConfigError(
            f"{name}: https collectors are not supported; export to an OpenTelemetry Collector over "
            "http (on loopback or in the pod) and let it forward with TLS"
        )
    timeout_ms = _number(environ, "OTEL_EXPORTER_OTLP_TIMEOUT", EXPORT_TIMEOUT_MS)
    timeout_ms = _number(environ, "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", timeout_ms)
    sampler, ratio = _sampler(environ)
    try:
        return TracingSettings(
            protocol=cast(Protocol, protocol),
            host=host,
            port=port,
            path=path,
            service_name=environ.get("OTEL_SERVICE_NAME", "").strip() or DEFAULT_SERVICE_NAME,
            sampler=cast(Sampler, sampler),
            sampler_ratio=ratio,
            export_timeout_ms=int(timeout_ms),
            flush_interval_ms=int(_number(environ, "OTEL_BSP_SCHEDULE_DELAY", FLUSH_INTERVAL_MS)),
            export_batch_spans=int(_number(environ, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", EXPORT_BATCH_SPANS)),
            max_queued_spans=int(_number(environ, "OTEL_BSP_MAX_QUEUE_SIZE", MAX_QUEUED_SPANS)),
        )
    except ValueError as error:  # pydantic's ValidationError: a value out of its range
        raise ConfigError(f"OpenTelemetry settings: {error}") from None

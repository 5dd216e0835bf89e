"""OpenTelemetry tracing, opt-in: Envoy's tracer exports a span per request to an OTLP collector.

On only when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set; the
standard OpenTelemetry variables are read once, at launch, into `TracingSettings`. Off, Envoy's
config has no tracer, no collector cluster and no request id, and Envoy drops a client's
`traceparent` and `tracestate` before TorchServe: the worker parses two headers fewer and never
logs a trace id nobody exports.

On, each request gets a server span named `<METHOD> <route>` (`POST /sklearn`,
`POST /predictions/{model}`) with `http.route`, `modelserver.model` and Envoy's own tags
(`http.status_code`, `upstream_cluster`, ...), and a client span per upstream try, both in the
trace of the request's `traceparent` (or a new one). Envoy sends TorchServe the client span's
`traceparent`, and the worker logs its trace id (`modelserver/serving/trace_context.py`).

Exported with OTLP over HTTP (protobuf) by default, to `<endpoint>/v1/traces`, or over gRPC with
`OTEL_EXPORTER_OTLP_PROTOCOL=grpc`; `http://` endpoints only: for an `https://` collector, run an
OpenTelemetry Collector next to the server (loopback, or the pod) that forwards with TLS.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Mapping
from typing import Any, Literal, cast, get_args
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

from modelserver.errors import ConfigError
from modelserver.launcher.routes import model_cluster

COLLECTOR_CLUSTER = "otel_collector"
# Route metadata the spans' `modelserver.model` tag is read from (set only when tracing is on).
TRACING_METADATA = "modelserver.tracing"
MODEL_TAG = "modelserver.model"
TRACE_HEADERS = ["traceparent", "tracestate"]
# A route that is never traced, whatever a client's `traceparent` says (Envoy's own sampling,
# which the tracer's sampler cannot overrule).
NEVER_SAMPLED = ("client_sampling", "random_sampling", "overall_sampling")
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
SAMPLER_TYPE = "type.googleapis.com/envoy.extensions.tracers.opentelemetry.samplers.v3."


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


def collector_cluster(tracing: TracingSettings) -> dict[str, Any]:
    """The collector as an Envoy cluster: an IP address as is, a name resolved by DNS (and
    re-resolved, as a collector Service's address may change); HTTP/2 for gRPC."""
    try:
        ipaddress.ip_address(tracing.host)
        discovery: dict[str, Any] = {"type": "STATIC"}
    except ValueError:
        discovery = {"type": "STRICT_DNS", "dns_lookup_family": "V4_PREFERRED"}
    endpoint = {"address": {"socket_address": {"address": tracing.host, "port_value": tracing.port}}}
    cluster: dict[str, Any] = {
        "name": COLLECTOR_CLUSTER,
        **discovery,
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": COLLECTOR_CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": endpoint}]}],
        },
    }
    if tracing.protocol == "grpc":
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    return cluster


def tracer(tracing: TracingSettings) -> dict[str, Any]:
    """The HttpConnectionManager's `tracing` block: Envoy's OpenTelemetry tracer, the sampling,
    the span names and the tags."""
    timeout = f"{tracing.export_timeout_ms / 1000:g}s"
    exporter: dict[str, Any]
    if tracing.protocol == "grpc":
        exporter = {"grpc_service": {"envoy_grpc": {"cluster_name": COLLECTOR_CLUSTER}, "timeout": timeout}}
    else:
        exporter = {
            "http_service": {
                "http_uri": {"uri": tracing.url, "cluster": COLLECTOR_CLUSTER, "timeout": timeout}
            }
        }
    model = {"kind": {"route": {}}, "metadata_key": {"key": TRACING_METADATA, "path": [{"key": "model"}]}}
    sampler = envoy_sampler(tracing)
    return {
        # Envoy's own sampling: every request when a parent-based sampler decides, else the
        # configured share (by request id). Either way a route that is never traced stays so.
        "random_sampling": {"value": 100 if sampler else edge_percentage(tracing)},
        "spawn_upstream_span": True,
        "operation": "%REQ(:METHOD)% %ROUTE_NAME%",
        "upstream_operation": "%REQ(:METHOD)% %ROUTE_NAME% -> %UPSTREAM_CLUSTER%",
        "custom_tags": [
            {"tag": "http.route", "value": "%ROUTE_NAME%"},
            {"tag": MODEL_TAG, "metadata": model},
        ],
        "provider": {
            "name": "envoy.tracers.opentelemetry",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
                **exporter,
                "service_name": tracing.service_name,
                **({"sampler": sampler} if sampler else {}),
                "max_cache_size": tracing.max_queued_spans,
            },
        },
    }


def edge_percentage(tracing: TracingSettings) -> float:
    """The share of requests sampled, in percent, by a sampler that ignores the parent."""
    if tracing.sampler.endswith("always_on"):
        return 100.0
    return 0.0 if tracing.sampler.endswith("always_off") else tracing.sampler_ratio * 100


# A W3C `traceparent` of version 00 is 55 characters, its flags the last two: keep the first
# 53 (version, trace id, parent id) and say "sampled", so Envoy's own sampling alone decides.
TRACEPARENT_BEFORE_FLAGS = 53
SAMPLED_FLAGS = "01"


def client_flag_ignored() -> dict[str, Any]:
    """An early header mutation (before Envoy's tracing decision) that sets the sampled flag of
    a client's `traceparent`, where there is one: Envoy's decision is the parent's flag AND the
    route's sampling, so with the flag set the route's sampling (`edge_percentage`, or never on
    the probes' routes) decides alone, and the client's trace id is still continued."""
    value = f"%REQ(traceparent):{TRACEPARENT_BEFORE_FLAGS}%{SAMPLED_FLAGS}"
    return {
        "name": "envoy.http.early_header_mutation.header_mutation",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.http.early_header_mutation.header_mutation.v3"
            ".HeaderMutation",
            "mutations": [
                {
                    "append": {
                        "header": {"key": "traceparent", "value": value},
                        "append_action": "OVERWRITE_IF_EXISTS",
                    }
                }
            ],
        },
    }


def envoy_sampler(tracing: TracingSettings) -> dict[str, Any] | None:
    """A parentbased_* OTEL_TRACES_SAMPLER as Envoy's OpenTelemetry samplers: the parent-based
    one around always-on or a trace-id ratio (0 for always-off). None for the others: Envoy's own
    sampling (`edge_percentage`) then decides, with the client's flag set (`client_flag_ignored`);
    Envoy's OpenTelemetry samplers would also overrule a route's "never traced"."""
    if not tracing.sampler.startswith("parentbased_"):
        return None
    if tracing.sampler.endswith("always_on"):
        root = {
            "name": "envoy.tracers.opentelemetry.samplers.always_on",
            "typed_config": {"@type": SAMPLER_TYPE + "AlwaysOnSamplerConfig"},
        }
    else:
        ratio = 0.0 if tracing.sampler.endswith("always_off") else tracing.sampler_ratio
        percentage = {"numerator": round(ratio * 1_000_000), "denominator": "MILLION"}
        root = {
            "name": "envoy.tracers.opentelemetry.samplers.trace_id_ratio_based",
            "typed_config": {
                "@type": SAMPLER_TYPE + "TraceIdRatioBasedSamplerConfig",
                "sampling_percentage": percentage,
            },
        }
    return {
        "name": "envoy.tracers.opentelemetry.samplers.parent_based",
        "typed_config": {"@type": SAMPLER_TYPE + "ParentBasedSamplerConfig", "wrapped_sampler": root},
    }


def runtime_layers(tracing: TracingSettings) -> dict[str, Any]:
    """Envoy's runtime: the exporter's flush interval and batch size are runtime keys, not
    fields of its config. The admin layer is what Envoy has when no runtime is configured."""
    static = {
        "tracing.opentelemetry.flush_interval_ms": tracing.flush_interval_ms,
        "tracing.opentelemetry.min_flush_spans": min(tracing.export_batch_spans, tracing.max_queued_spans),
    }
    return {"layers": [{"name": "tracing", "static_layer": static}, {"name": "admin", "admin_layer": {}}]}


def route_name(route: Mapping[str, Any], labels: Mapping[str, str]) -> str:
    """A route's name in span names: its exact path, else a label for its pattern (the pattern
    itself when it has none). Never the client's path: span names stay few."""
    match = route["match"]
    if "path" in match:
        return str(match["path"])
    if "safe_regex" in match:
        regex = str(match["safe_regex"]["regex"])
        return labels.get(regex, regex)
    return f"{match.get('prefix', '/')}*"


def named_route(
    route: Mapping[str, Any], labels: Mapping[str, str], untraced: Collection[str] = ()
) -> dict[str, Any]:
    """The route with its name, and the model it serves in metadata for the spans' model tag;
    never traced if it goes to one of the `untraced` clusters."""
    named = {**route, "name": route.get("name") or route_name(route, labels)}
    cluster = str(route.get("route", {}).get("cluster", ""))
    if cluster in untraced:
        named["tracing"] = {kind: {"numerator": 0} for kind in NEVER_SAMPLED}
    prefix = model_cluster("")
    if cluster.startswith(prefix) and cluster != prefix:
        metadata = dict(route.get("metadata", {}))
        filters = {**metadata.get("filter_metadata", {}), TRACING_METADATA: {"model": cluster[len(prefix) :]}}
        named["metadata"] = {**metadata, "filter_metadata": filters}
    return named


def traced_manager(
    manager: Mapping[str, Any],
    tracing: TracingSettings | None,
    labels: Mapping[str, str],
    untraced: Collection[str] = (),
) -> dict[str, Any]:
    """The public HttpConnectionManager with tracing on, or with clients' trace context dropped
    before TorchServe when it is off. On: Envoy's tracer, a request id (Envoy samples by it; it
    stays out of TorchServe's requests, where the worker would parse it), named routes, none
    traced to the `untraced` clusters (the launcher's: health probes and metrics scrapes would
    drown the requests' spans)."""
    route_config = dict(manager["route_config"])
    hosts = []
    for host in route_config["virtual_hosts"]:
        removed = list(host.get("request_headers_to_remove", []))
        if tracing is None:
            hosts.append({**host, "request_headers_to_remove": [*removed, *TRACE_HEADERS]})
            continue
        routes = [named_route(route, labels, untraced) for route in host["routes"]]
        hosts.append({**host, "request_headers_to_remove": [*removed, "x-request-id"], "routes": routes})
    route_config["virtual_hosts"] = hosts
    if tracing is None:
        return {**manager, "route_config": route_config}
    traced = {
        **manager,
        "generate_request_id": True,
        "tracing": tracer(tracing),
        "route_config": route_config,
    }
    if envoy_sampler(tracing) is None:
        traced["early_header_mutation_extensions"] = [client_flag_ignored()]
    return traced

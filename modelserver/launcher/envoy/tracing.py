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
from typing import Any

from modelserver.launcher.envoy.routes import model_cluster
from modelserver.launcher.tracing_settings import TracingSettings

COLLECTOR_CLUSTER = "otel_collector"
# Route metadata the spans' `modelserver.model` tag is read from (set only when tracing is on).
TRACING_METADATA = "modelserver.tracing"
MODEL_TAG = "modelserver.model"
TRACE_HEADERS = ["traceparent", "tracestate"]
# A route that is never traced, whatever a client's `traceparent` says (Envoy's own sampling,
# which the tracer's sampler cannot overrule).
NEVER_SAMPLED = ("client_sampling", "random_sampling", "overall_sampling")
SAMPLER_TYPE = "type.googleapis.com/envoy.extensions.tracers.opentelemetry.samplers.v3."


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


def tracing_runtime(tracing: TracingSettings) -> dict[str, int]:
    """The exporter's flush interval and batch size: Envoy runtime keys, not fields of its config."""
    return {
        "tracing.opentelemetry.flush_interval_ms": tracing.flush_interval_ms,
        "tracing.opentelemetry.min_flush_spans": min(tracing.export_batch_spans, tracing.max_queued_spans),
    }


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

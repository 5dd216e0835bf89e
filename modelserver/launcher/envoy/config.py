"""Envoy's whole config as data, built from the launch settings, the catalogue's routes and
TorchServe's inference key; dumped to YAML and checked with `envoy --mode validate`.

    python -m modelserver envoy-config [launcher options]

prints the config the launcher would run with those options (the key shown as a placeholder).

Request path: set Content-Type to JSON (clients like `curl -d` send a form type, which
TorchServe would parse as a form) -> buffer within the route's body limit (413) -> read the body field
that picks a model into metadata (/astromech, /predict) -> Lua: the same field in bodies that
are not strict JSON -> route. On the way back TorchServe's own errors become ours
(`upstream_errors`). Every limit is defined once here
or in `routes` (retries, clusters, admission limits).
"""

from __future__ import annotations

import sys
from typing import Any

import yaml

from modelserver.catalogue import Catalogue
from modelserver.errors import FALLBACK_TYPES, TYPE_OF_STATUS, ErrorType
from modelserver.launcher.envoy.routes import (
    BODY_FIELDS_FILTER,
    BODY_LIMIT_BYTES,
    BUFFER_FILTER,
    CONNECTION_RETRIES,
    GENERIC_CLUSTER,
    LUA_FILTER,
    METADATA_NAMESPACE,
    V2_INFER_PATH,
    V2_PAGES,
    WORKER_HEADERS,
    RouteTable,
    body_limit,
    combined,
    direct,
    header_to_add,
    loopback_cluster,
    typed,
)
from modelserver.launcher.envoy.tracing import collector_cluster, traced_manager, tracing_runtime
from modelserver.launcher.envoy.upstream_errors import custom_response_filter
from modelserver.launcher.settings import LaunchSettings, settings_from_command_line
from modelserver.project import PROJECT_ROOT, environment
from modelserver.protocols.open_inference import PROTOCOL_HEADER
from modelserver.serving.headers import HANDLER_ANSWER

LUA_SOURCE = PROJECT_ROOT / "proxy" / "lua" / "public.lua"
PUBLIC_LISTENER = "public"  # also the stat prefix: http.public.* in Envoy's stats
# The operations port (METRICS_PORT): Prometheus text on a port of its own, as Triton, TorchServe
# and MLServer do (the public port answers /metrics with a 404, so host and traffic figures are
# never public), and /healthcheck for the kubelet's probes. Its connections are outside the
# public port's budget (`--max-connections`) and bounded by a budget of their own, so a crowd
# that fills the public port never makes a replica fail its probes.
PROMETHEUS_LISTENER = "prometheus"
OPERATIONS_ONLY = (
    "this port serves GET /metrics (Prometheus text), GET /healthcheck and GET /traffic (JSON) only"
)
# Scrapers and probes use a few; a 128-client crowd on /metrics gets the cluster's 503s, not closes.
OPERATIONS_CONNECTIONS = 256
HEALTH_CLUSTER = "health"  # the launcher's own server: /healthcheck alone goes this way
# Every other page of that server goes through a cluster of its own whose circuit breaker lets
# its readers through at once and queues a few more; beyond that Envoy answers its JSON 503
# "at capacity" with Retry-After at once, so /healthcheck never queues behind a crowd on one of
# them. The launcher serves each group for at most that many requests at once too (loopback
# callers; modelserver/launcher/pages/health.py keeps threads for /healthcheck beyond them all).
METRICS_CLUSTER = "metrics"  # GET /metrics and GET /traffic (the Prometheus listener)
DOCUMENTS_CLUSTER = "documents"  # /openapi.json, /docs and its files
OPEN_INFERENCE_PAGES_CLUSTER = "v2_pages"  # /v2 health and metadata
METRICS_READERS = DOCUMENT_READERS = OPEN_INFERENCE_READERS = 2


def reader_limits(readers: int, waiting: int = 2) -> dict[str, int]:
    """A page cluster's circuit breaker: `readers` at once, `waiting` more queued, no retries."""
    return {
        "max_connections": readers,
        "max_pending_requests": waiting,
        "max_requests": readers + waiting,
        "max_retries": 0,
    }


# A browser opening /docs asks for its five files at once: a few browsers' worth wait their turn
# (each file is served from memory in a millisecond) rather than being refused.
DOCUMENTS_WAITING = 16


METRICS_LIMITS = reader_limits(METRICS_READERS)
PAGE_CLUSTERS = {
    METRICS_CLUSTER: METRICS_LIMITS,
    DOCUMENTS_CLUSTER: reader_limits(DOCUMENT_READERS, DOCUMENTS_WAITING),
    OPEN_INFERENCE_PAGES_CLUSTER: reader_limits(OPEN_INFERENCE_READERS),
}
# Envoy's heap: from 75% the HTTP/2 streams holding the most memory are reset, from 90% it
# returns freed memory to the system, from 95% it refuses new requests with 503 until it shrinks.
HEAP_LIMIT_BYTES = 768 << 20
SHRINK_HEAP_AT = 0.90
REFUSE_REQUESTS_AT = 0.95
# TorchServe's HTTP decoder refuses more than 8 KiB of headers (a 400 "Invalid HTTP message");
# 7 KiB leaves room for what Envoy adds, and beyond it clients get a 431.
MAX_REQUEST_HEADERS_KB = 7
# Slow or stalled clients: headers within 5 s (a client sends them in one write), the whole
# request (at most 1 MiB) within 10 s, a 408. Shorter than the routes' idle timeouts (15 s and
# more), so a client that stops sending its body is a 408, never a 504 blamed on the model.
REQUEST_HEADERS_TIMEOUT_S = 5
REQUEST_TIMEOUT_S = 10
STREAM_IDLE_TIMEOUT_S = 30
DOWNSTREAM_IDLE_S = 300
# A connection must send its first bytes within this, or it is closed: idle sockets that never
# send a request cannot pile up for DOWNSTREAM_IDLE_S.
FIRST_BYTES_TIMEOUT_S = 5
# Under connection pressure, idle keep-alive connections are closed sooner: from half of
# `--max-connections` in use the idle timeout shrinks, reaching IDLE_UNDER_PRESSURE_S at 80%.
PRESSURE_STARTS_AT = 0.5
PRESSURE_SATURATES_AT = 0.8
IDLE_UNDER_PRESSURE_S = 2
SLOW_SENDER_UNDER_PRESSURE_S = 1
RESET_STREAMS_FROM = 0.75
TRACK_STREAMS_FROM_POWER_OF_TWO = 16
GENERIC_IDLE_S = 60  # /predictions/<any other name>: TorchServe answers 404 for unknown models
# HTTP/2 (cleartext, with prior knowledge, or via upgrade): every stream may buffer a whole body,
# so one connection may hold streams x BODY_LIMIT_BYTES = 16 MiB, not Envoy's default 2^31
# streams. The windows keep a client from pushing more than a body ahead of what Envoy reads.
H2_MAX_CONCURRENT_STREAMS = 16
H2_STREAM_WINDOW_BYTES = 64 << 10  # HTTP/2's own initial window (the least Envoy accepts)
H2_CONNECTION_WINDOW_BYTES = BODY_LIMIT_BYTES
ADMIN_SOCKET_MODE = 0o600  # only the launcher's user: admin can stop Envoy and shows the key
GENERIC_PATH = r"^/predictions/[A-Za-z0-9_.-]+$"
# /docs and its Swagger UI files (/docs/swagger-ui.css, ...): one file name with an extension,
# never a dot segment nor a deeper path.
DOCS_PATHS = r"docs(/[A-Za-z0-9_-]+(\.[A-Za-z0-9]+)+)?"
LAUNCHER_PAGES = rf"^/(openapi\.json|{DOCS_PATHS})$"
GET_PAGES = rf"^/(healthcheck|openapi\.json|{DOCS_PATHS})$"
# Headers no handler reads, dropped before TorchServe: each one costs the Java frontend and the
# Python worker per request (docs/BENCHMARKS.md, "Request headers").
UNREAD_HEADERS = ["user-agent", "accept", "accept-encoding", "x-forwarded-proto", "x-envoy-original-path"]
CONNECTIONS_MONITOR_TYPE = (
    "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig"
)
RETRY_AFTER_S = {"at capacity": "1", "short of memory": "1", "unreachable": "5"}
# One JSON line per public request in run/envoy/access.log (rotated by the launcher, `Envoy`):
# what was asked and how it went, never a body, a query value or a header a client chose.
# The path is the one the client sent, its query cut off, kept in dynamic metadata by the first
# filter: the routes rewrite :path to TorchServe's and drop x-envoy-original-path.
ACCESS_LOG_NAME = "access.log"
ACCESS_LOG_NAMESPACE = "modelserver.access_log"
ACCESS_LOG_PATH_FILTER = {
    "name": "envoy.filters.http.header_to_metadata",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.header_to_metadata.v3.Config",
        "request_rules": [
            {
                "header": ":path",
                "on_header_present": {
                    "metadata_namespace": ACCESS_LOG_NAMESPACE,
                    "key": "path",
                    "type": "STRING",
                    "regex_value_rewrite": {"pattern": {"regex": r"^([^?#]*).*$"}, "substitution": r"\1"},
                },
                "remove": False,
            }
        ],
    },
}
ACCESS_LOG_FIELDS = {
    "time": "%START_TIME%",
    "method": "%REQ(:METHOD)%",
    "path": f"%DYNAMIC_METADATA({ACCESS_LOG_NAMESPACE}:path)%",
    "protocol": "%PROTOCOL%",
    "status": "%RESPONSE_CODE%",
    "flags": "%RESPONSE_FLAGS%",
    "duration_ms": "%DURATION%",
    "upstream_ms": "%RESPONSE_DURATION%",
    # Where a request's time went, in microseconds: in Envoy before the upstream got its first
    # byte (receiving the request, the filters), at the upstream (TorchServe) until the first
    # byte of its answer, and in Envoy again until the client got the last byte.
    "request_us": "%COMMON_DURATION(DS_RX_BEG:US_TX_BEG:us)%",
    "upstream_us": "%COMMON_DURATION(US_TX_BEG:US_RX_BEG:us)%",
    "response_us": "%COMMON_DURATION(US_RX_BEG:DS_TX_END:us)%",
    "attempts": "%UPSTREAM_REQUEST_ATTEMPT_COUNT%",
    "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%",
    "model": "%UPSTREAM_CLUSTER%",
}


def _method_is(method: str) -> list[dict[str, Any]]:
    return [{"name": ":method", "string_match": {"exact": method}}]


def overload_manager(settings: LaunchSettings) -> dict[str, Any]:
    """Envoy's own limits: the heap, and at most `max_connections` client connections (more
    are closed at accept); idle connections are closed sooner as the connections fill up."""
    heap = "envoy.resource_monitors.fixed_heap"
    connections = "envoy.resource_monitors.global_downstream_max_connections"
    return {
        "refresh_interval": "0.25s",
        "resource_monitors": [
            {
                "name": heap,
                "typed_config": typed(
                    "envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig",
                    max_heap_size_bytes=HEAP_LIMIT_BYTES,
                ),
            },
            {
                "name": connections,
                "typed_config": typed(
                    CONNECTIONS_MONITOR_TYPE, max_active_downstream_connections=settings.max_connections
                ),
            },
        ],
        "actions": [
            {
                "name": "envoy.overload_actions.shrink_heap",
                "triggers": [{"name": heap, "threshold": {"value": SHRINK_HEAP_AT}}],
            },
            {
                "name": "envoy.overload_actions.stop_accepting_requests",
                "triggers": [{"name": heap, "threshold": {"value": REFUSE_REQUESTS_AT}}],
            },
            {
                "name": "envoy.overload_actions.reset_high_memory_stream",
                "triggers": [
                    {
                        "name": heap,
                        "scaled": {
                            "scaling_threshold": RESET_STREAMS_FROM,
                            "saturation_threshold": SHRINK_HEAP_AT,
                        },
                    }
                ],
            },
            {
                "name": "envoy.overload_actions.reduce_timeouts",
                "triggers": [
                    {
                        "name": connections,
                        "scaled": {
                            "scaling_threshold": PRESSURE_STARTS_AT,
                            "saturation_threshold": PRESSURE_SATURATES_AT,
                        },
                    },
                    {
                        "name": heap,
                        "scaled": {
                            "scaling_threshold": PRESSURE_STARTS_AT,
                            "saturation_threshold": PRESSURE_SATURATES_AT,
                        },
                    },
                ],
                "typed_config": typed(
                    "envoy.config.overload.v3.ScaleTimersOverloadActionConfig",
                    timer_scale_factors=[
                        {
                            "timer": "HTTP_DOWNSTREAM_CONNECTION_IDLE",
                            "min_timeout": f"{IDLE_UNDER_PRESSURE_S}s",
                        },
                        {
                            "timer": "HTTP_DOWNSTREAM_STREAM_IDLE",
                            "min_timeout": f"{SLOW_SENDER_UNDER_PRESSURE_S}s",
                        },
                    ],
                ),
            },
        ],
        "buffer_factory_config": {"minimum_account_to_track_power_of_two": TRACK_STREAMS_FROM_POWER_OF_TWO},
    }


NO_ROUTE = "no such route; see the README for the public API"
NO_TUNNEL = "CONNECT is not served: this is a model server, not a proxy"
NO_UPGRADE = "this server does not upgrade connections (WebSocket, h2c): send plain HTTP requests"


def error_body(error_type: ErrorType | str, sentence: str = "%LOCAL_REPLY_BODY%") -> dict[str, Any]:
    """The JSON every error of Envoy's own has: `{"error", "type", "code"}`."""
    return {"json_format": {"error": sentence, "type": str(error_type), "code": "%RESPONSE_CODE%"}}


def local_replies() -> dict[str, Any]:
    """What Envoy answers itself (and TorchServe's errors it rewrote), always
    `{"error", "type", "code"}` JSON: the first mapper that matches gives the sentence, status
    and type; a reply none of them names gets the type of its status (`errors.type_of_status`)."""

    def status_is(code: int, op: str = "EQ") -> dict[str, Any]:
        value = {"default_value": code, "runtime_key": f"reply.{code}"}
        return {"status_code_filter": {"comparison": {"op": op, "value": value}}}

    def flags(*names: str) -> dict[str, Any]:
        return {"response_flag_filter": {"flags": list(names)}}

    def reply(
        match: dict[str, Any],
        error_type: ErrorType,
        message: str | None = None,
        status: int | None = None,
        retry_after: str = "",
    ) -> Any:
        mapper: dict[str, Any] = {"filter": match, "body_format_override": error_body(error_type)}
        if message is not None:
            mapper["body"] = {"inline_string": message}
        if status is not None:
            mapper["status_code"] = status
        if retry_after:
            mapper["headers_to_add"] = [header_to_add("retry-after", retry_after)]
        return mapper

    def details(code_details: str) -> dict[str, Any]:
        expression = f'response.code_details == "{code_details}"'
        return {
            "extension_filter": {
                "name": "envoy.access_loggers.extension_filters.cel",
                "typed_config": typed(
                    "envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter", expression=expression
                ),
            }
        }

    malformed = {
        "extension_filter": {
            "name": "envoy.access_loggers.extension_filters.cel",
            "typed_config": typed(
                "envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter",
                expression='response.code == 400 && response.code_details != "direct_response"',
            ),
        }
    }
    # Envoy's own 4xx and 5xx a mapper above does not name: the type of their status.
    by_status = [reply(status_is(code), error_type) for code, error_type in sorted(TYPE_OF_STATUS.items())]
    by_class = [reply(status_is(lowest, "GE"), error_type) for lowest, error_type in FALLBACK_TYPES]
    return {
        "mappers": [
            # The route's own limit (its metadata: `routes.body_limit`) in the sentence.
            {
                "filter": status_is(413),
                "body_format_override": error_body(
                    ErrorType.TOO_LARGE,
                    "the request body is larger than this route's limit of"
                    f" %METADATA(ROUTE:{METADATA_NAMESPACE}:body_limit)%",
                ),
            },
            # A model at its admission limit (its cluster's circuit breaker), or Envoy itself
            # near its memory limit: refused at once, to be retried in a moment.
            reply(
                flags("UO"),
                ErrorType.OVERLOADED,
                "the model is at capacity; retry shortly",
                503,
                RETRY_AFTER_S["at capacity"],
            ),
            reply(
                flags("OM"),
                ErrorType.OVERLOADED,
                "the server is short of memory; retry shortly",
                503,
                RETRY_AFTER_S["short of memory"],
            ),
            # Not URX (retries spent): a TorchServe reply retried once carries it too, and
            # keeps its own sentence (`upstream_errors`); a connection that failed twice is UF.
            reply(
                flags("UF", "UH", "UC"),
                ErrorType.UNAVAILABLE,
                "the model server is not reachable right now; retry shortly",
                503,
                RETRY_AFTER_S["unreachable"],
            ),
            # A client too slow to send its request (headers, body, or a stall under pressure).
            reply(
                status_is(408),
                ErrorType.REQUEST_TIMEOUT,
                f"the request did not arrive in time: headers within {REQUEST_HEADERS_TIMEOUT_S} s,"
                f" the whole request within {REQUEST_TIMEOUT_S} s",
            ),
            reply(flags("UT", "SI"), ErrorType.DEADLINE_EXCEEDED, "the model did not answer in time", 504),
            reply(
                details("overload"),
                ErrorType.OVERLOADED,
                "the server is short of memory; retry shortly",
                503,
                RETRY_AFTER_S["short of memory"],
            ),
            # An `Upgrade:` request (WebSocket, h2c): Envoy refuses it with its own 403.
            reply(details("upgrade_failed"), ErrorType.NOT_SUPPORTED, NO_UPGRADE),
            # Requests Envoy refuses before routing (an escaped slash or a backslash in the path,
            # a fragment, an underscore in a header name) come with no sentence of their own.
            reply(
                malformed,
                ErrorType.BAD_REQUEST,
                "the request is malformed: its path or headers are not valid HTTP",
            ),
            *by_status,
            *by_class,
        ],
        "body_format": error_body(ErrorType.SERVER_ERROR),
    }


ROUTER = {
    "name": "envoy.filters.http.router",
    "typed_config": typed("envoy.extensions.filters.http.router.v3.Router", suppress_envoy_headers=True),
}


def body_fields_filter(rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The filter that reads a model-picking body field into metadata, where a route picks its
    model by one (Envoy refuses the filter without rules)."""
    if not rules:
        return []
    config = typed(
        "envoy.extensions.filters.http.json_to_metadata.v3.JsonToMetadata", request_rules={"rules": rules}
    )
    return [{"name": BODY_FIELDS_FILTER, "typed_config": config}]


def http_filters(routes: RouteTable) -> list[dict[str, Any]]:
    """JSON content type (and, on the way back, the handler's mark removed), TorchServe's own
    errors as ours, the body buffered within its limit, the model-picking body field, the Lua
    filter (on the routes that pick by it only), the router."""
    return [
        {
            "name": "envoy.filters.http.header_mutation",
            "typed_config": typed(
                "envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
                mutations={
                    "request_mutations": [{"append": header_to_add("content-type", "application/json")}],
                    # The handler's mark (what retries and TorchServe's own errors are told
                    # apart by) stays inside; removed last, after custom_response has read it.
                    "response_mutations": [{"remove": HANDLER_ANSWER}],
                },
            ),
        },
        custom_response_filter(),
        {
            "name": BUFFER_FILTER,
            "typed_config": typed(
                "envoy.extensions.filters.http.buffer.v3.Buffer", max_request_bytes=BODY_LIMIT_BYTES
            ),
        },
        *body_fields_filter(routes.selector_rules()),
        {
            "name": LUA_FILTER,
            "typed_config": typed(
                "envoy.extensions.filters.http.lua.v3.Lua",
                default_source_code={"inline_string": LUA_SOURCE.read_text(encoding="utf-8")},
            ),
        },
        ROUTER,
    ]


def refused_tunnel() -> dict[str, Any]:
    """CONNECT (a tunnel through a proxy) gets a JSON 405 before the connection closes. The
    filters that wait for a body are off on this route: a tunnel's body never ends."""
    skip = typed("envoy.config.route.v3.FilterConfig", disabled=True)
    return {
        "match": {"connect_matcher": {}},
        **direct(405, NO_TUNNEL, allow="GET, POST"),
        "typed_per_filter_config": {BUFFER_FILTER: skip, BODY_FIELDS_FILTER: skip},
    }


def fixed_routes_before() -> list[dict[str, Any]]:
    """The launcher's pages, ahead of the catalogue's routes."""
    health = {"cluster": HEALTH_CLUSTER, "timeout": "5s"}
    return [
        refused_tunnel(),
        {"match": {"path": "/healthcheck", "headers": _method_is("GET")}, "route": health},
        # The API's documents, generated from the request models at start, from the launcher.
        {
            "match": {"safe_regex": {"regex": LAUNCHER_PAGES}, "headers": _method_is("GET")},
            "route": {"cluster": DOCUMENTS_CLUSTER, "timeout": "5s"},
        },
        # The Open Inference Protocol's health and metadata, from the launcher's memory.
        {
            "match": {"safe_regex": {"regex": V2_PAGES}, "headers": _method_is("GET")},
            "route": {"cluster": OPEN_INFERENCE_PAGES_CLUSTER, "timeout": "5s"},
        },
    ]


def fixed_routes_after() -> list[dict[str, Any]]:
    """The generic path for any other model name, then known paths with a wrong method, then 404."""
    return [
        {
            "match": {"safe_regex": {"regex": GENERIC_PATH}, "headers": _method_is("POST")},
            "route": {
                "cluster": GENERIC_CLUSTER,
                "timeout": "0s",
                "idle_timeout": f"{GENERIC_IDLE_S}s",
                "retry_policy": CONNECTION_RETRIES,
            },
        },
        {
            "match": {"safe_regex": {"regex": GENERIC_PATH}},
            **direct(405, "method not allowed; use POST", allow="POST"),
        },
        {
            "match": {"safe_regex": {"regex": GET_PAGES}},
            **direct(405, "method not allowed; use GET", allow="GET"),
        },
        {
            "match": {"safe_regex": {"regex": V2_INFER_PATH}, "headers": _method_is("POST")},
            **direct(404, "no model of that name is served over the Open Inference Protocol here"),
        },
        {
            "match": {"safe_regex": {"regex": V2_INFER_PATH}},
            **direct(405, "method not allowed; use POST", allow="POST"),
        },
        {
            "match": {"safe_regex": {"regex": V2_PAGES}},
            **direct(405, "method not allowed; use GET", allow="GET"),
        },
        {"match": {"prefix": "/"}, **direct(404, NO_ROUTE)},
    ]


def virtual_host(routes: RouteTable, inference_token: str) -> dict[str, Any]:
    """Every public route, with the headers Envoy drops, adds and hides. The Lua filter runs
    only on the routes that pick a model by a body field: elsewhere its two calls a request
    cost Envoy CPU for nothing (docs/BENCHMARKS.md)."""

    def own_answer(route: dict[str, Any]) -> dict[str, Any]:
        # Every route names its body limit, for the 413's sentence: the catalogue's routes their
        # model's, the others Envoy's own.
        route = combined(body_limit(BODY_LIMIT_BYTES), route)
        if LUA_FILTER in route.get("metadata", {}).get("filter_metadata", {}):
            return route
        skip = typed("envoy.config.route.v3.FilterConfig", disabled=True)
        return {
            **route,
            "typed_per_filter_config": {**route.get("typed_per_filter_config", {}), LUA_FILTER: skip},
        }

    return {
        "name": "api",
        "domains": ["*"],
        # TorchServe's streaming marker stays inside.
        "response_headers_to_remove": ["ts_stream_next"],
        # The worker's Open Inference mark and a request's deadline are set by the routes only,
        # never by a client.
        "request_headers_to_remove": [*UNREAD_HEADERS, PROTOCOL_HEADER, *WORKER_HEADERS],
        # TorchServe's inference key; clients never see or send it.
        "request_headers_to_add": [header_to_add("authorization", f"Bearer {inference_token}")],
        "routes": [own_answer(r) for r in [*fixed_routes_before(), *routes.routes(), *fixed_routes_after()]],
    }


def connection_manager(stat_prefix: str, **config: Any) -> dict[str, Any]:
    """An HTTP connection manager with the protections every listener reachable from other
    machines has: timeouts for headers, requests and idle streams, bounded headers, HTTP/1.0
    served, bounded HTTP/2, and Envoy's own answers as JSON."""
    return typed(
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        stat_prefix=stat_prefix,
        codec_type="AUTO",
        server_name="modelserver",
        # No x-request-id: nothing downstream reads it, and TorchServe's Python worker parses
        # every header of every request.
        generate_request_id=False,
        normalize_path=True,
        merge_slashes=True,
        path_with_escaped_slashes_action="REJECT_REQUEST",
        request_headers_timeout=f"{REQUEST_HEADERS_TIMEOUT_S}s",
        request_timeout=f"{REQUEST_TIMEOUT_S}s",
        stream_idle_timeout=f"{STREAM_IDLE_TIMEOUT_S}s",
        max_request_headers_kb=MAX_REQUEST_HEADERS_KB,
        common_http_protocol_options={
            "idle_timeout": f"{DOWNSTREAM_IDLE_S}s",
            "headers_with_underscores_action": "REJECT_REQUEST",
        },
        # HTTP/1.0 clients (ab, old firmware) are served; a 1.0 connection stays open only when
        # the request asks for keep-alive, as 1.0 says.
        http_protocol_options={"accept_http_10": True, "default_host_for_http_10": "modelserver"},
        http2_protocol_options={
            "max_concurrent_streams": H2_MAX_CONCURRENT_STREAMS,
            "initial_stream_window_size": H2_STREAM_WINDOW_BYTES,
            "initial_connection_window_size": H2_CONNECTION_WINDOW_BYTES,
        },
        local_reply_config=local_replies(),
        # CONNECT reaches the routes (which refuse it with a JSON 405) instead of hanging.
        upgrade_configs=[{"upgrade_type": "CONNECT"}],
        **config,
    )


def listener(
    name: str, settings: LaunchSettings, port: int, manager: dict[str, Any], *, own_budget: int = 0
) -> dict[str, Any]:
    """A listener on the listen address: a connection buffers at most one body, and one that
    sends nothing within FIRST_BYTES_TIMEOUT_S is closed. With `own_budget`, its connections
    are not counted against `--max-connections` and at most `own_budget` are open at once."""
    address = {"address": settings.listen_address, "port_value": port}
    limit = [
        {
            "name": "envoy.filters.network.connection_limit",
            "typed_config": typed(
                "envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit",
                stat_prefix=name,
                max_connections=own_budget,
            ),
        }
    ]
    return {
        "name": name,
        **({"ignore_global_conn_limit": True} if own_budget else {}),
        "address": {"socket_address": address},
        "per_connection_buffer_limit_bytes": BODY_LIMIT_BYTES,
        # The HTTP inspector waits for a connection's first bytes (to tell HTTP/1 from HTTP/2):
        # one that sends none within FIRST_BYTES_TIMEOUT_S is closed.
        "listener_filters": [
            {
                "name": "envoy.filters.listener.http_inspector",
                "typed_config": typed("envoy.extensions.filters.listener.http_inspector.v3.HttpInspector"),
            }
        ],
        "listener_filters_timeout": f"{FIRST_BYTES_TIMEOUT_S}s",
        "continue_on_listener_filters_timeout": False,
        "filter_chains": [
            {
                "filters": [
                    *(limit if own_budget else []),
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": manager},
                ]
            }
        ],
    }


def public_listener(settings: LaunchSettings, inference_token: str, routes: RouteTable) -> dict[str, Any]:
    """The API's listener: every public route."""
    manager = connection_manager(
        PUBLIC_LISTENER,
        http_filters=[ACCESS_LOG_PATH_FILTER, *http_filters(routes)],
        route_config={
            "name": PUBLIC_LISTENER,
            # The virtual host's removals before a route's additions (the v2 routes' mark).
            "most_specific_header_mutations_wins": True,
            "virtual_hosts": [virtual_host(routes, inference_token)],
        },
        access_log=[
            {
                "name": "envoy.access_loggers.file",
                "typed_config": typed(
                    "envoy.extensions.access_loggers.file.v3.FileAccessLog",
                    path=str(settings.runtime_dir / "envoy" / ACCESS_LOG_NAME),
                    log_format={"json_format": ACCESS_LOG_FIELDS},
                ),
            }
        ],
    )
    # OpenTelemetry tracing when OTEL_EXPORTER_OTLP_ENDPOINT is set (modelserver/launcher/envoy/tracing.py).
    labels = {GENERIC_PATH: "/predictions/{model}"}
    manager = traced_manager(manager, settings.tracing, labels, untraced=(HEALTH_CLUSTER, *PAGE_CLUSTERS))
    return listener(PUBLIC_LISTENER, settings, settings.ports.public, manager)


def prometheus_listener(settings: LaunchSettings) -> dict[str, Any]:
    """The operations port: GET /metrics (TorchServe's, Envoy's and the launcher's series in one
    scrape, through the `metrics` cluster and its limits, METRICS_LIMITS) and GET /healthcheck
    (the probes'), with OPERATIONS_CONNECTIONS of its own; anything else is a JSON 404 or 405.
    Never traced, never in the access log."""
    routes = [
        refused_tunnel(),
        {
            "match": {"path": "/metrics", "headers": _method_is("GET")},
            "route": {"cluster": METRICS_CLUSTER, "timeout": "5s"},
        },
        {
            "match": {"path": "/healthcheck", "headers": _method_is("GET")},
            "route": {"cluster": HEALTH_CLUSTER, "timeout": "5s"},
        },
        # Each model's candidate: shares, error rates, latencies, agreement (per-model traffic
        # figures, like /metrics: never on the public port).
        {
            "match": {"path": "/traffic", "headers": _method_is("GET")},
            "route": {"cluster": METRICS_CLUSTER, "timeout": "5s"},
        },
        {
            "match": {"safe_regex": {"regex": "^/(metrics|healthcheck|traffic)$"}},
            **direct(405, "method not allowed; use GET", allow="GET"),
        },
        {"match": {"prefix": "/"}, **direct(404, OPERATIONS_ONLY)},
    ]
    manager = connection_manager(
        PROMETHEUS_LISTENER,
        http_filters=[ROUTER],
        route_config={
            "name": PROMETHEUS_LISTENER,
            "virtual_hosts": [
                {
                    "name": PROMETHEUS_LISTENER,
                    "domains": ["*"],
                    "request_headers_to_remove": UNREAD_HEADERS,
                    "routes": routes,
                }
            ],
        },
    )
    return listener(
        PROMETHEUS_LISTENER, settings, settings.ports.prometheus, manager, own_budget=OPERATIONS_CONNECTIONS
    )


def runtime_layers(settings: LaunchSettings, routes: RouteTable) -> dict[str, Any]:
    """Envoy's runtime: the values this config starts with (the tracing exporter's, and each
    candidate's traffic shares as the runtime folder holds them), under the admin layer, which
    `/runtime_modify` changes while serving (`python -m modelserver traffic`, a rollback)."""
    static = {**(tracing_runtime(settings.tracing) if settings.tracing else {}), **routes.runtime_values()}
    return {"layers": [{"name": "static", "static_layer": static}, {"name": "admin", "admin_layer": {}}]}


def envoy_config(settings: LaunchSettings, inference_token: str, routes: RouteTable) -> dict[str, Any]:
    """The config for this instance's ports, routes and TorchServe key."""
    return {
        # Admin on a unix socket only the launcher's user can open.
        "admin": {"address": {"pipe": {"path": str(settings.envoy_admin_socket), "mode": ADMIN_SOCKET_MODE}}},
        "overload_manager": overload_manager(settings),
        "layered_runtime": runtime_layers(settings, routes),
        "static_resources": {
            "listeners": [public_listener(settings, inference_token, routes), prometheus_listener(settings)],
            # One cluster per catalogue model with its admission limits, and the generic one.
            "clusters": [
                *routes.clusters(settings.ports.inference, settings.shadow_socket),
                loopback_cluster(HEALTH_CLUSTER, settings.ports.health),
                *(
                    loopback_cluster(name, settings.ports.health, limits)
                    for name, limits in PAGE_CLUSTERS.items()
                ),
                *([collector_cluster(settings.tracing)] if settings.tracing else []),
            ],
        },
    }


def render_config(settings: LaunchSettings, inference_token: str, routes: RouteTable) -> str:
    """The config as the YAML file Envoy reads."""
    return yaml.safe_dump(envoy_config(settings, inference_token, routes), sort_keys=False, width=1000)


def main(argv: list[str] | None = None) -> int:
    """Print the config the launcher would run with these options (the key redacted), every
    catalogue model served (the launcher answers 503 on the routes of a model it skips)."""
    settings = settings_from_command_line(argv, environment(), prog="python -m modelserver envoy-config")
    routes = RouteTable(Catalogue.load(settings.catalogue), {})
    sys.stdout.write(render_config(settings, "<TorchServe inference key>", routes))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Envoy's public routes, generated from the catalogue's `routes:` and what is being served.

A route answers with its model, or picks one from a body field (`select_by`); a model that was
skipped (its source could not be fetched) answers 503 saying why and how to provide it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from modelserver.catalogue import Catalogue, RouteSpec
from modelserver.kinds.registry import KINDS
from modelserver.protocols.open_inference import BINARY_REFUSED, MODEL_VERSION, PROTOCOL, PROTOCOL_HEADER
from modelserver.serving.deadlines import ARRIVED_FORMAT, ARRIVED_HEADER, WAIT_HEADER
from modelserver.serving.headers import HANDLER_ANSWER

METADATA_NAMESPACE = "modelserver"
# Each model route names its model in its metadata, for the sentences of TorchServe's own errors.
MODEL_KEY = "model"
BODY_FIELDS_FILTER = "envoy.filters.http.json_to_metadata"
LUA_FILTER = "envoy.filters.http.lua"
BUFFER_FILTER = "envoy.filters.http.buffer"
# A request body: 413 beyond it, and what one connection buffers. A model's routes take less
# where its kind's limits allow (`max_body_bytes` of its settings): a language model's body is
# bounded by its character caps, so a client cannot make Envoy hold a megabyte there.
BODY_LIMIT_BYTES = 1 << 20
# Retried once, and only where the model never gave an answer: a request that never reached
# TorchServe (connect failure, refused stream, reset before the request was sent), and a reply
# TorchServe made itself, without the handler's mark: the worker holding the batch died or was
# removed ("Worker died." 500), ran out of memory (507), or no worker took the job. A model's
# own 500 is its answer and a slow request is never abandoned and sent again: neither costs
# twice. A job TorchServe loses without any reply (it can, while removing a worker) waits for
# the route's timeout and is answered 504.
SAFE_RETRIES = {
    "retry_on": "connect-failure,refused-stream,reset-before-request,retriable-headers",
    "retriable_headers": [{"name": HANDLER_ANSWER, "present_match": True, "invert_match": True}],
    "num_retries": 1,
}
# Names no catalogue model has: TorchServe's own 404 is the answer; only unsent requests retry.
CONNECTION_RETRIES = {"retry_on": "connect-failure,refused-stream,reset-before-request", "num_retries": 1}
POST = [{"name": ":method", "string_match": {"exact": "POST"}}]
GENERIC_MARGIN_S = 5
# Names that match no catalogue model (TorchServe answers 404) share one small cluster.
GENERIC_CLUSTER = "torchserve"
GENERIC_LIMITS = {"max_connections": 8, "max_pending_requests": 16, "max_requests": 24, "max_retries": 8}
UPSTREAM_IDLE_S = 10
# The Open Inference Protocol: `infer` of any model, and its GET pages (the launcher's).
V2_INFER_PATH = r"^/v2/models/[^/]+(/versions/[^/]+)?/infer$"
V2_PAGES = r"^/v2(/health/(live|ready)|/models/[A-Za-z0-9_.-]+(/versions/[A-Za-z0-9_.-]+)?(/ready)?)?$"
# Triton's binary tensor extension announces itself with this header: refused, not misread.
BINARY_TENSORS_HEADER = "inference-header-content-length"
# Routes that do not pick a model from the body skip the body-field filter: parsing every body
# cost Envoy 15% of its CPU per request on the crystal routes (docs/BENCHMARKS.md).
NO_BODY_FIELDS = {
    BODY_FIELDS_FILTER: {
        "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
        "disabled": True,
    }
}


def typed(kind: str, **config: Any) -> dict[str, Any]:
    """An Envoy extension's config: its type URL and fields."""
    return {"@type": f"type.googleapis.com/{kind}", **config}


def direct(status: int, message: str, **headers: str) -> dict[str, Any]:
    """A route action Envoy answers itself (the JSON error body comes from the local replies)."""
    action: dict[str, Any] = {"direct_response": {"status": status, "body": {"inline_string": message}}}
    if headers:
        action["response_headers_to_add"] = [
            {
                "header": {"key": key.replace("_", "-"), "value": value},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }
            for key, value in headers.items()
        ]
    return action


def combined(*parts: dict[str, Any]) -> dict[str, Any]:
    """Route fragments in one route: their per-filter settings, metadata and added headers
    merged."""
    route: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if key == "request_headers_to_add" and key in route:
                route[key] = [*route[key], *value]
            elif key in ("typed_per_filter_config", "metadata") and key in route:
                merged = {**route[key], **value}
                if key == "metadata":
                    namespaces = dict(route[key]["filter_metadata"])
                    for namespace, fields in value["filter_metadata"].items():
                        namespaces[namespace] = {**namespaces.get(namespace, {}), **fields}
                    merged["filter_metadata"] = namespaces
                route[key] = merged
            else:
                route[key] = value
    return route


def header_to_add(key: str, value: str) -> dict[str, Any]:
    """A header Envoy sets, replacing any of that name."""
    return {"header": {"key": key, "value": value}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}


# Headers Envoy sets for the worker: a client's own are removed before the routes add them.
WORKER_HEADERS = [ARRIVED_HEADER, WAIT_HEADER]


def body_limit(limit_bytes: int) -> dict[str, Any]:
    """A route's body limit: the buffer filter's, and its figure for the 413's sentence."""
    return {
        "typed_per_filter_config": {
            BUFFER_FILTER: {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.BufferPerRoute",
                "buffer": {"max_request_bytes": limit_bytes},
            }
        },
        "metadata": {"filter_metadata": {METADATA_NAMESPACE: {"body_limit": f"{limit_bytes:,} bytes"}}},
    }


def _field_is(field: str, value: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"filter": METADATA_NAMESPACE, "path": [{"key": field}], "value": value}]


def model_cluster(name: str) -> str:
    """Each model has its own Envoy cluster (the same TorchServe port) for its own limits."""
    return f"model_{name}"


def loopback_cluster(name: str, port: int, limits: Mapping[str, int] | None = None) -> dict[str, Any]:
    """A cluster of one endpoint on this machine's loopback (TorchServe, the health server);
    with `limits`, a circuit breaker holding them (beyond them Envoy refuses at once, flag UO)."""
    endpoint = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": endpoint}]}]},
    }
    if limits:
        cluster["circuit_breakers"] = {
            "thresholds": [{"priority": "DEFAULT", **limits, "track_remaining": True}]
        }
    return cluster


def torchserve_cluster(name: str, port: int, limits: Mapping[str, int]) -> dict[str, Any]:
    """A cluster to TorchServe's inference port whose circuit breaker holds `limits`: beyond
    them Envoy refuses at once (503, flag UO) instead of queueing without bound. Idle upstream
    connections close after UPSTREAM_IDLE_S: each Envoy worker keeps its own, and an idle one
    still counts against `max_connections`."""
    return {
        **loopback_cluster(name, port),
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "common_http_protocol_options": {"idle_timeout": f"{UPSTREAM_IDLE_S}s"},
                "explicit_http_config": {"http_protocol_options": {}},
            }
        },
        "circuit_breakers": {"thresholds": [{"priority": "DEFAULT", **limits, "track_remaining": True}]},
    }


class RouteTable:
    """Builds the route list, the body-field rules and the Lua selector table for Envoy."""

    def __init__(
        self,
        catalogue: Catalogue,
        skipped: Mapping[str, str],
        names: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self._catalogue = catalogue
        self._skipped = dict(skipped)
        # What each built archive answers to (the build's report); the catalogue's names else.
        self._names = dict(names or {})

    def _to_model(self, name: str, timeout_s: float) -> dict[str, Any]:
        if name in self._skipped:
            return direct(503, f"model {name} is not available: {self._skipped[name]}", retry_after="3600")
        # No total timeout: a stream may run long. The idle timeout bounds the wait for each
        # answer or chunk, which for a plain answer is the whole wait.
        action = {
            "route": {
                "cluster": model_cluster(name),
                "prefix_rewrite": f"/predictions/{name}",
                "timeout": "0s",
                "idle_timeout": f"{timeout_s:g}s",
                "retry_policy": SAFE_RETRIES,
            },
            # The request's deadline, for the worker: a request that reaches it after the
            # route has stopped waiting is answered 504 without being computed.
            "request_headers_to_add": [
                header_to_add(ARRIVED_HEADER, ARRIVED_FORMAT),
                header_to_add(WAIT_HEADER, str(round(timeout_s * 1000))),
            ],
        }
        # The model's name, for the sentences of TorchServe's own errors (`upstream_errors`).
        named = {"metadata": {"filter_metadata": {METADATA_NAMESPACE: {MODEL_KEY: name}}}}
        return combined(action, body_limit(self.body_limit(name)), named)

    def body_limit(self, name: str) -> int:
        """The body limit of a model's routes: what its kind's limits need, at most
        BODY_LIMIT_BYTES."""
        settings: Any = self._catalogue.models[name].settings
        return min(BODY_LIMIT_BYTES, settings.max_body_bytes())

    @staticmethod
    def _plain(spec: RouteSpec | None) -> dict[str, Any]:
        """Per-route settings: no body-field parsing where no field picks the model; where one
        does, its name for the Lua filter (which finds it in bodies that are not strict JSON)."""
        if spec is not None and spec.select_by:
            return {"metadata": {"filter_metadata": {LUA_FILTER: {"select_by": spec.select_by}}}}
        return {"typed_per_filter_config": NO_BODY_FIELDS}

    def choices(self, spec: RouteSpec) -> dict[str, str]:
        """Body-field value -> model, for a route that selects by a field."""
        if spec.choices:
            return dict(spec.choices)
        found = {}
        for name, entry in self._catalogue.models.items():
            for alias in self._names.get(name) or entry.served_names():
                found.setdefault(alias, name)
        return found

    def routes(self) -> list[dict[str, Any]]:
        """Every generated route, most specific first."""
        routes: list[dict[str, Any]] = []
        for path, spec in self._catalogue.routes.items():
            if spec.select_by:
                choices = self.choices(spec)
                for value, target in sorted(choices.items()):
                    match = {
                        "path": path,
                        "headers": POST,
                        "dynamic_metadata": _field_is(spec.select_by, {"string_match": {"exact": value}}),
                    }
                    routes.append({"match": match, **self._to_model(target, spec.timeout_s)})
                wanted = sorted(set(choices)) if spec.choices else sorted(set(choices.values()))
                unknown = f"'{spec.select_by}' must be one of: {', '.join(wanted)}"
                if not spec.choices:
                    unknown = f"unknown '{spec.select_by}'; served models: {', '.join(wanted)}"
                match = {
                    "path": path,
                    "headers": POST,
                    "dynamic_metadata": _field_is(spec.select_by, {"present_match": True}),
                }
                routes.append({"match": match, **direct(400, unknown)})
            # A route that picks its model from the body reads the body first, within the
            # largest limit of the models it may pick.
            default = self._to_model(spec.model, spec.timeout_s) if spec.model else direct(400, unknown)
            if spec.select_by:
                default = combined(default, body_limit(max(self.body_limit(m) for m in choices.values())))
            routes.append(combined({"match": {"path": path, "headers": POST}}, default, self._plain(spec)))
        # The generic path, per model: its own idle timeout (TorchServe's, plus a margin).
        for name, entry in sorted(self._catalogue.models.items()):
            timeout = entry.torchserve.responseTimeout + GENERIC_MARGIN_S
            match = {"path": f"/predictions/{name}", "headers": POST}
            routes.append(combined({"match": match}, self._to_model(name, timeout), self._plain(None)))
        routes.extend(self._open_inference_routes())
        paths = "|".join(re.escape(path) for path in self._catalogue.routes)
        if paths:
            routes.append(
                {
                    "match": {"safe_regex": {"regex": f"^({paths})$"}},
                    **direct(405, "method not allowed; use POST", allow="POST"),
                }
            )
        return routes

    def _open_inference_routes(self) -> list[dict[str, Any]]:
        """`POST /v2/models/{name}[/versions/1]/infer` for every model whose kind has tensors:
        to the model's own cluster and limits, marked for the worker (the mark is stripped from
        every client request by the virtual host); binary tensors refused first."""
        binary = {"name": BINARY_TENSORS_HEADER, "present_match": True}
        match = {"safe_regex": {"regex": V2_INFER_PATH}, "headers": [*POST, binary]}
        routes: list[dict[str, Any]] = [{"match": match, **direct(400, BINARY_REFUSED)}]
        mark = [header_to_add(PROTOCOL_HEADER, PROTOCOL)]
        for name, entry in sorted(self._catalogue.models.items()):
            if KINDS[entry.kind].open_inference is None:
                continue
            timeout = entry.torchserve.responseTimeout + GENERIC_MARGIN_S
            for path in (f"/v2/models/{name}/infer", f"/v2/models/{name}/versions/{MODEL_VERSION}/infer"):
                routes.append(
                    combined(
                        {"match": {"path": path, "headers": POST}},
                        self._to_model(name, timeout),
                        self._plain(None),
                        {"request_headers_to_add": mark},
                    )
                )
        return routes

    def clusters(self, torchserve_port: int) -> list[dict[str, Any]]:
        """One cluster per catalogue model with its admission limits, and the generic one.
        HTTP/1.1 to TorchServe: one connection per request in flight, so `max_connections` is
        the `concurrency` limit and `queue` requests wait for a connection. `max_requests` is
        set above both so that it never refuses a request on its own (with several Envoy
        workers, each has its own connection pool under the shared limits). Every request of a
        lost batch may retry."""
        clusters = [torchserve_cluster(GENERIC_CLUSTER, torchserve_port, GENERIC_LIMITS)]
        for name, entry in sorted(self._catalogue.models.items()):
            limits = entry.admission
            assert limits.concurrency is not None and limits.queue is not None  # set at load
            cluster_limits = {
                "max_connections": limits.concurrency,
                "max_requests": limits.concurrency + limits.queue,
                "max_pending_requests": limits.queue,
                "max_retries": limits.concurrency,
            }
            clusters.append(torchserve_cluster(model_cluster(name), torchserve_port, cluster_limits))
        return clusters

    def selector_rules(self) -> list[dict[str, Any]]:
        """json_to_metadata rules: copy each selecting body field into route metadata."""
        fields = sorted({spec.select_by for spec in self._catalogue.routes.values() if spec.select_by})
        return [
            {
                "selectors": [{"key": field}],
                "on_present": {"metadata_namespace": METADATA_NAMESPACE, "key": field, "type": "STRING"},
                "on_error": {
                    "metadata_namespace": METADATA_NAMESPACE,
                    "key": "body_not_json",
                    "value": {"string_value": "true"},
                },
            }
            for field in fields
        ]

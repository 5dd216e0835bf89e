"""Envoy's public routes, generated from the catalogue's `routes:` and what is being served.

A route answers with its model, or picks one from a body field (`select_by`); a model that was
skipped (its source could not be fetched) answers 503 saying why and how to provide it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from modelserver.catalogue import Catalogue, ModelEntry, RouteSpec, candidate_name
from modelserver.kinds.registry import KINDS
from modelserver.launcher.traffic.state import (
    Shares,
    canary_key,
    catalogue_shares,
    runtime_values,
    shadow_key,
)
from modelserver.protocols.open_inference import BINARY_REFUSED, MODEL_VERSION, PROTOCOL, PROTOCOL_HEADER
from modelserver.serving.deadlines import ARRIVED_FORMAT, ARRIVED_HEADER, WAIT_HEADER
from modelserver.serving.headers import HANDLER_ANSWER, VERSION_HEADER

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
# Shadow requests go to the launcher's comparer (a unix socket); it answers at once and compares
# later, so a few connections serve every model. Beyond its limits a mirror is dropped, never
# queued: the client's own request never waits for it.
SHADOW_CLUSTER = "shadow"
SHADOW_LIMITS = {"max_connections": 16, "max_pending_requests": 16, "max_requests": 32, "max_retries": 0}
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
    """Each model (and each candidate) has its own Envoy cluster (the same TorchServe port) for
    its own limits and statistics."""
    return f"model_{name}"


def _with_header(match: dict[str, Any], header: dict[str, Any]) -> dict[str, Any]:
    return {**match, "headers": [*match.get("headers", []), header]}


def pinned(version: str) -> dict[str, Any]:
    """A request that asks for `version` of a model."""
    return {"name": VERSION_HEADER, "string_match": {"exact": version}}


PINS_ANY = {"name": VERSION_HEADER, "present_match": True}


def percent_of(key: str) -> dict[str, Any]:
    """A share of requests, in percent, read from Envoy's runtime `key` (0 until it is set)."""
    return {"default_value": {"numerator": 0, "denominator": "HUNDRED"}, "runtime_key": key}


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


def shadow_cluster(socket_path: Path) -> dict[str, Any]:
    """The launcher's comparer, on a unix socket: where the shadow share is mirrored."""
    endpoint = {"address": {"pipe": {"path": str(socket_path)}}}
    return {
        "name": SHADOW_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": SHADOW_CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": endpoint}]}],
        },
        "circuit_breakers": {"thresholds": [{"priority": "DEFAULT", **SHADOW_LIMITS}]},
    }


class RouteTable:
    """Builds the route list, the body-field rules and the Lua selector table for Envoy."""

    def __init__(
        self,
        catalogue: Catalogue,
        skipped: Mapping[str, str],
        names: Mapping[str, Sequence[str]] | None = None,
        shares: Mapping[str, Shares] | None = None,
    ) -> None:
        self._catalogue = catalogue
        self._skipped = dict(skipped)
        # What each built archive answers to (the build's report); the catalogue's names else.
        self._names = dict(names or {})
        # Each candidate's traffic now (the runtime folder's), the catalogue's policy else.
        self._shares = dict(catalogue_shares(catalogue) if shares is None else shares)

    def _to_model(
        self, name: str, timeout_s: float, registration: ModelEntry | None = None
    ) -> dict[str, Any]:
        """The action of a route to `name`'s primary, or to `registration` (its candidate)."""
        served = registration or self._catalogue.models[name]
        if served.name in self._skipped:
            reason = self._skipped[served.name]
            return direct(503, f"model {served.name} is not available: {reason}", retry_after="3600")
        # No total timeout: a stream may run long. The idle timeout bounds the wait for each
        # answer or chunk, which for a plain answer is the whole wait.
        action = {
            "route": {
                "cluster": model_cluster(served.name),
                "prefix_rewrite": f"/predictions/{served.name}",
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
            # Which version answered: every answer says so.
            "response_headers_to_add": [header_to_add(VERSION_HEADER, served.version)],
        }
        # The model's name, for the sentences of TorchServe's own errors (`upstream_errors`).
        named = {"metadata": {"filter_metadata": {METADATA_NAMESPACE: {MODEL_KEY: name}}}}
        return combined(action, body_limit(self.body_limit(name)), named)

    def _served(
        self, match: dict[str, Any], name: str, timeout_s: float, *parts: dict[str, Any], mirror: bool = True
    ) -> list[dict[str, Any]]:
        """The routes of one request shape that `name` answers, in the order Envoy tries them: a
        pinned version (`x-model-version`), an unknown one (404), the candidate's canary share,
        then the primary, which also mirrors its shadow share to the comparer (`mirror`)."""
        entry = self._catalogue.models[name]
        candidate = self._catalogue.candidates().get(name)
        primary = combined({"match": match}, self._to_model(name, timeout_s), *parts)
        if candidate is None:
            other = {**pinned(entry.version), "invert_match": True}
            return [self._unknown_version(_with_header(match, other), name, parts), primary]
        to_candidate = combined({"match": match}, self._to_model(name, timeout_s, candidate), *parts)
        routes = [
            combined(to_candidate, {"match": _with_header(match, pinned(candidate.version))}),
            combined(primary, {"match": _with_header(match, pinned(entry.version))}),
            self._unknown_version(match, name, parts),
        ]
        if candidate.name in self._skipped or name in self._skipped:
            return [*routes, primary]
        routes.append(
            combined(to_candidate, {"match": {**match, "runtime_fraction": percent_of(canary_key(name))}})
        )
        if mirror:
            shadow = [{"cluster": SHADOW_CLUSTER, "runtime_fraction": percent_of(shadow_key(name))}]
            primary = {**primary, "route": {**primary["route"], "request_mirror_policies": shadow}}
        return [*routes, primary]

    def _unknown_version(
        self, match: dict[str, Any], name: str, parts: Sequence[dict[str, Any]]
    ) -> dict[str, Any]:
        """A pin (`x-model-version`) naming no version of `name`: a 404 listing its versions."""
        versions = [version.version for version in (self._catalogue.models[name], *self._candidate_of(name))]
        sentence = f"model {name} has no such version; its versions: {', '.join(versions)} ({VERSION_HEADER})"
        limit = body_limit(self.body_limit(name))  # as the model's own routes: 413 before 404
        return combined({"match": _with_header(match, PINS_ANY)}, direct(404, sentence), limit, *parts)

    def _candidate_of(self, name: str) -> list[ModelEntry]:
        candidate = self._catalogue.candidates().get(name)
        return [candidate] if candidate is not None else []

    def generic_timeout_s(self, name: str) -> float:
        """How long a generic route of `name` waits for an answer: the longest TorchServe
        response timeout of its versions, plus a margin."""
        versions = [self._catalogue.models[name], *self._candidate_of(name)]
        return max(version.torchserve.responseTimeout for version in versions) + GENERIC_MARGIN_S

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

    def _picked(self, path: str, spec: RouteSpec) -> list[dict[str, Any]]:
        """A route that picks its model by a body field: one set of routes per value, a 400 for
        an unknown value. Its default (no field) reads the body within the largest limit of the
        models it may pick."""
        assert spec.select_by is not None
        choices = self.choices(spec)
        routes: list[dict[str, Any]] = []
        for value, target in sorted(choices.items()):
            match = {
                "path": path,
                "headers": POST,
                "dynamic_metadata": _field_is(spec.select_by, {"string_match": {"exact": value}}),
            }
            routes += self._served(match, target, spec.timeout_s)
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
        limit = body_limit(max(self.body_limit(m) for m in choices.values()))
        default = {"path": path, "headers": POST}
        if spec.model:
            return routes + self._served(default, spec.model, spec.timeout_s, limit, self._plain(spec))
        return [*routes, combined({"match": default}, direct(400, unknown), limit, self._plain(spec))]

    def routes(self) -> list[dict[str, Any]]:
        """Every generated route, most specific first."""
        routes: list[dict[str, Any]] = []
        for path, spec in self._catalogue.routes.items():
            if spec.select_by:
                routes += self._picked(path, spec)
            elif spec.model:
                match = {"path": path, "headers": POST}
                routes += self._served(match, spec.model, spec.timeout_s, self._plain(spec))
        # The generic path, per model: its own idle timeout (TorchServe's, plus a margin).
        for name, entry in sorted(self._catalogue.models.items()):
            timeout = self.generic_timeout_s(name)
            match = {"path": f"/predictions/{name}", "headers": POST}
            routes += self._served(match, name, timeout, self._plain(None))
            if entry.candidate is not None:
                hidden = {"path": f"/predictions/{candidate_name(name)}"}
                pin = f"send {VERSION_HEADER}: {entry.candidate.version} to /predictions/{name} instead"
                routes.append(
                    {"match": hidden, **direct(404, f"a candidate is not served by its own name; {pin}")}
                )
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
            timeout = self.generic_timeout_s(name)
            # The version in the path is the protocol's own (always the primary); without one, the
            # request is shared with a candidate like any other (never mirrored: the comparer
            # reads the kinds' own answers, not tensors).
            parts = (self._plain(None), {"request_headers_to_add": mark})
            routes += self._served(
                {"path": f"/v2/models/{name}/infer", "headers": POST}, name, timeout, *parts, mirror=False
            )
            versioned = {"path": f"/v2/models/{name}/versions/{MODEL_VERSION}/infer", "headers": POST}
            routes.append(combined({"match": versioned}, self._to_model(name, timeout), *parts))
        return routes

    def runtime_values(self) -> dict[str, int]:
        """Each candidate's shares as Envoy runtime keys (its static layer at start)."""
        return runtime_values(self._shares)

    def clusters(self, torchserve_port: int, shadow_socket: Path) -> list[dict[str, Any]]:
        """One cluster per catalogue model with its admission limits, and the generic one.
        HTTP/1.1 to TorchServe: one connection per request in flight, so `max_connections` is
        the `concurrency` limit and `queue` requests wait for a connection. `max_requests` is
        set above both so that it never refuses a request on its own (with several Envoy
        workers, each has its own connection pool under the shared limits). Every request of a
        lost batch may retry."""
        clusters = [torchserve_cluster(GENERIC_CLUSTER, torchserve_port, GENERIC_LIMITS)]
        if self._catalogue.candidates():
            clusters.append(shadow_cluster(shadow_socket))
        for name, entry in sorted(self._catalogue.registrations.items()):
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

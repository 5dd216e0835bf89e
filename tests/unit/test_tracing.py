"""OpenTelemetry tracing, opt-in: the variables parsed once, Envoy's config with and without them
(checked by `envoy --mode validate`), and the worker's trace-id log lines from `traceparent`."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import yaml

from load_tests.kit.routes import BRIEF_ROWS
from modelserver.catalogue import Catalogue
from modelserver.errors import ConfigError
from modelserver.launcher.envoy.config import (
    PROMETHEUS_LISTENER,
    PUBLIC_LISTENER,
    envoy_config,
    render_config,
)
from modelserver.launcher.envoy.process import validate
from modelserver.launcher.envoy.routes import RouteTable
from modelserver.launcher.envoy.tracing import COLLECTOR_CLUSTER, MODEL_TAG, TRACING_METADATA
from modelserver.launcher.settings import LaunchSettings, settings_from_command_line
from modelserver.launcher.tracing_settings import TracingSettings, tracing_from_environment
from modelserver.serving.trace_context import TraceParent, parse_traceparent, request_traces
from tests.helpers import crystal_handler

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
SPAN_ID = "b7ad6b7169203331"
SAMPLED = f"00-{TRACE_ID}-{SPAN_ID}-01"
ENDPOINT = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}


def manager_of(config: dict[str, Any], name: str = PUBLIC_LISTENER) -> dict[str, Any]:
    """A listener's HttpConnectionManager, the public one's by default."""
    [listener] = [found for found in config["static_resources"]["listeners"] if found["name"] == name]
    return listener["filter_chains"][0]["filters"][-1]["typed_config"]


def config_for(environ: dict[str, str], tmp_path: Path | None = None) -> dict[str, Any]:
    """Envoy's config as the launcher renders it with these variables."""
    options = ["--runtime-dir", str(tmp_path)] if tmp_path else []
    settings = settings_from_command_line(options, environ)
    return envoy_config(settings, "t0ken", RouteTable(Catalogue.load(), {}))


def route_to(manager: dict[str, Any], path: str) -> dict[str, Any]:
    """The first route matching exactly `path` that goes to a cluster."""
    [host] = manager["route_config"]["virtual_hosts"]
    return next(r for r in host["routes"] if r["match"].get("path") == path and "route" in r)


# ---------------------------------------------------------------------------------------------
# The variables


def test_no_endpoint_no_tracing() -> None:
    assert tracing_from_environment({}) is None
    assert tracing_from_environment({"OTEL_SERVICE_NAME": "x", "OTEL_TRACES_SAMPLER": "always_on"}) is None
    assert settings_from_command_line([], {}).tracing is None


@pytest.mark.parametrize(
    ("environ", "url"),
    [
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, "http://collector:4318/v1/traces"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector"}, "http://collector:4318/v1/traces"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://10.0.0.7:9/otlp/"}, "http://10.0.0.7:9/otlp/v1/traces"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://[::1]:4318/otlp"}, "http://[::1]:4318/otlp/v1/traces"),
        # The signal's own variable is the whole URL, and wins.
        (
            {**ENDPOINT, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://other:5555/spans"},
            "http://other:5555/spans",
        ),
    ],
)
def test_the_endpoint_is_a_base_url_with_v1_traces_appended(environ: dict[str, str], url: str) -> None:
    tracing = tracing_from_environment(environ)
    assert tracing is not None and tracing.protocol == "http/protobuf" and tracing.url == url


def test_defaults_and_the_variables_read_once() -> None:
    tracing = tracing_from_environment(ENDPOINT)
    assert tracing == TracingSettings(host="127.0.0.1", port=4318)
    assert tracing.service_name == "modelserver" and tracing.sampler == "always_on"
    tuned = tracing_from_environment(
        {
            **ENDPOINT,
            "OTEL_SERVICE_NAME": "models-eu",
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0.25",
            "OTEL_BSP_SCHEDULE_DELAY": "200",
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "64",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "3000",
        }
    )
    assert tuned is not None
    assert (tuned.service_name, tuned.sampler, tuned.sampler_ratio) == (
        "models-eu",
        "parentbased_traceidratio",
        0.25,
    )
    assert (tuned.flush_interval_ms, tuned.export_batch_spans, tuned.export_timeout_ms) == (200, 64, 3000)
    assert settings_from_command_line([], ENDPOINT).tracing == tracing


def test_grpc_when_the_protocol_says_so() -> None:
    tracing = tracing_from_environment(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    )
    assert tracing is not None and (tracing.protocol, tracing.port) == ("grpc", 4317)


@pytest.mark.parametrize(
    ("environ", "problem"),
    [
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "https://collector:4318"}, "https collectors are not supported"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"}, "not an http:// URL"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:99999"}, "port"),
        ({**ENDPOINT, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "http/protobuf or grpc"),
        ({**ENDPOINT, "OTEL_TRACES_SAMPLER": "jaeger_remote"}, "OTEL_TRACES_SAMPLER"),
        ({**ENDPOINT, "OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"}, "ratio"),
        ({**ENDPOINT, "OTEL_BSP_SCHEDULE_DELAY": "soon"}, "OTEL_BSP_SCHEDULE_DELAY"),
        ({**ENDPOINT, "OTEL_BSP_SCHEDULE_DELAY": "0"}, "flush_interval_ms"),
        ({**ENDPOINT, "OTEL_TRACES_EXPORTER": "zipkin"}, "only otlp"),
    ],
)
def test_what_envoy_cannot_honour_is_refused_at_launch(environ: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        tracing_from_environment(environ)


def test_a_bad_variable_is_a_command_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        settings_from_command_line([], {"OTEL_EXPORTER_OTLP_ENDPOINT": "https://collector"})
    assert stopped.value.code == 2 and "https collectors are not supported" in capsys.readouterr().err


@pytest.mark.parametrize("switch", [{"OTEL_SDK_DISABLED": "true"}, {"OTEL_TRACES_EXPORTER": "none"}])
def test_the_standard_off_switches(switch: dict[str, str]) -> None:
    assert tracing_from_environment({**ENDPOINT, **switch}) is None


# ---------------------------------------------------------------------------------------------
# Envoy's config


def test_off_the_config_has_no_tracer_no_collector_and_drops_client_trace_context() -> None:
    config = config_for({})
    manager = manager_of(config)
    assert "tracing" not in manager and manager["generate_request_id"] is False
    assert not any(
        key.startswith("tracing.") for key in config["layered_runtime"]["layers"][0]["static_layer"]
    )
    assert COLLECTOR_CLUSTER not in {c["name"] for c in config["static_resources"]["clusters"]}
    [host] = manager["route_config"]["virtual_hosts"]
    assert {"traceparent", "tracestate"} <= set(host["request_headers_to_remove"])
    assert "x-request-id" not in host["request_headers_to_remove"]
    assert not any("name" in route for route in host["routes"])
    assert TRACING_METADATA not in json.dumps(config)


def test_on_the_tracer_exports_otlp_http_with_route_model_and_status() -> None:
    config = config_for({**ENDPOINT, "OTEL_SERVICE_NAME": "models-eu"})
    manager = manager_of(config)
    tracing = manager["tracing"]
    provider = tracing["provider"]
    assert provider["name"] == "envoy.tracers.opentelemetry"
    otel = provider["typed_config"]
    assert otel["http_service"]["http_uri"] == {
        "uri": "http://127.0.0.1:4318/v1/traces",
        "cluster": COLLECTOR_CLUSTER,
        "timeout": "10s",
    }
    assert otel["service_name"] == "models-eu" and "grpc_service" not in otel
    # The default: every request, whatever a client's sampled flag says (Envoy's own sampling
    # decides, which also keeps a route's "never traced"; a client's trace id is continued).
    assert "sampler" not in otel
    assert tracing["random_sampling"] == {"value": 100} and tracing["spawn_upstream_span"] is True
    assert tracing["operation"] == "%REQ(:METHOD)% %ROUTE_NAME%"
    tags = {tag["tag"]: tag for tag in tracing["custom_tags"]}
    assert tags["http.route"]["value"] == "%ROUTE_NAME%"
    assert tags[MODEL_TAG]["metadata"]["metadata_key"] == {
        "key": TRACING_METADATA,
        "path": [{"key": "model"}],
    }
    [collector] = [c for c in config["static_resources"]["clusters"] if c["name"] == COLLECTOR_CLUSTER]
    assert collector["type"] == "STATIC"
    address = collector["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address == {"socket_address": {"address": "127.0.0.1", "port_value": 4318}}
    [layer, _admin] = config["layered_runtime"]["layers"]
    assert layer["static_layer"] == {
        "tracing.opentelemetry.flush_interval_ms": 5000,
        "tracing.opentelemetry.min_flush_spans": 512,
    }


def test_on_routes_are_named_know_their_model_and_probes_are_not_traced() -> None:
    manager = manager_of(config_for(ENDPOINT))
    # Envoy samples by the request id; TorchServe never sees it.
    assert manager["generate_request_id"] is True
    [host] = manager["route_config"]["virtual_hosts"]
    assert "x-request-id" in host["request_headers_to_remove"]
    assert "traceparent" not in host["request_headers_to_remove"]
    # Routes are named for span names (few names, never the client's path) and know their model.
    sklearn = route_to(manager, "/sklearn")
    assert sklearn["name"] == "/sklearn"
    assert sklearn["metadata"]["filter_metadata"][TRACING_METADATA] == {"model": "crystal_sklearn"}
    generic = next(
        r
        for r in host["routes"]
        if r["match"].get("safe_regex", {}).get("regex", "").startswith("^/predictions/")
    )
    assert generic["name"] == "/predictions/{model}"
    assert TRACING_METADATA not in generic["metadata"]["filter_metadata"]
    astromech = [r for r in host["routes"] if r["match"].get("path") == "/astromech" and "route" in r]
    assert {r["metadata"]["filter_metadata"][TRACING_METADATA]["model"] for r in astromech} == {
        "crystal_sklearn",
        "crystal_pytorch",
    }
    # Probes and scrapes (the launcher's pages) are never traced; the model routes are.
    health = route_to(manager, "/healthcheck")
    assert health["tracing"]["random_sampling"] == {"numerator": 0}
    metrics = manager_of(config_for(ENDPOINT), PROMETHEUS_LISTENER)
    assert "tracing" not in metrics, "scrapes are never traced"
    assert "tracing" not in sklearn and "tracing" not in generic
    # The Lua filter's metadata on a selecting route is kept.
    predict = [r for r in host["routes"] if r["match"].get("path") == "/predict"]
    assert any("envoy.filters.http.lua" in r.get("metadata", {}).get("filter_metadata", {}) for r in predict)


def test_a_share_of_requests_at_the_edge_or_a_ratio_that_follows_the_parent() -> None:
    edge = {**ENDPOINT, "OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"}
    tracing = manager_of(config_for(edge))["tracing"]
    assert (
        tracing["random_sampling"] == {"value": 10.0} and "sampler" not in tracing["provider"]["typed_config"]
    )
    # At the edge a client's sampled flag is set before Envoy decides (its trace id kept).
    [flag] = manager_of(config_for(edge))["early_header_mutation_extensions"]
    [mutation] = flag["typed_config"]["mutations"]
    assert mutation["append"] == {
        "header": {"key": "traceparent", "value": "%REQ(traceparent):53%01"},
        "append_action": "OVERWRITE_IF_EXISTS",
    }
    trusting = {**edge, "OTEL_TRACES_SAMPLER": "parentbased_traceidratio"}
    assert "early_header_mutation_extensions" not in manager_of(config_for(trusting))
    tracing = manager_of(config_for(trusting))["tracing"]
    sampler = tracing["provider"]["typed_config"]["sampler"]
    assert tracing["random_sampling"] == {"value": 100} and sampler["name"].endswith("parent_based")
    wrapped = sampler["typed_config"]["wrapped_sampler"]
    assert wrapped["name"].endswith("trace_id_ratio_based")
    assert wrapped["typed_config"]["sampling_percentage"] == {"numerator": 100_000, "denominator": "MILLION"}


def test_grpc_to_a_collector_by_name() -> None:
    config = config_for(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel-collector:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    )
    otel = manager_of(config)["tracing"]["provider"]["typed_config"]
    assert otel["grpc_service"] == {"envoy_grpc": {"cluster_name": COLLECTOR_CLUSTER}, "timeout": "10s"}
    [collector] = [c for c in config["static_resources"]["clusters"] if c["name"] == COLLECTOR_CLUSTER]
    assert collector["type"] == "STRICT_DNS"
    options = collector["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    assert "http2_protocol_options" in options["explicit_http_config"]


@pytest.mark.parametrize(
    "environ",
    [
        {**ENDPOINT, "OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.5"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel-collector:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
        {**ENDPOINT, "OTEL_TRACES_SAMPLER": "always_off"},
    ],
    ids=["http-ratio", "grpc-dns", "always-off"],
)
def test_the_traced_config_validates(tmp_path: Path, environ: dict[str, str]) -> None:
    (tmp_path / "envoy").mkdir()  # Envoy opens the access log there even to validate
    config = tmp_path / "envoy.yaml"
    settings = settings_from_command_line(["--runtime-dir", str(tmp_path)], environ)
    config.write_text(render_config(settings, "t0ken", RouteTable(Catalogue.load(), {})))
    assert yaml.safe_load(config.read_text())["layered_runtime"]
    result = validate(config)
    assert result.returncode == 0, result.stderr


def test_tracing_adds_one_cluster_and_the_runtime_nothing_else_at_the_top() -> None:
    untraced = envoy_config(LaunchSettings(), "t", RouteTable(Catalogue.load(), {}))
    traced = envoy_config(settings_from_command_line([], ENDPOINT), "t", RouteTable(Catalogue.load(), {}))
    assert untraced["static_resources"]["clusters"] == traced["static_resources"]["clusters"][:-1]
    assert set(untraced) | {"layered_runtime"} == set(traced)


# ---------------------------------------------------------------------------------------------
# The worker


@pytest.mark.parametrize(
    ("header", "parsed"),
    [
        (SAMPLED, TraceParent(TRACE_ID, SPAN_ID, True)),
        (f"00-{TRACE_ID}-{SPAN_ID}-00", TraceParent(TRACE_ID, SPAN_ID, False)),
        (f" 00-{TRACE_ID}-{SPAN_ID}-03 ", TraceParent(TRACE_ID, SPAN_ID, True)),
        (f"01-{TRACE_ID}-{SPAN_ID}-01-later", TraceParent(TRACE_ID, SPAN_ID, True)),  # a later version
        (f"00-{TRACE_ID}-{SPAN_ID}-01-later", None),  # version 00 has exactly four fields
        (f"ff-{TRACE_ID}-{SPAN_ID}-01", None),
        (f"00-{'0' * 32}-{SPAN_ID}-01", None),
        (f"00-{TRACE_ID}-{'0' * 16}-01", None),
        (f"00-{TRACE_ID.upper()}-{SPAN_ID}-01", None),
        ("00-abc-def-01", None),
        ("", None),
        (None, None),
    ],
)
def test_traceparent_parsing_follows_the_w3c_recommendation(
    header: str | None, parsed: TraceParent | None
) -> None:
    assert parse_traceparent(header) == parsed


def test_the_handler_logs_the_trace_id_of_each_sampled_request(
    crystal_model_dirs: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    handler, context = crystal_handler(crystal_model_dirs["sklearn"])
    unsampled = f"00-{'1' * 32}-{SPAN_ID}-00"
    context.request_headers = {
        0: {"traceparent": SAMPLED},
        1: {"traceparent": SAMPLED},
        2: {"traceparent": unsampled},
    }
    secret = "zqx-private-text"
    batch = [
        {"body": json.dumps({"crystalData": BRIEF_ROWS[:1]}).encode()},
        {"body": json.dumps({"crystalData": [[secret, 0.2, 0.3, 0.4]]}).encode()},
        {"body": json.dumps({"crystalData": BRIEF_ROWS[:1]}).encode()},
        {"body": json.dumps({"crystalData": BRIEF_ROWS[:1]}).encode()},  # no traceparent
    ]
    with caplog.at_level(logging.INFO, logger="modelserver.serving.trace_context"):
        handler.handle(batch, context)
    lines = [r.getMessage() for r in caplog.records if r.name == "modelserver.serving.trace_context"]
    assert lines == [
        f"answered model=crystal_sklearn request=1/4 status=200 trace_id={TRACE_ID} parent_span_id={SPAN_ID}",
        f"answered model=crystal_sklearn request=2/4 status=422 trace_id={TRACE_ID} parent_span_id={SPAN_ID}",
    ]
    assert secret not in caplog.text


def test_a_context_without_request_headers_has_no_traces() -> None:
    assert request_traces(object(), 2) == [None, None]

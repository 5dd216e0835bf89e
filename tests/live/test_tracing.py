"""OpenTelemetry tracing on a stack of its own (one crystal model, so it starts in seconds), with
OTEL_EXPORTER_OTLP_ENDPOINT pointing at a small OTLP/HTTP receiver in this process: Envoy's
spans arrive, continue the client's trace, name the route and carry the model and the status,
and the worker's log has each traced request's trace id."""

from __future__ import annotations

import http.server
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

# Generated protobuf modules: their names exist only at run time, where pylint cannot see them.
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (  # pylint: disable=no-name-in-module
    ExportTraceServiceRequest,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span  # pylint: disable=no-name-in-module

from load_tests.kit.routes import BRIEF_ROWS
from load_tests.kit.stack import Launcher, free_ports, running

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN_ID = "00f067aa0ba902b7"
SERVICE = "modelserver-under-test"
WAIT_S = 15  # Envoy exports every OTEL_BSP_SCHEDULE_DELAY (200 ms here; 5 s by default)


@dataclass
class Exported:
    """One span as the collector got it, with its resource's service name."""

    span: Span
    service: str

    @property
    def attributes(self) -> dict[str, str]:
        """The span's string attributes (Envoy sends every tag as a string)."""
        return {a.key: a.value.string_value for a in self.span.attributes}


@dataclass
class Receiver:
    """The spans an OTLP/HTTP collector received, and what else it saw."""

    spans: list[Exported] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def wait_for(self, wanted: Callable[[list[Exported]], list[Exported]], count: int) -> list[Exported]:
        """The spans `wanted` picks, once there are `count` of them (at most WAIT_S)."""
        deadline = time.monotonic() + WAIT_S
        while True:
            with self.lock:
                found = wanted(list(self.spans))
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.1)


def read_body(handler: http.server.BaseHTTPRequestHandler) -> bytes:
    """A request body, sized or chunked (Envoy's OTLP exporter sends it chunked)."""
    if handler.headers.get("content-length"):
        return handler.rfile.read(int(handler.headers["content-length"]))
    body = b""
    while size := int(handler.rfile.readline().split(b";")[0].strip(), 16):
        body += handler.rfile.read(size)
        handler.rfile.readline()
    handler.rfile.readline()  # the CRLF after the last, empty chunk
    return body


def receiver_handler(receiver: Receiver) -> type[http.server.BaseHTTPRequestHandler]:
    """POST /v1/traces with an `ExportTraceServiceRequest` in protobuf, as OTLP/HTTP says."""

    class Handler(http.server.BaseHTTPRequestHandler):
        """The collector's one endpoint."""

        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # pylint: disable=invalid-name
            """Decode one export; answer 200 with an empty (valid) export response."""
            body = read_body(self)
            content_type = self.headers.get("content-type", "")
            if self.path != "/v1/traces" or content_type != "application/x-protobuf":
                receiver.problems.append(f"{self.path} {content_type}")
            request = ExportTraceServiceRequest.FromString(body)
            with receiver.lock:
                for resource in request.resource_spans:
                    names = [
                        a.value.string_value for a in resource.resource.attributes if a.key == "service.name"
                    ]
                    for scope in resource.scope_spans:
                        receiver.spans += [Exported(span, names[0] if names else "") for span in scope.spans]
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:  # pylint: disable=redefined-builtin
            """Quiet."""

    return Handler


@pytest.fixture(name="collector", scope="module")
def collector_fixture() -> Iterator[tuple[Receiver, int]]:
    """An OTLP/HTTP receiver on a free loopback port."""
    receiver = Receiver()
    port = free_ports(1)[0]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), receiver_handler(receiver))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver, port
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(name="traced", scope="module")
def traced_fixture(
    tmp_path_factory: pytest.TempPathFactory, collector: tuple[Receiver, int]
) -> Iterator[Launcher]:
    """A stack of crystal_sklearn only, exporting spans to the receiver."""
    _, port = collector
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_SERVICE_NAME": SERVICE,
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    }
    with running(Launcher(tmp_path_factory.mktemp("traced"), models=("crystal_sklearn",), env=env)) as live:
        yield live


def worker_lines(stack: Launcher, trace_id: str) -> list[str]:
    """The worker's log lines naming `trace_id`, once there are some (log4j2 writes them a
    moment after the worker prints them)."""
    log = stack.runtime_dir / "torchserve" / "logs" / "model_log.log"
    deadline = time.monotonic() + WAIT_S
    while True:
        text = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
        lines = [line for line in text.splitlines() if f"trace_id={trace_id}" in line]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.2)


def in_trace(trace_id: str) -> Callable[[list[Exported]], list[Exported]]:
    """Picks the spans of one trace."""
    return lambda spans: [s for s in spans if s.span.trace_id.hex() == trace_id]


def test_a_request_continues_the_clients_trace_down_to_the_worker(
    traced: Launcher, collector: tuple[Receiver, int]
) -> None:
    receiver, _ = collector
    traceparent = f"00-{TRACE_ID}-{CLIENT_SPAN_ID}-01"
    reply = requests.post(
        f"{traced.url}/sklearn",
        json={"crystalData": BRIEF_ROWS[:1]},
        headers={"traceparent": traceparent},
        timeout=30,
    )
    assert reply.status_code == 200, reply.text
    spans = receiver.wait_for(in_trace(TRACE_ID), 2)
    servers = [s for s in spans if s.span.kind == Span.SPAN_KIND_SERVER]
    clients = [s for s in spans if s.span.kind == Span.SPAN_KIND_CLIENT]
    assert len(servers) == 1 and clients, [(s.span.name, s.span.kind) for s in spans]
    [server] = servers
    # The client's span is the parent of Envoy's; Envoy's, of its call to TorchServe.
    assert server.span.parent_span_id.hex() == CLIENT_SPAN_ID
    assert {c.span.parent_span_id for c in clients} == {server.span.span_id}
    assert server.span.name == "POST /sklearn" and server.service == SERVICE
    assert server.attributes["http.route"] == "/sklearn"
    assert server.attributes["modelserver.model"] == "crystal_sklearn"
    assert server.attributes["upstream_cluster"] == "model_crystal_sklearn"
    assert server.attributes["http.status_code"] == "200"
    assert all(c.attributes["http.status_code"] == "200" for c in clients)
    assert not receiver.problems, receiver.problems
    # The worker saw the trace context of Envoy's call to it, and logged its trace id.
    [line] = worker_lines(traced, TRACE_ID)
    assert "model=crystal_sklearn" in line and "status=200" in line, line
    logged_parent = re.search(r"parent_span_id=([0-9a-f]{16})", line)
    assert logged_parent is not None and logged_parent.group(1) in {c.span.span_id.hex() for c in clients}


def test_a_clients_unsampled_flag_does_not_decide_what_is_recorded(
    traced: Launcher, collector: tuple[Receiver, int]
) -> None:
    """The edge samples every request by default (OTEL_TRACES_SAMPLER=always_on): a client's
    `traceparent` saying "not sampled" keeps its trace id but cannot turn recording off."""
    receiver, _ = collector
    trace_id = "5" * 32
    reply = requests.post(
        f"{traced.url}/sklearn",
        json={"crystalData": BRIEF_ROWS[:1]},
        headers={"traceparent": f"00-{trace_id}-{CLIENT_SPAN_ID}-00"},
        timeout=30,
    )
    assert reply.status_code == 200, reply.text
    [server] = [s for s in receiver.wait_for(in_trace(trace_id), 2) if s.span.kind == Span.SPAN_KIND_SERVER]
    assert server.span.parent_span_id.hex() == CLIENT_SPAN_ID and server.span.name == "POST /sklearn"


def test_a_request_without_a_traceparent_starts_a_trace_with_its_status(
    traced: Launcher, collector: tuple[Receiver, int]
) -> None:
    receiver, _ = collector
    reply = requests.post(
        f"{traced.url}/predictions/crystal_sklearn", json={"crystalData": [[0.1, 0.2]]}, timeout=30
    )
    assert reply.status_code == 422, reply.text

    def roots(spans: list[Exported]) -> list[Exported]:
        return [
            s
            for s in spans
            if s.span.name == "POST /predictions/crystal_sklearn" and s.span.kind == Span.SPAN_KIND_SERVER
        ]

    [root] = receiver.wait_for(roots, 1)
    assert not root.span.parent_span_id  # a new trace
    assert root.attributes["http.status_code"] == "422"
    assert root.attributes["modelserver.model"] == "crystal_sklearn"
    trace_id = root.span.trace_id.hex()
    assert trace_id != TRACE_ID and len(trace_id) == 32
    [line] = worker_lines(traced, trace_id)
    assert "status=422" in line, line


def test_envoys_own_answers_are_traced_by_route_never_by_the_clients_path(
    traced: Launcher, collector: tuple[Receiver, int]
) -> None:
    receiver, _ = collector
    assert requests.get(f"{traced.url}/no/such/route/zq1", timeout=10).status_code == 404

    def unmatched(spans: list[Exported]) -> list[Exported]:
        return [s for s in spans if s.attributes.get("http.url", "").endswith("/no/such/route/zq1")]

    [span] = receiver.wait_for(unmatched, 1)
    assert span.span.name == "GET /*" and span.attributes["http.status_code"] == "404"
    assert "modelserver.model" not in span.attributes


def test_health_probes_are_never_traced(traced: Launcher, collector: tuple[Receiver, int]) -> None:
    """The launcher polled /healthcheck until the stack was up; this probe even asks for a trace."""
    receiver, _ = collector
    probe = requests.get(
        f"{traced.url}/healthcheck", headers={"traceparent": f"00-{'7' * 32}-{CLIENT_SPAN_ID}-01"}, timeout=10
    )
    assert probe.status_code == 200
    assert requests.get(f"{traced.url}/nothing-here", timeout=10).status_code == 404  # a span after it

    def after_the_probe(spans: list[Exported]) -> list[Exported]:
        return [s for s in spans if s.attributes.get("http.url", "").endswith("/nothing-here")]

    assert receiver.wait_for(after_the_probe, 1)
    time.sleep(1)  # each Envoy worker exports its own spans: the other's flush, 200 ms apart
    with receiver.lock:
        names = {s.span.name for s in receiver.spans}
    assert not {name for name in names if "healthcheck" in name}, names
    assert not in_trace("7" * 32)(receiver.spans)


def test_the_launcher_says_where_spans_go_and_metrics_count_them(
    traced: Launcher, collector: tuple[Receiver, int]
) -> None:
    _, port = collector
    assert f"http://127.0.0.1:{port}/v1/traces" in Path(traced.log_file).read_text(encoding="utf-8")
    scrape = requests.get(traced.metrics_url, timeout=10).text
    sent = [line for line in scrape.splitlines() if line.startswith("envoy_tracing_opentelemetry_spans_sent")]
    assert sent and float(sent[0].split()[-1]) > 0, sent

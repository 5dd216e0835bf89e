"""W3C trace context in the worker: the trace id of each request, in the handler's log.

With tracing on, Envoy sends TorchServe a `traceparent` naming its span for the upstream call
(`modelserver/launcher/envoy/tracing.py`); with it off, Envoy drops the header, so nothing is logged.
The worker logs one line per request of a sampled trace after its batch is answered, with the
trace and parent span ids and the status: a trace found in the tracing backend leads to the
worker's lines, and back. Never a body, never another header.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

TRACEPARENT = "traceparent"
# version-traceid-parentid-flags, lower-case hex (W3C Trace Context, level 1); a later version
# may append fields after a dash, which this version ignores.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_INVALID_TRACE_ID = "0" * 32
_INVALID_SPAN_ID = "0" * 16
_SAMPLED = 0x01


@dataclass(frozen=True)
class TraceParent:
    """A request's place in a trace: its trace, the span that called it, whether it is sampled."""

    trace_id: str
    span_id: str
    sampled: bool


def parse_traceparent(value: str | None) -> TraceParent | None:
    """A `traceparent` header -> its ids, or None when it is absent or not valid (what the W3C
    recommendation says a receiver does with an invalid one: ignore it)."""
    if not value:
        return None
    match = _TRACEPARENT.fullmatch(value.strip())
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    if trace_id == _INVALID_TRACE_ID or span_id == _INVALID_SPAN_ID:
        return None
    return TraceParent(trace_id, span_id, bool(int(flags, 16) & _SAMPLED))


def request_traces(context: Any, count: int) -> list[TraceParent | None]:
    """The trace context of each request of a batch (TorchServe's `get_request_header`; a context
    without it has none)."""
    header = getattr(context, "get_request_header", None)
    if header is None:
        return [None] * count
    return [parse_traceparent(header(index, TRACEPARENT)) for index in range(count)]


def log_traced(model: str, traces: Sequence[TraceParent | None], statuses: Sequence[int]) -> None:
    """One line per request of a sampled trace: `trace_id=<32 hex>`, the calling span, the status."""
    size = len(statuses)
    for index, (trace, status) in enumerate(zip(traces, statuses, strict=True)):
        if trace is not None and trace.sampled:
            log.info(
                "answered model=%s request=%d/%d status=%d trace_id=%s parent_span_id=%s",
                model,
                index + 1,
                size,
                status,
                trace.trace_id,
                trace.span_id,
            )

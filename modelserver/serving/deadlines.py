"""Deadlines: a request its route has stopped waiting for is not computed.

Envoy stamps every request it sends a model with when it arrived (`ARRIVED_HEADER`, milliseconds
since the epoch) and how long its route waits for the answer (`WAIT_HEADER`), and strips both
from clients. By the time TorchServe hands the request to a worker it may have queued longer
than that: Envoy has answered the client 504 already (or the client gave up and went), and no
one will read the answer. Such a request is answered 504 at once and left out of the forward
pass, whose time then goes to the requests someone still waits for. Envoy and the worker run on
one machine (one pod), so they read one clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from modelserver.errors import DeadlineExceeded

ARRIVED_HEADER = "x-modelserver-arrived-ms"
WAIT_HEADER = "x-modelserver-wait-ms"
# Envoy's formatter for ARRIVED_HEADER: the request's start, seconds then their milliseconds.
ARRIVED_FORMAT = "%START_TIME(%s%3f)%"


def _number(value: Any) -> int | None:
    """A header's value as a whole number, or None when it is absent or not one."""
    if value is None:
        return None
    text = value.decode("latin-1") if isinstance(value, bytes | bytearray) else str(value)
    return int(text) if text.strip().isdigit() else None


def deadline_passed(arrived_ms: Any, wait_ms: Any, now_s: float) -> DeadlineExceeded | None:
    """The error for a request whose route's wait has run out by `now_s`, or None (also when
    the headers are missing or malformed: a request is never dropped on a guess)."""
    arrived, wait = _number(arrived_ms), _number(wait_ms)
    if arrived is None or wait is None or wait == 0:
        return None
    late_ms = now_s * 1000 - (arrived + wait)
    if late_ms <= 0:
        return None
    return DeadlineExceeded(
        f"the request waited {(wait + late_ms) / 1000:.1f} s for the model, longer than its route"
        f" waits ({wait / 1000:g} s); it was not computed"
    )


def late_requests(context: Any, count: int, now_s: float) -> Sequence[DeadlineExceeded | None]:
    """Each request of a batch: its deadline error, or None when it is still awaited (a context
    without request headers, as in tests of other layers, has none late)."""
    header = getattr(context, "get_request_header", None)
    if header is None:
        return [None] * count
    return [deadline_passed(header(i, ARRIVED_HEADER), header(i, WAIT_HEADER), now_s) for i in range(count)]

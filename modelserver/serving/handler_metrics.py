"""Per-model metrics every handler sends through TorchServe, scraped on the public `/metrics`.

TorchServe registers them when first sent (`model_metrics_auto_detect=true` in
config.properties) and labels each with `ModelName` (plus its own `Level` and `Hostname`):

| metric | type | meaning |
|---|---|---|
| `ModelRequests{Status}` | counter | requests answered, by HTTP status |
| `HandlerBatches` | counter | batches handled |
| `HandlerBatchRequests` | counter | requests in those batches (ratio: the batch size formed) |
| `ExpiredRequests` | counter | requests reached after their route stopped waiting: 504, not computed |
| `HandlerPreprocessSeconds` | histogram | per batch: decoding and validating the bodies |
| `HandlerInferenceSeconds` | histogram | per batch: the model calls |
| `HandlerPostprocessSeconds` | histogram | per batch: serialising the answers |
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from modelserver.serving.batch import BatchTimes

log = logging.getLogger(__name__)
REQUESTS_METRIC = "ModelRequests"
BATCHES_METRIC = "HandlerBatches"
BATCH_ITEMS_METRIC = "HandlerBatchRequests"
EXPIRED_METRIC = "ExpiredRequests"
PHASE_METRICS = {
    "preprocess": "HandlerPreprocessSeconds",
    "inference": "HandlerInferenceSeconds",
    "postprocess": "HandlerPostprocessSeconds",
}
STATUS_LABEL = "Status"
# Where TorchServe 0.12's metrics cache logs each metric line for the frontend to parse.
TS_METRIC_LOGGER = "ts.metrics.caching_metric"


@dataclass(frozen=True)
class Dimension:
    """A label as TorchServe's metrics cache reads it (`name`, `value`)."""

    name: str
    value: str


class _Lines(logging.Handler):
    """Keeps the messages it is handed."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@contextlib.contextmanager
def one_write(logger_name: str = TS_METRIC_LOGGER) -> Iterator[None]:
    """Log every line `logger_name` logs inside the block as one record at its end.

    The worker's log handler writes and flushes each record, one system call per metric line;
    measured on 2 cores, six lines per batch cost ~10% of /sklearn's throughput at 64 clients.
    The frontend reads stdout line by line, so one multi-line record reads the same.
    """
    logger = logging.getLogger(logger_name)
    collected = _Lines()
    propagate = logger.propagate
    logger.addHandler(collected)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(collected)
        logger.propagate = propagate
        if collected.lines:
            logger.info("\n".join(collected.lines))


# The statuses whose counters exist at 0 from the worker's start: an alert on the rate of 5xx
# answers would otherwise miss the first ones (a series appearing with its first increment).
STATUSES_FROM_START = (200, 500, 503, 504)


def report_start(metrics: Any) -> None:
    """Create the request counters at 0 when the worker loads, in one write."""
    if metrics is None:
        return
    try:
        with one_write():
            metrics.add_counter(BATCHES_METRIC, 0)
            metrics.add_counter(BATCH_ITEMS_METRIC, 0)
            for status in STATUSES_FROM_START:
                metrics.add_counter(REQUESTS_METRIC, 0, dimensions=[Dimension(STATUS_LABEL, str(status))])
    except Exception:  # pylint: disable=broad-exception-caught
        log.warning("could not create the request counters", exc_info=True)


def report_batch(metrics: Any, statuses: Sequence[int], times: BatchTimes, expired: int = 0) -> None:
    """Send one batch's counts and phase times to TorchServe's metrics cache (if any): a few
    lines per batch in one write, never one per request, so the hot path stays cheap. The
    expired requests' counter goes only with a batch that had some (each line costs the worker
    time before it can answer; an absent series reads as none expired)."""
    if metrics is None:
        return
    # Imported here: only a real TorchServe worker gets this far, and nothing else needs `ts`.
    from ts.metrics.metric_type_enum import MetricTypes  # pylint: disable=import-outside-toplevel

    # The answers are ready: a metrics failure must not turn them into a failed batch.
    try:
        with one_write():
            metrics.add_counter(BATCHES_METRIC, 1)
            metrics.add_counter(BATCH_ITEMS_METRIC, len(statuses))
            if expired:
                metrics.add_counter(EXPIRED_METRIC, expired)
            for status, count in sorted(Counter(statuses).items()):
                dimensions = [Dimension(STATUS_LABEL, str(status))]
                metrics.add_counter(REQUESTS_METRIC, count, dimensions=dimensions)
            for phase, name in PHASE_METRICS.items():
                metrics.add_time(name, getattr(times, phase), unit="s", metric_type=MetricTypes.HISTOGRAM)
    except Exception:  # pylint: disable=broad-exception-caught
        log.warning("could not record the batch's metrics", exc_info=True)

"""`GET /metrics`: one Prometheus scrape for the whole stack.

Concatenates TorchServe's metrics (frontend, and the per-model handler metrics of
`modelserver.serving.handler_metrics`, from its loopback metrics port), Envoy's statistics
(those used so far and every one an alert reads, from its admin socket, which stays private)
and the launcher's own series. Their names never collide: Envoy's start with `envoy_`, the launcher's with
`modelserver_`. A source that cannot be read is left out and reported by
`modelserver_scrape_up{source}` = 0, so a scrape never fails because one part is down.

A reading is shared for about a second (`CachedScrape`): a crowd of scrapers costs one reading
of each source per second, never one per request.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from modelserver.launcher.envoy.config import PUBLIC_LISTENER

# Log lines keep the logger name they have always carried.
log = logging.getLogger("modelserver.launcher.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
Source = Callable[[], str]  # returns exposition text; raises OSError when unreachable
ModelStatuses = Callable[[], Mapping[str, str]]  # model -> "ready" or why not
# Everything /metrics reports is read within this; Envoy's route to it allows 5 s.
SCRAPE_DEADLINE_S = 3.0
# Scrapes within this share one reading (Prometheus scrapes every 15 s or so: none sees a change).
SHARED_FOR_S = 1.0


# The load gauges an autoscaler watches (deploy/k8s/hpa.yaml, through prometheus-adapter):
# requests in flight on the public listener now, and the mean time the requests answered over
# the last QUEUE_WINDOW_S waited in TorchServe's queue for a worker.
IN_FLIGHT = "modelserver_requests_in_flight"
QUEUE_SECONDS = "modelserver_queue_seconds"
ENVOY_IN_FLIGHT = (
    "envoy_http_downstream_rq_active",
    f'{{envoy_http_conn_manager_prefix="{PUBLIC_LISTENER}"}}',
)
TS_QUEUE_MICROSECONDS = "ts_queue_latency_microseconds"
TS_REQUESTS = "ts_inference_requests_total"
QUEUE_WINDOW_S = 30.0
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")

# Envoy's statistics as Prometheus text: those used so far (an unused one adds nothing but
# size), and, used or not, the series an alert or a dashboard watches (docs/production.md,
# docs/operations.md): a counter that first appears with its first event (an overflow) hides
# that event from rate(), so each of these exists at 0 from the start. Envoy's own stat names.
WATCHED_ENVOY_STATS = (
    r"cluster\.model_[^.]+\.upstream_rq_(pending_overflow|time)",
    rf"http\.{PUBLIC_LISTENER}\.downstream_(rq_[1-5]xx|rq_time|rq_active|rq_timeout|cx_active)",
)
ENVOY_USED_STATS = "/stats/prometheus?usedonly"
ENVOY_WATCHED_STATS = "/stats/prometheus?filter=" + urllib.parse.quote(f"^({'|'.join(WATCHED_ENVOY_STATS)})$")


def _families(text: str) -> dict[str, list[str]]:
    """Exposition text as its families (each `# TYPE` line and the samples after it), in order."""
    families: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            current = families.setdefault(line.split()[2], [])
            current.append(line)
        elif line.strip() and current is not None:
            current.append(line)
    return families


def with_missing_samples(text: str, more: str) -> str:
    """`text`, plus each sample of `more` it lacks, in that sample's family."""
    families = _families(text)
    for name, lines in _families(more).items():
        have = families.setdefault(name, lines[:1])
        known = {line.rsplit(" ", 1)[0] for line in have[1:]}
        have += [line for line in lines[1:] if line.rsplit(" ", 1)[0] not in known]
    return "".join(line + "\n" for lines in families.values() for line in lines)


def series_total(text: str, name: str, labels: str | None = None) -> float | None:
    """The sum of a metric's samples in exposition text (those with exactly `labels`, if
    given), or None when it has none."""
    total, found = 0.0, False
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match and match.group(1) == name and (labels is None or match.group(2) == labels):
            total, found = total + float(match.group(3)), True
    return total if found else None


@dataclass
class LoadGauges:
    """Requests in flight and recent queue time, from the sources' own counters. The queue time
    is a difference of TorchServe's cumulative counters over a sliding window, so it follows the
    load within QUEUE_WINDOW_S and falls back to 0 when nothing was answered; a TorchServe
    restart (counters back to 0) starts the window anew."""

    window_s: float = QUEUE_WINDOW_S
    clock: Callable[[], float] = time.monotonic
    _history: deque[tuple[float, float, float]] = field(default_factory=deque)

    def exposition(self, envoy: str | None, torchserve: str | None) -> str:
        """The two gauges as exposition text (a gauge whose source was not read is left out)."""
        parts = []
        if envoy is not None and (active := series_total(envoy, *ENVOY_IN_FLIGHT)) is not None:
            parts.append(_single(IN_FLIGHT, "Requests in flight on the public port.", active))
        if torchserve is not None:
            queued = series_total(torchserve, TS_QUEUE_MICROSECONDS) or 0.0
            answered = series_total(torchserve, TS_REQUESTS) or 0.0
            parts.append(
                _single(
                    QUEUE_SECONDS,
                    f"Mean seconds the requests of the last {self.window_s:g} s waited for a worker.",
                    self._mean_wait(queued, answered),
                )
            )
        return "".join(parts)

    def _mean_wait(self, queued_us: float, answered: float) -> float:
        now = self.clock()
        if self._history and (queued_us < self._history[-1][1] or answered < self._history[-1][2]):
            self._history.clear()  # counters went back: TorchServe restarted
        self._history.append((now, queued_us, answered))
        while len(self._history) > 1 and now - self._history[1][0] >= self.window_s:
            self._history.popleft()
        _, first_us, first_answered = self._history[0]
        count = answered - first_answered
        return (queued_us - first_us) / count / 1e6 if count > 0 else 0.0


def _single(name: str, help_text: str, value: float) -> str:
    return f"# HELP {name} {help_text}\n# TYPE {name} gauge\n{name} {value:g}\n"


def http_source(url: str, timeout_s: float = SCRAPE_DEADLINE_S) -> Source:
    """A source read over HTTP (TorchServe's metrics port, loopback, no token needed)."""

    def fetch() -> str:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return str(response.read().decode("utf-8"))

    return fetch


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _gauge(name: str, help_text: str, samples: Mapping[str, float], label: str) -> str:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
    lines += [f'{name}{{{label}="{_escape(key)}"}} {value:g}' for key, value in sorted(samples.items())]
    return "\n".join(lines) + "\n"


@dataclass
class MetricsScraper:
    """Reads every source on each scrape (Prometheus scrapes every few seconds at most)."""

    sources: Mapping[str, Source]
    model_statuses: ModelStatuses
    load: LoadGauges = field(default_factory=LoadGauges)

    def scrape(self) -> bytes:
        """The whole exposition text. The sources are read in parallel, and whatever has not
        answered within SCRAPE_DEADLINE_S is left out (Envoy gives the route 5 s): one slow
        source never turns the whole scrape into a timeout."""
        pool = ThreadPoolExecutor(max_workers=len(self.sources) + 1, thread_name_prefix="metrics")
        try:
            fetches = {name: pool.submit(fetch) for name, fetch in self.sources.items()}
            statuses = pool.submit(self.model_statuses)
            deadline = time.monotonic() + SCRAPE_DEADLINE_S
            parts: list[str] = []
            texts: dict[str, str] = {}
            up: dict[str, float] = {}
            for name, future in fetches.items():
                try:
                    text = future.result(timeout=max(0.0, deadline - time.monotonic()))
                except (OSError, ValueError, TimeoutError) as error:
                    log.warning("/metrics could not read %s: %s", name, error or type(error).__name__)
                    up[name] = 0
                    continue
                up[name] = 1
                texts[name] = text
                parts.append(text if text.endswith("\n") or not text else text + "\n")
            try:
                models = statuses.result(timeout=max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                log.warning("/metrics could not read the models' states in time")
                models = {}
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        ready = {model: float(status == "ready") for model, status in models.items()}
        parts.append(self.load.exposition(texts.get("envoy"), texts.get("torchserve")))
        parts.append(_gauge("modelserver_scrape_up", "1 if /metrics could read this source.", up, "source"))
        parts.append(
            _gauge(
                "modelserver_model_ready", "1 if the model has a worker ready to answer.", ready, "model_name"
            )
        )
        return "".join(parts).encode("utf-8")


class CachedScrape:
    """One reading shared by every scrape for `shared_for_s`, and one scrape at a time reading
    anew: while one does, the others get the previous reading, or wait for the new one if there
    is none yet. A burst of scrapes thus reads TorchServe and Envoy once."""

    def __init__(
        self,
        scrape: Callable[[], bytes],
        shared_for_s: float = SHARED_FOR_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._scrape = scrape
        self._shared_for_s = shared_for_s
        self._clock = clock
        self._changed = threading.Condition()
        self._reading: bytes | None = None
        self._taken_at = -float("inf")
        self._refreshing = False

    def __call__(self) -> bytes:
        """The shared reading, read anew if it is older than `shared_for_s`."""
        with self._changed:
            while True:
                if self._reading is not None and self._clock() - self._taken_at < self._shared_for_s:
                    return self._reading
                if not self._refreshing:
                    self._refreshing = True
                    break
                if self._reading is not None:
                    return self._reading
                self._changed.wait(timeout=SCRAPE_DEADLINE_S)
        try:
            reading = self._scrape()
            with self._changed:
                self._reading, self._taken_at = reading, self._clock()
            return reading
        finally:
            with self._changed:
                self._refreshing = False
                self._changed.notify_all()

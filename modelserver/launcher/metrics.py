"""`GET /metrics`: one Prometheus scrape for the whole stack.

Concatenates TorchServe's metrics (frontend, and the per-model handler metrics of
`modelserver.serving.handler_metrics`, from its loopback metrics port), Envoy's statistics
(`/stats/prometheus?usedonly` from its admin socket, which stays private) and the launcher's
own series. Their names never collide: Envoy's start with `envoy_`, the launcher's with
`modelserver_`. A source that cannot be read is left out and reported by
`modelserver_scrape_up{source}` = 0, so a scrape never fails because one part is down.

A reading is shared for about a second (`CachedScrape`): a crowd of scrapers costs one reading
of each source per second, never one per request.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
Source = Callable[[], str]  # returns exposition text; raises OSError when unreachable
ModelStatuses = Callable[[], Mapping[str, str]]  # model -> "ready" or why not
# Everything /metrics reports is read within this; Envoy's route to it allows 5 s.
SCRAPE_DEADLINE_S = 3.0
# Scrapes within this share one reading (Prometheus scrapes every 15 s or so: none sees a change).
SHARED_FOR_S = 1.0


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
            up: dict[str, float] = {}
            for name, future in fetches.items():
                try:
                    text = future.result(timeout=max(0.0, deadline - time.monotonic()))
                except (OSError, ValueError, TimeoutError) as error:
                    log.warning("/metrics could not read %s: %s", name, error or type(error).__name__)
                    up[name] = 0
                    continue
                up[name] = 1
                parts.append(text if text.endswith("\n") or not text else text + "\n")
            try:
                models = statuses.result(timeout=max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                log.warning("/metrics could not read the models' states in time")
                models = {}
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        ready = {model: float(status == "ready") for model, status in models.items()}
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

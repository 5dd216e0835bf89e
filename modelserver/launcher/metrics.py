"""`GET /metrics`: one Prometheus scrape for the whole stack.

Concatenates TorchServe's metrics (frontend, and the per-model handler metrics of
`modelserver.serving.handler_metrics`, from its loopback metrics port), Envoy's statistics
(`/stats/prometheus?usedonly` from its admin socket, which stays private) and the launcher's
own series. Their names never collide: Envoy's start with `envoy_`, the launcher's with
`modelserver_`. A source that cannot be read is left out and reported by
`modelserver_scrape_up{source}` = 0, so a scrape never fails because one part is down.
"""

from __future__ import annotations

import logging
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
Source = Callable[[], str]  # returns exposition text; raises OSError when unreachable
ModelStatuses = Callable[[], Mapping[str, str]]  # model -> "ready" or why not


def http_source(url: str, timeout_s: float = 5.0) -> Source:
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
        """The whole exposition text."""
        parts: list[str] = []
        up: dict[str, float] = {}
        for name, fetch in self.sources.items():
            try:
                text = fetch()
            except (OSError, ValueError) as error:
                log.warning("/metrics could not read %s: %s", name, error)
                up[name] = 0
                continue
            up[name] = 1
            parts.append(text if text.endswith("\n") or not text else text + "\n")
        ready = {model: float(status == "ready") for model, status in self.model_statuses().items()}
        parts.append(_gauge("modelserver_scrape_up", "1 if /metrics could read this source.", up, "source"))
        parts.append(
            _gauge(
                "modelserver_model_ready", "1 if the model has a worker ready to answer.", ready, "model_name"
            )
        )
        return "".join(parts).encode("utf-8")

"""Every page the loopback server answers, put together once at start: /healthcheck from the
readiness loop, the API's documents, /metrics for the whole stack and the Open Inference GET
pages, each group limited to the readers Envoy lets through to it."""

from __future__ import annotations

import json

from modelserver.catalogue import Catalogue
from modelserver.kinds.registry import KINDS
from modelserver.launcher.envoy.config import DOCUMENT_READERS, METRICS_READERS, OPEN_INFERENCE_READERS
from modelserver.launcher.pages.docs import docs_pages
from modelserver.launcher.pages.health import (
    Document,
    HealthServer,
    Pages,
    ReaderLimit,
    Readiness,
    limited,
    static_pages,
)
from modelserver.launcher.pages.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from modelserver.launcher.pages.metrics import CachedScrape, MetricsScraper, Source, http_source
from modelserver.launcher.pages.open_inference import OpenInferencePages
from modelserver.launcher.traffic.watch import TrafficWatch
from modelserver.openapi import build_openapi


def api_documents(catalogue: Catalogue) -> dict[str, Document]:
    """/openapi.json (generated from the request models) and /docs, Swagger UI with every file
    served from here (works offline)."""
    document = json.dumps(build_openapi(catalogue), indent=2).encode("utf-8")
    return {
        "/openapi.json": ("application/json", document),
        **docs_pages(),
    }


def traffic_page(traffic: TrafficWatch | None) -> Document:
    """GET /traffic: each model's candidate, its shares now and how it compares (none: {})."""
    status = traffic.status() if traffic is not None else {}
    return ("application/json", json.dumps({"models": status}, indent=2).encode("utf-8"), NO_STORE)


NO_STORE = {"Cache-Control": "no-store"}


def loopback_pages(
    catalogue: Catalogue,
    readiness: Readiness,
    torchserve_metrics_port: int,
    envoy_stats: Source,
    traffic: TrafficWatch | None = None,
) -> Pages:
    """What the loopback health server answers besides /healthcheck: the API's documents (for
    at most DOCUMENT_READERS requests at once), /metrics (TorchServe's, Envoy's and the
    launcher's series in one scrape, shared for about a second) and /traffic, each made for at
    most METRICS_READERS requests at once."""
    sources: dict[str, Source] = {
        "torchserve": http_source(f"http://127.0.0.1:{torchserve_metrics_port}/metrics"),
        "envoy": envoy_stats,
    }
    if traffic is not None and traffic.active:
        sources["traffic"] = traffic.exposition
    scraper = MetricsScraper(sources=sources, model_statuses=readiness.statuses)
    shared = CachedScrape(scraper.scrape)
    documents = ReaderLimit("the API's documents", DOCUMENT_READERS)
    return {
        **documents.pages(static_pages(api_documents(catalogue))),
        "/traffic": limited("/traffic", lambda: traffic_page(traffic), METRICS_READERS),
        "/metrics": limited("/metrics", lambda: (METRICS_CONTENT_TYPE, shared()), METRICS_READERS),
    }


def page_server(
    port: int,
    readiness: Readiness,
    catalogue: Catalogue,
    torchserve_metrics_port: int,
    envoy_stats: Source,
    traffic: TrafficWatch | None = None,
) -> HealthServer:
    """The loopback server on `port`, not started: /healthcheck, the `loopback_pages`, and the
    Open Inference GET pages (from each kind's tensor codec and the readiness loop's reading)."""
    codecs = {name: KINDS[entry.kind].open_inference for name, entry in catalogue.models.items()}
    return HealthServer(
        port,
        readiness,
        loopback_pages(catalogue, readiness, torchserve_metrics_port, envoy_stats, traffic),
        json_pages=ReaderLimit("the Open Inference pages", OPEN_INFERENCE_READERS).json_pages(
            OpenInferencePages(codecs, readiness).answer
        ),
    )

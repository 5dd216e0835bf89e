"""/docs: Swagger UI's files as the launcher's page server serves them, without a running stack:
every file the index names is served with its content type, nothing comes from elsewhere, and
nothing is read per request."""

from __future__ import annotations

import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
import requests
from swagger_ui_bundle import swagger_ui_path

from modelserver.catalogue import Catalogue
from modelserver.launcher.envoy.config import GET_PAGES, LAUNCHER_PAGES
from modelserver.launcher.pages import docs
from modelserver.launcher.pages.assembly import api_documents
from modelserver.launcher.pages.health import HealthServer, Readiness, static_pages
from modelserver.openapi import build_openapi

# Anything a browser could fetch from another host: an absolute or scheme-relative URL.
EXTERNAL = re.compile(r"\b[a-z][a-z0-9+.-]*://|(?<![:\w])//[\w.-]+", re.IGNORECASE)


class _References(HTMLParser):
    """Every src and href in a page."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href") and value]


def references(page: bytes) -> list[str]:
    """The URLs an HTML page loads or links to."""
    parser = _References()
    parser.feed(page.decode("utf-8"))
    return parser.urls


@pytest.fixture(name="server", scope="module")
def server_fixture() -> Iterator[str]:
    """The launcher's page server with the API's documents, on a free loopback port."""
    pages = static_pages(api_documents(Catalogue.load()))
    server = HealthServer(0, Readiness([], lambda _name: "ready"), pages)
    server.start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.stop()


def test_every_file_the_index_names_is_served_from_here() -> None:
    pages = api_documents(Catalogue.load())
    named = references(pages["/docs"][1])
    assert {"/docs/swagger-ui-bundle.js", "/docs/swagger-ui.css", "/docs/docs.js"} <= set(named)
    for url in named:
        assert url.startswith("/") and not url.startswith("//"), url
        assert url in pages, f"{url} is named by /docs but not served"
    # docs.js starts Swagger UI on this server's own document.
    assert b'url: "/openapi.json"' in pages["/docs/docs.js"][1]


@pytest.mark.parametrize("path", ["/docs", "/docs/docs.js"])
def test_our_own_files_name_no_other_host(path: str) -> None:
    text = docs.docs_pages()[path][1].decode("utf-8")
    assert not EXTERNAL.search(text), EXTERNAL.search(text)


def test_the_vendor_files_are_the_packages_own() -> None:
    pages = docs.docs_pages()
    assert swagger_ui_path.name.startswith("swagger-ui-5.")  # OpenAPI 3.1 needs Swagger UI 5
    for name in docs.VENDOR_ASSETS:
        assert pages[f"/docs/{name}"][1] == (swagger_ui_path / name).read_bytes()


def test_the_files_are_read_once_at_start_not_per_request(monkeypatch: pytest.MonkeyPatch) -> None:
    pages = static_pages(docs.docs_pages())

    def no_disk(_self: Path) -> bytes:
        raise AssertionError("a page read the disk")

    monkeypatch.setattr(Path, "read_bytes", no_disk)
    monkeypatch.setattr(Path, "read_text", no_disk)
    first, again = pages["/docs/swagger-ui-bundle.js"](), pages["/docs/swagger-ui-bundle.js"]()
    assert first[1] is again[1] and len(first[1]) > 100_000


@pytest.mark.parametrize(
    ("path", "content_type", "cache"),
    [
        ("/docs", "text/html; charset=utf-8", "no-cache"),
        ("/docs/docs.js", "text/javascript; charset=utf-8", "no-cache"),
        ("/docs/swagger-ui-bundle.js", "text/javascript; charset=utf-8", docs.VENDOR_CACHE),
        ("/docs/swagger-ui.css", "text/css; charset=utf-8", docs.VENDOR_CACHE),
        ("/docs/favicon-32x32.png", "image/png", docs.VENDOR_CACHE),
        ("/docs/favicon-16x16.png", "image/png", docs.VENDOR_CACHE),
    ],
)
def test_each_file_is_served_with_its_type_and_caching(
    server: str, path: str, content_type: str, cache: str
) -> None:
    answer = requests.get(f"{server}{path}", timeout=5)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == content_type
    assert answer.headers["Cache-Control"] == cache
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert int(answer.headers["Content-Length"]) == len(answer.content) > 0
    if content_type == "image/png":
        assert answer.content.startswith(b"\x89PNG")


def test_the_index_forbids_every_other_origin(server: str) -> None:
    policy = requests.get(f"{server}/docs", timeout=5).headers["Content-Security-Policy"]
    directives = dict(item.strip().split(" ", 1) for item in policy.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == directives["connect-src"] == "'self'"  # Try it out: this origin


def test_an_unknown_docs_file_is_a_json_404(server: str) -> None:
    answer = requests.get(f"{server}/docs/swagger-ui.js.map", timeout=5)
    assert answer.status_code == 404 and answer.json()["code"] == 404


def test_the_other_pages_keep_their_headers(server: str) -> None:
    answer = requests.get(f"{server}/openapi.json", timeout=5)
    assert answer.headers["Content-Type"] == "application/json" and "Cache-Control" not in answer.headers


def test_try_it_out_calls_the_page_origin() -> None:
    # No `servers` (or only relative ones): Swagger UI then sends requests to the page's origin.
    servers = build_openapi(Catalogue.load()).get("servers", [])
    assert all(not EXTERNAL.search(server["url"]) for server in servers), servers


DOCS_FILES = ["/docs", *(f"/docs/{name}" for name in [*docs.OWN_ASSETS, *docs.VENDOR_ASSETS])]


@pytest.mark.parametrize("path", DOCS_FILES)
def test_envoy_routes_every_docs_file_to_the_launcher(path: str) -> None:
    assert path in docs.docs_pages()
    assert re.fullmatch(LAUNCHER_PAGES, path) and re.fullmatch(GET_PAGES, path)


@pytest.mark.parametrize(
    "path", ["/docs/", "/docs/..", "/docs/../healthcheck", "/docs/a/b.js", "/docsx", "/docs/.js"]
)
def test_envoy_routes_no_other_docs_path_to_the_launcher(path: str) -> None:
    assert not re.fullmatch(LAUNCHER_PAGES, path) and not re.fullmatch(GET_PAGES, path)

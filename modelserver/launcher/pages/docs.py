"""`/docs`: Swagger UI on `/openapi.json`, every file served by the launcher's page server.

The page must work where the server runs: offline, behind a firewall, with no CDN. Swagger UI's
static files come from the `swagger_ui_bundle` package (`swagger-ui-bundle-v2`, the upstream
swagger-ui-dist files as they are); the index (`docs.html`) and its start-up script
(`docs.js`) are the project's own, plain files with no template. Everything is read once, when
the launcher starts, so a request never touches the disk.
"""

from __future__ import annotations

import logging
from pathlib import Path

from swagger_ui_bundle import swagger_ui_path

from modelserver.launcher.pages.health import Document

# Log lines keep the logger name they have always carried.
log = logging.getLogger("modelserver.launcher.docs_pages")

HERE = Path(__file__).parent
INDEX = HERE / "docs.html"
OWN_ASSETS = {"docs.js": HERE / "docs.js"}
# Swagger UI's own files the index needs (BaseLayout: no standalone preset, no source maps).
VENDOR_ASSETS = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png", "favicon-16x16.png")
PREFIX = "/docs/"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
}
# Swagger UI's files change only with the package: a browser keeps them for a day. The index
# and its script are revalidated, so a new launcher's page is seen at once.
VENDOR_CACHE = "public, max-age=86400"
OWN_CACHE = "no-cache"
# The browser itself refuses anything from another origin: scripts, styles, images, and the
# requests "Try it out" sends. Swagger UI sets inline styles and draws icons from data: URLs.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)


def _document(name: str, data: bytes, cache: str) -> Document:
    content_type = CONTENT_TYPES[Path(name).suffix]
    headers = {"Cache-Control": cache, "X-Content-Type-Options": "nosniff"}
    if content_type.startswith("text/html"):
        headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    return content_type, data, headers


def docs_pages() -> dict[str, Document]:
    """`/docs` and its assets at `/docs/<file>`: (content type, body, headers), read now."""
    pages = {"/docs": _document(INDEX.name, INDEX.read_bytes(), OWN_CACHE)}
    for name, path in OWN_ASSETS.items():
        pages[PREFIX + name] = _document(name, path.read_bytes(), OWN_CACHE)
    for name in VENDOR_ASSETS:
        pages[PREFIX + name] = _document(name, (swagger_ui_path / name).read_bytes(), VENDOR_CACHE)
    log.debug("/docs: Swagger UI from %s, %d files", swagger_ui_path, len(pages))
    return pages

"""/docs in a real browser: Swagger UI renders /openapi.json from this server's own files, and
"Try it out" on POST /sklearn shows the model's answer, as a person using the page sees it.

The browser is Debian's chromium (`make browser`, run by `make test` and `make live`, installs
it), driven by playwright with `executable_path`: playwright never downloads a browser of its
own. Without chromium the test skips, saying why. The screenshots (docs-top.png, the page as
it opens; sklearn-try-it-out.png, the operation with its answer) are kept in
test-artifacts/docs_browser/ (git-ignored), and the test prints where.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from load_tests.kit.routes import BRIEF_ROWS
from load_tests.kit.stack import Launcher
from modelserver.project import PROJECT_ROOT
from tests.helpers import answers_close, check_json_error

pytestmark = pytest.mark.timeout(120, func_only=True)

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = PROJECT_ROOT / "test-artifacts" / "docs_browser"
# This machine's network is closed: without these, Chromium keeps calling home at start.
CHROMIUM_FLAGS = [
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
RENDER_TIMEOUT_MS = 30_000
SKLEARN = "#operations-default-post_sklearn"  # Swagger UI's id for POST /sklearn (tag "default")


@pytest.fixture(name="browser", scope="module")
def browser_fixture() -> Iterator[Any]:
    """Debian's headless chromium under playwright, or a skip naming what is missing."""
    if not CHROMIUM.is_file():
        pytest.skip(
            f"Debian's chromium is not installed ({CHROMIUM} is missing): `make browser` installs it "
            "with apt-get when run as root; its message says why it could not"
        )
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: make install")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            yield browser
        finally:
            browser.close()


def test_the_docs_files_pass_envoy_for_get_only(stack: Launcher) -> None:
    files = {"/docs/swagger-ui-bundle.js": "text/javascript", "/docs/swagger-ui.css": "text/css"}
    for path, content_type in files.items():
        answer = requests.get(f"{stack.url}{path}", timeout=10)
        assert answer.status_code == 200 and answer.headers["content-type"].startswith(content_type)
        assert answer.headers["cache-control"].startswith("public, max-age=")
        refused = check_json_error(requests.post(f"{stack.url}{path}", timeout=10), 405)
        assert str(refused["error"]).endswith("use GET")
    page = requests.get(f"{stack.url}/docs", timeout=10)
    assert "connect-src 'self'" in page.headers["content-security-policy"]
    check_json_error(requests.get(f"{stack.url}/docs/no-such-file.js", timeout=10), 404)
    check_json_error(requests.get(f"{stack.url}/docs/", timeout=10), 404)


def origin(url: str) -> str:
    """scheme://host:port of a URL."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


@dataclass
class Recorded:
    """What a page did: every request, every answer of 400 or more, console errors."""

    requested: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def watch(self, page: Any) -> None:
        """Record from now on."""
        page.on("request", lambda request: self.requested.append(request.url))
        page.on("response", lambda answer: answer.status >= 400 and self.failed.append(answer.url))
        page.on("console", lambda message: message.type == "error" and self.problems.append(message.text))
        page.on("pageerror", lambda error: self.problems.append(str(error)))


@dataclass(frozen=True)
class Executed:
    """What Swagger UI shows after Execute: the status, the response body, the request URL."""

    status: str
    body: str
    request_url: str


def try_it_out(page: Any, operation_id: str, body: Any) -> Executed:
    """Expand an operation, click "Try it out", send `body` with "Execute", read the answer,
    and keep a screenshot of the operation."""
    operation = page.locator(operation_id)
    operation.locator(".opblock-summary").click()
    operation.get_by_role("button", name="Try it out").click()
    editor = operation.locator("textarea.body-param__text")
    assert json.loads(editor.input_value()) == {"crystalData": [[0.92, 0.12, 0.31, 0.09]]}  # the example
    editor.fill(json.dumps(body))
    operation.locator("button.execute").click()
    answer = operation.locator(".live-responses-table .response").first
    answer.wait_for(timeout=RENDER_TIMEOUT_MS)
    executed = Executed(
        status=answer.locator(".response-col_status").inner_text().split()[0],
        body=answer.locator(".response-col_description .highlight-code code").first.inner_text(),
        request_url=operation.locator(".request-url pre").inner_text().strip(),
    )
    operation.screenshot(path=ARTIFACTS / "sklearn-try-it-out.png")
    print(f"screenshot: {ARTIFACTS / 'sklearn-try-it-out.png'}")
    return executed


def test_swagger_ui_renders_and_try_it_out_gets_the_model_answer(browser: Any, stack: Launcher) -> None:
    body = {"crystalData": BRIEF_ROWS}
    expected = requests.post(f"{stack.url}/sklearn", json=body, timeout=30)
    assert expected.status_code == 200, expected.text
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    recorded = Recorded()
    recorded.watch(page)
    elsewhere = stack.url.replace("127.0.0.1", "localhost") + "/healthcheck"
    try:
        page.goto(f"{stack.url}/docs", wait_until="load")
        # Rendered from /openapi.json: the title and version badge come from the document.
        title = page.locator(".swagger-ui .info .title")
        title.wait_for(timeout=RENDER_TIMEOUT_MS)
        assert "modelserver" in title.inner_text() and "OAS 3.1" in title.inner_text()
        assert page.locator(".opblock").count() >= 10
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=ARTIFACTS / "docs-top.png")
        print(f"screenshot: {ARTIFACTS / 'docs-top.png'}")
        executed = try_it_out(page, SKLEARN, body)
        # Try it out may call this origin only: the page's CSP refuses another (here localhost:
        # the same stack by another name, so nothing leaves the machine even if it were sent).
        refused = page.evaluate("url => fetch(url).then(() => 'sent', error => String(error))", elsewhere)
    finally:
        page.close()

    # The browser's own answer is the model's: the same labels and scores as a direct call.
    assert executed.status == "200", executed.body
    assert executed.request_url == f"{stack.url}/sklearn"
    shown = json.loads(executed.body)
    assert shown["prediction"] == expected.json()["prediction"]
    assert answers_close(shown, expected.json())
    assert refused.startswith("TypeError"), refused

    loaded = [url for url in recorded.requested if urlsplit(url).scheme in ("http", "https", "ws", "wss")]
    assert {origin(url) for url in loaded} == {stack.url}, loaded
    paths = {urlsplit(url).path for url in loaded}
    assert {"/docs", "/docs/swagger-ui-bundle.js", "/docs/swagger-ui.css", "/docs/docs.js"} <= paths
    assert {"/openapi.json", "/sklearn"} <= paths
    assert not recorded.failed, recorded.failed
    # The only console errors are the CSP's refusal of the other origin, which the test asked for.
    assert all("Content Security Policy" in problem for problem in recorded.problems), recorded.problems

"""The built site in a real browser: headless Chromium renders pages with their figures and math.

Opens the intro page and a Part 1 chapter over HTTP on localhost, waits for MathJax to typeset, and
checks every figure loaded and every math element became MathJax output. The site is built first
(``make book``) when it is missing. MathJax must be the vendored copy (``MATHJAX=local``, the default):
this machine has no route to the CDN.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import subprocess
import threading

import pytest

from tests.book.chapters import ROOT

HTML = ROOT / "_build" / "html"
PAGES = ["book/intro.html", "book/part1/02-attention-by-hand.html"]
SCREENSHOTS = ROOT / "_build" / "screenshots"

pytestmark = pytest.mark.browser


def _chromium() -> tuple[str, str] | None:
    browser = next(
        filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None
    )
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def _ensure_built(page: str) -> None:
    if not (HTML / page).is_file():
        subprocess.run(["make", "book"], cwd=ROOT, check=True)
    assert (HTML / page).is_file(), f"the build did not produce {page}"


@pytest.fixture(scope="module")
def site():
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(HTML))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def browser():
    found = _chromium()
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("CI needs Debian's chromium and chromium-driver (.ci/run installs them)")
        pytest.skip(
            "chromium/chromedriver not installed (apt-get install chromium chromium-driver)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,2000",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=found[1]), options=options)
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(60)
    yield driver
    driver.quit()


@pytest.mark.parametrize("page", PAGES)
def test_page_renders_figures_and_math(site, browser, page):
    _ensure_built(page)
    browser.get(f"{site}/{page}")
    assert "LLMs from scratch" in browser.title

    # MathJax must be the vendored copy, and must finish typesetting.
    src = browser.execute_script(
        "const s=[...document.scripts].find(s=>/tex-chtml/.test(s.src)); return s? s.src : null;"
    )
    assert src and src.startswith(site), f"MathJax not served locally: {src}"
    typeset = browser.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        const wait = (n) => {
          if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
            MathJax.startup.promise.then(() => done(true), (e) => done(String(e)));
          } else if (n > 0) { setTimeout(() => wait(n - 1), 100); } else { done('MathJax never loaded'); }
        };
        wait(300);
        """
    )
    assert typeset is True, typeset
    counts = browser.execute_script(
        """
        return {
          math: document.querySelectorAll('main .math').length,
          typeset: document.querySelectorAll('main .math mjx-container').length,
          errors: document.querySelectorAll('mjx-merror').length,
        };
        """
    )
    assert counts["math"] > 0, "the page has no math to typeset"
    assert counts["typeset"] == counts["math"], counts
    assert counts["errors"] == 0, counts

    # Figures: every image in the article has loaded with a real size.
    images = browser.execute_script(
        """
        return [...document.querySelectorAll('main img')].map(i => ({
          src: i.getAttribute('src'), ok: i.complete && i.naturalWidth > 0, w: i.naturalWidth}));
        """
    )
    figures = [i for i in images if i["w"] >= 200]
    assert figures, f"no figure on {page}: {images}"
    broken = [i["src"] for i in images if not i["ok"]]
    assert not broken, f"images failed to load: {broken}"

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SCREENSHOTS / (page.replace("/", "_") + ".png")))

"""The built site in a real browser: headless Chromium renders pages with their figures and math.

Opens the intro page and a Part 1 chapter over HTTP on localhost, waits for MathJax to typeset, and
checks every figure loaded and every math element became MathJax output; then opens every page with
an SVG diagram and checks each one loaded with a real size and has alt text. The site is built first
(``make book``) when it is missing. MathJax must be the vendored copy (``MATHJAX=local``, the default):
this machine has no route to the CDN.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
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


def _pages_with_diagrams() -> list[str]:
    """The built pages of every book source that includes an SVG diagram (a ``figure`` directive)."""
    pages = []
    for source in sorted((ROOT / "book").rglob("*.md")):
        if "api" in source.relative_to(ROOT / "book").parts[:1]:
            continue
        text = source.read_text(encoding="utf-8")
        if re.search(r"^```\{figure\} \S+\.svg", text, flags=re.M):
            pages.append(source.relative_to(ROOT).with_suffix(".html").as_posix())
    return pages


DIAGRAM_PAGES = _pages_with_diagrams()


def test_the_diagram_pages_are_found():
    # the scan itself: every chapter of Parts 6-9 has a diagram (book/partN/figures/)
    for part in (6, 7, 8, 9):
        chapters = sorted((ROOT / "book" / f"part{part}").glob("*.md"))
        assert chapters
        for chapter in chapters:
            assert chapter.relative_to(ROOT).with_suffix(".html").as_posix() in DIAGRAM_PAGES


@pytest.mark.parametrize("page", DIAGRAM_PAGES)
def test_every_diagram_loads_and_has_alt_text(site, browser, page):
    _ensure_built(page)
    browser.get(f"{site}/{page}")
    diagrams = browser.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        const imgs = [...document.querySelectorAll('main figure img')].filter(i => /\\.svg$/.test(i.getAttribute('src')));
        Promise.all(imgs.map(i => i.complete ? Promise.resolve() :
            new Promise(r => { i.onload = r; i.onerror = r; }))).then(() => done(imgs.map(i => ({
          src: i.getAttribute('src'), w: i.naturalWidth, h: i.naturalHeight,
          alt: (i.getAttribute('alt') || '').trim()}))));
        """
    )
    assert diagrams, f"no SVG diagram rendered on {page}"
    broken = [d["src"] for d in diagrams if not (d["w"] > 0 and d["h"] > 0)]
    assert not broken, f"diagrams that did not load on {page}: {broken}"
    no_alt = [d["src"] for d in diagrams if len(d["alt"]) < 20]
    assert not no_alt, f"diagrams without a real alt text on {page}: {no_alt}"


def test_the_execution_record_lists_every_chapter_and_each_chapter_links_to_its_row():
    # The built site (no browser needed, but the site is the browser tests' fixture): the appendix has
    # a row with a record for every chapter, and each chapter's line under its title links to it.
    import sys

    sys.path.insert(0, str(ROOT / "book" / "_ext"))
    from llmbook_execution_record import row_id

    from tests.book.chapters import chapters

    record_page = "book/appendix/execution-record.html"
    _ensure_built(record_page)
    table = (HTML / record_page).read_text(encoding="utf-8")
    for path in chapters():
        docname = path.relative_to(ROOT).with_suffix("").as_posix()
        if docname == "book/intro":
            continue  # the tour page runs one drawing cell and no recorded run
        row = re.search(rf'<tr[^>]*id="{row_id(docname)}".*?</tr>', table, re.S)
        assert row is not None, f"no row for {docname}"
        assert "no record" not in row.group(0), docname
        cells = re.sub(r"<[^>]+>", " ", row.group(0))
        assert re.search(r"\b(cpu|gpu)\b", cells), cells  # the profile
        assert re.search(r"\b[0-9a-f]{7}(\+dirty)?\b", cells), cells  # the commit
        page = (HTML / f"{docname}.html").read_text(encoding="utf-8")
        href = (
            f"{os.path.relpath(record_page, os.path.dirname(docname + '.html'))}#{row_id(docname)}"
        )
        assert f'href="{href}"' in page, f"{docname} does not link to its row ({href})"

"""The book as a reader meets it, in a real headless Chromium (Playwright + Debian's chromium).

The book is built once per session (``book_html`` in conftest.py, shared with test_book.py),
served from a thread on a loopback port, and EVERY page is opened (a few tabs at a time).
After MathJax has typeset and mermaid has drawn, each page is checked for:

- raw TeX: a text node outside MathJax's output (and outside code) containing ``$$`` or a
  TeX control word such as ``\\frac`` or ``\\begin`` (a ``$$`` block MyST did not parse);
- diagrams: every mermaid block became an SVG whose labels are at least 9 px at the default
  window width (1280 px);
- images: every ``<img>`` loaded (complete, non-zero natural size);
- offline: no request left the loopback host (such requests are blocked and listed);
- no console error, no uncaught exception, no failed (4xx/5xx) local response;
- a favicon.

Screenshots of a few key pages go to ``_build/screenshots/`` in the repository for review.
Without Chromium or Playwright every test here is skipped with one line saying which is missing
(``.ci/run`` installs Chromium; ``pip install -e .[dev]`` installs Playwright).
"""

from __future__ import annotations

import asyncio
import functools
import http.server
import os
import re
import shutil
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / "_build" / "screenshots"
#: Pages photographed for review (relative to the book root, without .html).
KEY_PAGES = ("README", "chapters/00-getting-started/warmup", "chapters/01-language-models/ngram_lm",
             "chapters/02-attention/models", "chapters/02-attention/sdpa")
WIDTH, HEIGHT = 1280, 800
MIN_DIAGRAM_PX = 9.0
TABS = 3
#: Raw TeX as a reader would see it: display-math fences or a control word (two letters or
#: more, so "\n" in prose is not one).
RAW_TEX = re.compile(r"\$\$|\\(?:[A-Za-z]{2,})\b")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("book")]


def chromium_path() -> str | None:
    for name in (os.environ.get("LLMCOURSE_CHROMIUM"), "/usr/bin/chromium", "chromium",
                 "chromium-browser", "google-chrome"):
        if name and (path := shutil.which(name)):
            return path
    return None


def browser_or_skip() -> str:
    """The Chromium executable, or skip with the one reason there is none."""
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        pytest.skip("no browser test: the Python package playwright is not installed "
                    "(pip install -e '.[dev]')")
    exe = chromium_path()
    if exe is None:
        pytest.skip("no browser test: no Chromium found (apt-get install chromium, "
                    "or set LLMCOURSE_CHROMIUM)")
    return exe


# --------------------------------------------------------------------------- serving


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def serve(folder: Path):
    """Serve ``folder`` on 127.0.0.1 (a free port) from a daemon thread; return the server."""
    handler = functools.partial(_Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


# --------------------------------------------------------------------------- in the page

#: Runs in the page once it has loaded: waits for MathJax and mermaid, then reports.
REPORT_JS = r"""
async ([minPx, timeoutMs]) => {
  const sleep = ms => new Promise(r => setTimeout(r, ms));
  const t0 = Date.now();
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    await MathJax.startup.promise;
  }
  const blocks = () => [...document.querySelectorAll('pre.mermaid, div.mermaid')];
  // mermaid marks a block processed before it swaps in the finished SVG (which has a
  // viewBox and a role description, "error" for a diagram it could not parse)
  const done = b => !!b.querySelector('svg[viewBox][aria-roledescription]')
                    || b.hasAttribute('data-mermaid-render-failed');
  while (blocks().some(b => !done(b)) && Date.now() - t0 < timeoutMs) {
    await sleep(100);
  }
  // images: make lazy ones eager, then wait for each to settle
  const imgs = [...document.images];
  imgs.forEach(i => { if (i.loading === 'lazy') i.loading = 'eager'; });
  while (imgs.some(i => !i.complete) && Date.now() - t0 < timeoutMs) { await sleep(100); }

  const SKIP = 'mjx-container, script, style, pre, code, kbd, samp, textarea, noscript, '
             + 'template, svg, .mermaid, [hidden]';
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const rawTex = [];
  const re = /\$\$|\\[A-Za-z]{2,}/;
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const el = n.parentElement;
    if (!el || el.closest(SKIP)) continue;
    if (re.test(n.textContent)) rawTex.push(n.textContent.trim().slice(0, 120));
  }
  const diagrams = blocks().map((b, k) => {
    const svg = b.querySelector('svg');
    if (!done(b) || b.hasAttribute('data-mermaid-render-failed')
        || svg.getAttribute('aria-roledescription') === 'error') {
      return {k, rendered: false, text: b.textContent.trim().slice(0, 60)};
    }
    // preserveAspectRatio "meet": the drawing is scaled by the smaller of the two ratios
    const box = svg.getBoundingClientRect();
    const vb = svg.viewBox && svg.viewBox.baseVal;
    const scale = vb && vb.width && vb.height
      ? Math.min(box.width / vb.width, box.height / vb.height) : 1;
    const labels = [...svg.querySelectorAll('.nodeLabel, .edgeLabel, .cluster-label, text')]
      .filter(e => (e.textContent || '').trim());
    const sizes = labels.map(e => parseFloat(getComputedStyle(e).fontSize) * scale);
    return {k, rendered: true, minPx: sizes.length ? Math.min(...sizes) : null,
            width: Math.round(box.width), height: Math.round(box.height), labels: sizes.length};
  });
  const images = imgs.map(i => ({src: i.getAttribute('src'), ok: i.complete && i.naturalWidth > 0}));
  const icon = document.querySelector('link[rel~="icon"]');
  return {rawTex, diagrams, images, favicon: icon ? icon.href : null,
          mathjax: !!window.MathJax, title: document.title};
}
"""


REDIRECT = re.compile(r'<meta http-equiv="refresh" content="\d+;\s*url=([^"]+)"', re.I)


async def _visit(context, base: str, rel: str, sem, html: Path) -> dict:
    async with sem:
        page = await context.new_page()
        events: list[str] = []
        page.on("console", lambda m: m.type == "error" and events.append(f"console error: {m.text}"))
        page.on("pageerror", lambda e: events.append(f"uncaught: {e}"))
        page.on("response", lambda r: r.status >= 400 and events.append(f"HTTP {r.status}: {r.url}"))
        try:
            redirect = REDIRECT.search((html / rel).read_text(encoding="utf-8", errors="replace"))
            await page.goto(f"{base}/{rel}", wait_until="load", timeout=90_000)
            if redirect:  # index.html -> README.html: report on where it lands
                target = f"{base}/{Path(rel).parent.joinpath(redirect.group(1)).as_posix()}"
                await page.wait_for_url(target.replace("/./", "/"), timeout=10_000)
                await page.wait_for_load_state("load")
            report = await page.evaluate(REPORT_JS, [MIN_DIAGRAM_PX, 60_000])
            page_name = rel.removesuffix(".html")
            if page_name in KEY_PAGES:
                SCREENSHOTS.mkdir(parents=True, exist_ok=True)
                await page.screenshot(path=str(SCREENSHOTS / (page_name.replace("/", "__") + ".png")),
                                      full_page=True)
        except Exception as exc:  # a page that cannot be opened is a finding, not a crash
            report = {"rawTex": [], "diagrams": [], "images": [], "favicon": None,
                      "fatal": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"}
        finally:
            await page.close()
        report["events"] = events
        return report


async def _crawl(exe: str, base: str, pages: list[str], html: Path) -> tuple[dict, list[str]]:
    from playwright.async_api import async_playwright

    host = re.match(r"https?://([^/]+)", base).group(1)
    offsite: list[str] = []

    async def gate(route):
        url = route.request.url
        if re.match(rf"https?://{re.escape(host)}(?:/|$)", url) or url.startswith(("data:", "blob:")):
            await route.continue_()
        else:
            offsite.append(f"{route.request.frame.url if route.request.frame else '?'} -> {url}")
            await route.abort()

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS, headless=True)
        context = await browser.new_context(viewport={"width": WIDTH, "height": HEIGHT})
        await context.route("**/*", gate)
        sem = asyncio.Semaphore(TABS)
        reports = await asyncio.gather(*[_visit(context, base, p, sem, html) for p in pages])
        await browser.close()
    return dict(zip(pages, reports)), offsite


def book_pages(html: Path) -> list[str]:
    return sorted(p.relative_to(html).as_posix() for p in html.rglob("*.html")
                  if not p.relative_to(html).as_posix().startswith(("_static/", "_sources/", "_images/")))


@pytest.fixture(scope="module")
def crawl(book_html):
    exe = browser_or_skip()
    server = serve(book_html)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    pages = book_pages(book_html)
    t = time.perf_counter()
    try:
        reports, offsite = asyncio.run(_crawl(exe, base, pages, book_html))
    finally:
        server.shutdown()
        server.server_close()
    print(f"\nbrowser: {len(pages)} pages in {time.perf_counter() - t:.1f} s ({TABS} tabs)")
    return reports, offsite


def _problems(reports: dict, key) -> list[str]:
    return [f"{page}: {p}" for page, rep in reports.items() for p in key(rep)]


def _assert_none(problems: list[str], what: str) -> None:
    assert not problems, f"{len(problems)} {what}:\n" + "\n".join(problems[:40])


# --------------------------------------------------------------------------- the checks


def test_every_page_opens(crawl, book_html):
    reports, _ = crawl
    assert len(reports) >= len(list(book_html.glob("chapters/*/*.html"))) > 0
    assert "README.html" in reports and "index.html" in reports
    _assert_none(_problems(reports, lambda r: [r["fatal"]] if "fatal" in r else []),
                 "pages that could not be opened")
    assert any(r.get("mathjax") for r in reports.values()), "MathJax ran on no page"


def test_no_raw_tex(crawl):
    reports, _ = crawl
    _assert_none(_problems(reports, lambda r: [f"raw TeX {t!r}" for t in r["rawTex"]]),
                 "text nodes with raw TeX (a $$ block MyST did not parse?)")


def test_diagrams_render_readably(crawl):
    reports, _ = crawl
    diagrams = [d for r in reports.values() for d in r["diagrams"]]
    assert diagrams, "no mermaid diagram in the book: this test checked nothing"

    def bad(r):
        for d in r["diagrams"]:
            if not d["rendered"]:
                yield f"diagram {d['k']} not rendered to SVG ({d.get('text', '')!r})"
            elif d["minPx"] is None or d["minPx"] < MIN_DIAGRAM_PX:
                yield (f"diagram {d['k']}: smallest label {d['minPx']} px < {MIN_DIAGRAM_PX} px "
                       f"({d['width']}x{d['height']} px box)")

    _assert_none(_problems(reports, bad), "unreadable diagrams")


def test_images_load(crawl):
    reports, _ = crawl
    assert any(r["images"] for r in reports.values()), "no <img> in the book: nothing checked"
    _assert_none(_problems(reports, lambda r: [f"image not loaded: {i['src']}"
                                               for i in r["images"] if not i["ok"]]),
                 "images that did not load")


def test_nothing_leaves_loopback(crawl):
    _, offsite = crawl
    _assert_none(sorted(set(offsite)), "requests to other hosts (blocked)")


#: Console messages known and not yet fixed, each with the reason (keep this list short).
KNOWN_CONSOLE: set[str] = set()


def test_no_console_errors(crawl):
    reports, _ = crawl
    _assert_none(_problems(reports, lambda r: [e for e in r["events"] if e not in KNOWN_CONSOLE]),
                 "console errors or failed requests")


def test_every_page_has_a_favicon(crawl, book_html):
    reports, _ = crawl
    _assert_none(_problems(reports, lambda r: [] if r["favicon"] else ["no <link rel=icon>"]),
                 "pages without a favicon")
    # it was served: a missing file would be an HTTP 404 in test_no_console_errors

"""The rendered book: builds with warnings as errors, renders offline, leaks no answers.

The slow tests share ONE build of the whole book with tests/test_browser.py (the session
fixture ``book_html`` in conftest.py, ~10 s plus the time to execute the narrative pages) into
a temporary folder; the repository is not written to.
"""

from __future__ import annotations

import html as htmllib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from llmcourse.book import MATHJAX_JS, MERMAID_JS

REPO = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((REPO / "_config.yml").read_text(encoding="utf-8"))
REPO_URL = "https://github.com/llmcourse/llm-foundations-frontiers"

#: Hosts that serve JS/CSS libraries; the book must not load anything from them.
CDN = r"(?:cdn\.jsdelivr\.net|unpkg\.com|cdnjs\.cloudflare\.com|esm\.sh|cdn\.skypack\.dev|polyfill\.io|ajax\.googleapis\.com)"
#: Known CDN strings that are never fetched, each with the reason:
ALLOWED_CDN = {
    # sphinx-thebe (always loaded by Jupyter Book) writes this constant on every page; it
    # is fetched only by the "Live Code" button, which `launch_buttons.thebe: false` hides
    # (test_offline_assets checks the button is absent).
    "https://unpkg.com/thebe@",
    # MathJax's speech-rule-engine defaults, inside the vendored MathJax: MathJax replaces
    # the first with its own [mathjax]/sre/mathmaps (window.SREfeature.json) and the other
    # two are only used in browsers without XPath (Internet Explorer).
    "https://cdn.jsdelivr.net/npm/speech-rule-engine@",
    "https://cdn.jsdelivr.net/npm/sre-mathmaps-ie@",
    "https://cdn.jsdelivr.net/npm/wicked-good-xpath@",
}
TEXT_SUFFIXES = {".html", ".ipynb", ".txt", ".js", ".mjs", ".css", ".md", ".json", ".py", ".xml"}
VENDORED_DIRS = ("_static/mathjax/", "_static/mermaid/")


# --------------------------------------------------------------------------- the build


@pytest.fixture(scope="module")
def built(book_html) -> Path:
    """The book's ``html`` folder, built once per session (``book_html`` in conftest.py)."""
    if not (book_html.parents[1] / "build.log").is_file():
        pytest.skip("LLMCOURSE_BOOK_BUILD reuses a build that has no build.log")
    return book_html


def _files(root: Path, *, vendored: bool = True):
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and p.suffix in TEXT_SUFFIXES and (vendored or not rel.startswith(VENDORED_DIRS)):
            yield rel, p.read_text(encoding="utf-8", errors="replace")


def _views(rel: str, text: str) -> list[str]:
    """The text as a reader sees it: HTML without tags/entities, notebooks decoded."""
    views = [text]
    if rel.endswith(".html"):
        views.append(htmllib.unescape(re.sub(r"<[^>]+>", "", text)))
    if rel.endswith((".ipynb", ".json")):
        try:
            data = json.loads(text)
        except ValueError:
            pass
        else:
            views.append("\n".join(_strings(data)))
    return views


def _strings(obj):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, list):
        if obj and all(isinstance(x, str) for x in obj):
            yield "".join(obj)  # notebook "source": a list of lines
        for x in obj:
            yield from _strings(x)
    elif isinstance(obj, dict):
        for x in obj.values():
            yield from _strings(x)


def _toc_files() -> list[str]:
    toc = yaml.safe_load((REPO / "_toc.yml").read_text(encoding="utf-8"))
    files = [toc["root"]]

    def walk(entries):
        for e in entries or []:
            if "file" in e:
                files.append(e["file"])
            walk(e.get("sections"))
            walk(e.get("chapters"))

    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    walk(toc.get("chapters"))
    return files


# --------------------------------------------------------------------------- (a) build


@pytest.mark.slow
@pytest.mark.xdist_group("book")
def test_book_builds_with_warnings_as_errors(built):
    log = (built.parents[1] / "build.log").read_text(encoding="utf-8")
    log = re.sub(r"\x1b\[[0-9;]*m", "", log)  # colours
    # Sphinx's own format ("file:line: WARNING: ..."), not a kernel's "[IPKernelApp] WARNING |".
    sphinx_warnings = re.findall(r"^(?:.*?: )?(?:WARNING|ERROR|CRITICAL): .*$", log, flags=re.M)
    assert not sphinx_warnings, "\n".join(sphinx_warnings[:10])
    for doc in _toc_files():
        assert (built / f"{doc}.html").is_file(), f"{doc} is in _toc.yml but was not built"


# --------------------------------------------------------------------------- (b) offline


@pytest.mark.slow
@pytest.mark.xdist_group("book")
def test_offline_assets(built):
    static = built / "_static"
    assert (static / MATHJAX_JS).is_file()
    assert (static / "mathjax/output/chtml/fonts/woff-v2/MathJax_Main-Regular.woff").is_file()
    mermaid = static / MERMAID_JS
    assert mermaid.is_file()
    # Every module mermaid imports (statically or lazily) was vendored with it.
    imports = set(re.findall(r"""(?:from|import)\s*\(?\s*["'](\.[^"']+)["']""", mermaid.read_text()))
    assert imports, "mermaid.esm.min.mjs imports no chunks? the parser above is out of date"
    missing = sorted(i for i in imports if not (mermaid.parent / i).resolve().is_file())
    assert not missing, f"mermaid chunks not vendored: {missing[:5]}"

    problems = []
    mathjax_pages = mermaid_pages = 0
    for rel, text in _files(built):
        # No MathJax/mermaid (or d3, used by mermaid zoom) from any CDN, in any file.
        for url in re.findall(rf"https?://{CDN}/[^\s\"'<>)]*", text):
            if not url.startswith(tuple(ALLOWED_CDN)):
                problems.append(f"{rel}: {url}")
        if not rel.endswith(".html"):
            continue
        # Nothing remote is loaded by a page: scripts, styles, module imports.
        refs = re.findall(r"""<script[^>]*\ssrc=["']([^"']+)""", text)
        refs += [h for tag in re.findall(r"<link\b[^>]*>", text)
                 if re.search(r"""rel=["'](?:stylesheet|preload|modulepreload)""", tag)
                 for h in re.findall(r"""href=["']([^"']+)""", tag)]
        for body in re.findall(r"<script\b[^>]*>(.*?)</script>", text, flags=re.S):
            refs += re.findall(r"""\bimport\b(?:[\w\s{},*]*\bfrom)?\s*\(?\s*["']([^"']+)["']""", body)
        problems += [f"{rel}: loads {r}" for r in refs if re.match(r"(?:[a-z]+:)?//", r)]
        if "launch-thebe" in text:
            problems.append(f"{rel}: has a Live Code (thebe) button, which loads thebe from unpkg")
        if 'class="math notranslate' in text:
            mathjax_pages += 1
            if f"_static/{MATHJAX_JS}" not in text:
                problems.append(f"{rel}: has math but does not load the vendored MathJax")
        if 'class="mermaid' in text:
            mermaid_pages += 1
            if not re.search(rf"""import mermaid from ["'][./]*_static/{re.escape(MERMAID_JS)}["']""", text):
                problems.append(f"{rel}: has a diagram but does not import the vendored mermaid")
    assert not problems, "\n".join(problems[:20])
    assert mathjax_pages, "no page has math: the MathJax check above checked nothing"


# --------------------------------------------------------------------------- (c) buttons


def _exercise_pages(built: Path) -> list[str]:
    pages = sorted(p.relative_to(built).with_suffix("").as_posix() for p in built.glob("chapters/*/*.html"))
    return [p for p in pages if (REPO / f"{p}.ipynb").is_file()]


@pytest.mark.slow
@pytest.mark.xdist_group("book")
def test_exercise_pages_have_colab_and_download(built):
    pages = _exercise_pages(built)
    assert pages, "no exercise notebook (chapters/*/*.ipynb) was built"
    colab = CONFIG["launch_buttons"]["colab_url"].rstrip("/")
    repo = CONFIG["repository"]["url"].removeprefix("https://github.com/")
    branch = CONFIG["repository"]["branch"]
    for page in pages:
        text = (built / f"{page}.html").read_text(encoding="utf-8")
        assert f'href="{colab}/github/{repo}/blob/{branch}/{page}.ipynb"' in text, f"{page}: no Colab link"
        assert "download-source-button" in text, f"{page}: no download button"
        assert re.search(rf'href="[./]*_sources/{re.escape(page)}\.ipynb"', text), f"{page}: download link"
        assert (built / "_sources" / f"{page}.ipynb").is_file()


@pytest.mark.slow
@pytest.mark.xdist_group("book")
def test_narrative_pages_have_no_broken_colab_link(built):
    """Colab opens only .ipynb: the .md narrative pages must not offer it (llmcourse.book)."""
    exercises = set(_exercise_pages(built))
    for p in built.glob("chapters/*/*.html"):
        page = p.relative_to(built).with_suffix("").as_posix()
        if page not in exercises:
            assert "colab.research.google.com" not in p.read_text(encoding="utf-8"), page


# --------------------------------------------------------------------------- (d) leaks

MARKERS = [("### BEGIN SOLUTION", "### END SOLUTION"), ("### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS")]


def secret_lines(solutions: Path = REPO / "solutions") -> set[str]:
    """Lines an instructor notebook hides from learners (solutions and hidden tests).

    Non-blank, non-comment lines of at least 12 characters between the markers, minus
    lines that also appear outside the markers in any instructor notebook (those are
    public: given code, or a spec that spells out a line on purpose, even inline in prose).
    """
    secret, public, public_text = set(), set(), []
    for nb_path in sorted(solutions.rglob("*.ipynb")):
        nb_secret, nb_public = set(), set()
        for cell in json.loads(nb_path.read_text(encoding="utf-8"))["cells"]:
            src = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
            inside = None
            for line in src.splitlines():
                s = line.strip()
                if inside is None and any(s.startswith(b) for b, _ in MARKERS):
                    inside = next(e for b, e in MARKERS if s.startswith(b))
                    continue
                if inside is not None and s.startswith(inside):
                    inside = None
                    continue
                if inside is None:
                    public_text.append(s)
                if len(s) >= 12 and not s.startswith("#"):
                    (nb_secret if inside else nb_public).add(s)
        secret |= nb_secret
        public |= nb_public
    text = "\n".join(public_text)
    return {s for s in secret - public if s not in text}


@pytest.mark.slow
@pytest.mark.xdist_group("book")
def test_no_solution_or_hidden_test_leaks(built):
    secrets = secret_lines()
    assert secrets, "found no solution/hidden-test lines in solutions/: nothing was checked"
    leaks = []
    for rel, text in _files(built, vendored=False):
        for view in _views(rel, text):
            # The instructors' guide (in the book) explains the markers by name: no answer there.
            if rel != "chapters/appendix/instructors.html":
                leaks += [f"{rel}: marker {m!r}" for m in ("BEGIN SOLUTION", "BEGIN HIDDEN TESTS")
                          if m in view]
            leaks += [f"{rel}: {s!r}" for s in secrets if s in view]
    assert not leaks, "answers leaked into the book:\n" + "\n".join(sorted(set(leaks))[:20])


# --------------------------------------------------------------------------- (e) scope


@pytest.mark.slow
@pytest.mark.xdist_group("book")
def test_instructor_material_not_published(built):
    bad = [p.relative_to(built).as_posix() for p in built.rglob("*")
           if re.match(r"(?:_sources/)?(?:solutions|autograder|tests|src)(?:/|$)", p.relative_to(built).as_posix())]
    assert not bad, bad[:10]
    jupyter_execute = built.parent / "jupyter_execute"
    if jupyter_execute.is_dir():
        assert not any(jupyter_execute.glob("solutions/**/*")), "instructor notebooks were executed"


# --------------------------------------------------------------------------- (f) config (fast)


def test_config_publishes_only_the_toc_and_names_the_repository():
    assert CONFIG["only_build_toc_files"] is True
    assert CONFIG["repository"]["url"] == REPO_URL
    assert CONFIG["repository"]["branch"] == "main"
    for pattern in ("solutions/**", "autograder/**", "tests/**", "src/**", ".venv/**", "_vendor/**"):
        assert pattern in CONFIG["exclude_patterns"], pattern
    assert "chapters/*/*.ipynb" in CONFIG["execute"]["exclude_patterns"]
    sphinx = CONFIG["sphinx"]["config"]
    assert sphinx["html_static_path"] == ["_vendor/static"]
    assert sphinx["mathjax_path"] == MATHJAX_JS and sphinx["mermaid_use_local"] == MERMAID_JS
    assert sphinx["nb_execution_raise_on_error"] is True
    # A top-level _static/ would make Jupyter Book add every vendored .js to every page.
    assert not (REPO / "_static").exists()
    # The URL is written once: nothing else in the repo's config spells it out.
    for name in ("_toc.yml", "Makefile", "pyproject.toml"):
        path = REPO / name
        assert not path.is_file() or REPO_URL not in path.read_text(encoding="utf-8"), name


def _toc_entries(entries=()):
    """(file, title or None) for every page of _toc.yml, in order."""
    if entries == ():
        toc = yaml.safe_load((REPO / "_toc.yml").read_text(encoding="utf-8"))
        yield toc["root"], None
        for part in toc.get("parts", []):
            yield from _toc_entries(part.get("chapters"))
        return
    for e in entries or []:
        if "file" in e:
            yield e["file"], e.get("title")
        yield from _toc_entries(e.get("sections"))


def _page_heading(doc: str) -> str:
    path = REPO / f"{doc}.md"
    if not path.is_file() and not (REPO / f"{doc}.ipynb").is_file():
        doc = doc.replace("chapters/", "solutions/", 1)  # not released yet
        path = REPO / f"{doc}.md"
    if path.is_file():
        lines = path.read_text(encoding="utf-8").splitlines()
    else:
        nb = json.loads((REPO / f"{doc}.ipynb").read_text(encoding="utf-8"))
        lines = [ln for c in nb["cells"] if c["cell_type"] == "markdown"
                 for ln in "".join(c["source"]).splitlines()]
    return next((ln[2:].strip() for ln in lines if ln.startswith("# ")), doc)


def test_toc_titles_are_unique_and_mark_exercises():
    """The sidebar shows each page's _toc.yml title (else its heading): no two alike, and an
    exercise notebook says so ("Exercises: ...", a chapter's challenge "Challenge: ..."), a
    reading page does not."""
    shown, problems = {}, []
    for doc, title in _toc_entries():
        label = title or _page_heading(doc)
        if label.lower() in shown:
            problems.append(f"{doc}: {label!r} is also the title of {shown[label.lower()]}")
        shown[label.lower()] = doc
        is_notebook = any((REPO / f"{d}.ipynb").is_file()
                          for d in (doc, doc.replace("chapters/", "solutions/", 1)))
        marked = label.startswith("Challenge:" if doc.endswith("/challenge") else "Exercises:")
        if is_notebook != marked:
            want = "Challenge" if doc.endswith("/challenge") else "Exercises"
            problems.append(f"{doc}: {label!r} " + (f"needs `title: \"{want}: ...\"` in _toc.yml"
                                                    if is_notebook else "is not an exercise notebook"))
    assert not problems, "\n".join(problems)


def test_vendor_command_rejects_bad_input(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "llmcourse.book", *map(str, args)],
                              capture_output=True, text=True, timeout=60)

    for args in [(), ("vendr", tmp_path, tmp_path), ("vendor", tmp_path / "missing", tmp_path / "out")]:
        proc = run(*args)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, (args, proc.stderr)
    # A package whose layout changed (here: mermaid missing) is named, and nothing is copied.
    (tmp_path / "nm/mathjax/es5").mkdir(parents=True)
    (tmp_path / "nm/mathjax/es5/tex-chtml-full.js").write_text("//")
    proc = run("vendor", tmp_path / "nm", tmp_path / "out")
    assert proc.returncode == 2 and "woff" in proc.stderr and not (tmp_path / "out").exists()

"""Support for the rendered book (Jupyter Book 1.x), so it works with no CDN.

Two jobs, both small:

1. ``python -m llmcourse.book vendor <node_modules> <dest>`` copies the browser files the
   book loads at run time out of ``_vendor/node_modules`` (installed by ``npm ci`` from
   ``_vendor/package-lock.json``) into ``<dest>`` (``_vendor/static``), which
   ``_config.yml`` lists in ``html_static_path``; Sphinx then copies it to
   ``_build/html/_static/``. Only what the pages request is copied (:data:`VENDORED`):

   - MathJax 3 ``tex-chtml-full.js`` (TeX input with every extension built in, so nothing
     is autoloaded), the CHTML woff fonts it requests via CSS, and the accessibility
     components (``a11y/``, ``input/mml.js``, speech-rule-engine ``sre/mathmaps``) that
     its right-click menu loads on demand (checked in headless Chromium: enabling the
     explorer fetches exactly these, all locally);
   - mermaid's ES-module build ``mermaid.esm.min.mjs`` and the chunks it imports lazily
     (one per diagram type). sphinxcontrib-mermaid 2.x does ``import mermaid from <url>``,
     so the single-file ``mermaid.min.js`` (a classic script, no default export) does
     not work with it;
   - both licences.

2. As a Sphinx extension (listed in ``_config.yml`` ``sphinx.extra_extensions``) it drops
   the "launch" (Colab) button from pages whose source is not an ``.ipynb``. The book
   theme offers it on every page with a kernel (our executed ``.md`` narrative pages too),
   but Colab can only open notebooks, so on those pages the link would be broken.

3. It also adds ``static/llmcourse.css`` (mermaid diagrams at a readable size) and removes
   duplicate ``<script>`` entries (sphinx-thebe registers its inline one twice, which the
   browser reports as an error); tests/test_browser.py checks both in Chromium.

4. The narrative pages' execution is cached (``execute_notebooks: cache``) without hiding a
   change in the library: see :func:`_execution_cache` and :func:`_reread_on_library_change`.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import sys
from pathlib import Path

#: (glob under node_modules, folder under dest). Every glob must match at least one file,
#: so a package that changes its layout fails loudly here, not silently in a browser.
VENDORED: list[tuple[str, str]] = [
    ("mathjax/es5/tex-chtml-full.js", "mathjax"),
    ("mathjax/es5/output/chtml/fonts/woff-v2/*.woff", "mathjax/output/chtml/fonts/woff-v2"),
    ("mathjax/es5/a11y/*.js", "mathjax/a11y"),
    ("mathjax/es5/input/mml.js", "mathjax/input"),  # needed by a11y/semantic-enrich
    ("mathjax/es5/sre/mathmaps/*.json", "mathjax/sre/mathmaps"),
    ("mathjax/LICENSE", "mathjax"),
    ("mermaid/dist/mermaid.esm.min.mjs", "mermaid"),
    ("mermaid/dist/chunks/mermaid.esm.min/*.mjs", "mermaid/chunks/mermaid.esm.min"),
    ("mermaid/LICENSE", "mermaid"),
]

#: Paths (relative to ``_static``) that ``_config.yml`` points at; the test suite checks them.
MATHJAX_JS = "mathjax/tex-chtml-full.js"
MERMAID_JS = "mermaid/mermaid.esm.min.mjs"

USAGE = "usage: python -m llmcourse.book vendor <node_modules> <dest>"


def vendor(node_modules: Path, dest: Path) -> int:
    """Copy :data:`VENDORED` from ``node_modules`` into ``dest``; return the file count.

    The ``mathjax/`` and ``mermaid/`` folders under ``dest`` are replaced, so files from an
    older version never linger. Raises ``FileNotFoundError`` if a glob matches nothing.
    """
    node_modules, dest = Path(node_modules), Path(dest)
    if not node_modules.is_dir():
        raise FileNotFoundError(f"{node_modules} is not a folder (run `npm ci` in _vendor/)")
    plan = []
    for pattern, folder in VENDORED:
        matches = sorted(p for p in node_modules.glob(pattern) if p.is_file())
        if not matches:
            raise FileNotFoundError(f"nothing matches {pattern!r} under {node_modules}")
        plan += [(src, dest / folder / src.name) for src in matches]
    for top in {folder.split("/")[0] for _, folder in VENDORED}:
        shutil.rmtree(dest / top, ignore_errors=True)
    for src, target in plan:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
    return len(plan)


def _drop_launch_buttons_off_notebooks(app, pagename, templatename, context, doctree):
    if context.get("page_source_suffix") != ".ipynb" and "header_buttons" in context:
        context["header_buttons"] = [
            b for b in context["header_buttons"] if b.get("label") != "launch-buttons"
        ]


def _dedupe_scripts(app, pagename, templatename, context, doctree):
    # sphinx-thebe adds its inline `const THEBE_JS_URL = ...` once per read phase; a second
    # copy on a page is a SyntaxError in the browser console ("already been declared").
    # In place: it is the builder's own list, to which later handlers (MathJax, mermaid) add.
    if "script_files" in context:
        seen, kept = set(), []
        for js in context["script_files"]:
            # the second copy has filename "" where the first has None
            key = (str(getattr(js, "filename", js) or ""),
                   tuple(sorted(getattr(js, "attributes", {}).items())))
            if key not in seen:
                seen.add(key)
                kept.append(js)
        context["script_files"][:] = kept


#: Book-only files (CSS, favicon): served from _static/ (no .js here: see _config.yml).
STATIC = Path(__file__).parent / "static"


def _add_static(app, config):
    config.html_static_path = [*config.html_static_path, str(STATIC)]


@functools.lru_cache(maxsize=1)
def library_hash() -> str:
    """A hash of what the narrative pages' code runs on: every file of the installed
    ``llmcourse`` package (code and shipped data) and the versions of torch, numpy, matplotlib."""
    from importlib.metadata import PackageNotFoundError, version

    h = hashlib.sha256()
    pkg = Path(__file__).parent
    for path in sorted(pkg.rglob("*")):
        # this file and static/ shape the HTML, not what the pages' code computes
        if path.is_file() and "__pycache__" not in path.parts and path.name != "book.py" \
                and "static" not in path.relative_to(pkg).parts[:1]:
            h.update(path.relative_to(pkg).as_posix().encode() + b"\0" + path.read_bytes())
    for dist in ("torch", "numpy", "matplotlib"):
        try:
            h.update(f"{dist}=={version(dist)}".encode())
        except PackageNotFoundError:
            pass
    return h.hexdigest()[:16]


def _execution_cache(app, config):
    """``execute_notebooks: cache`` keyed on the library too. jupyter-cache keys a page on its
    code cells only, so the cache folder is named after :func:`library_hash`: a change in
    ``llmcourse`` starts an empty cache (older ones are deleted), and every page runs again.
    ``LLMCOURSE_BOOK_CACHE`` sets the folder it lives in (default: the build folder)."""
    if config.nb_execution_mode != "cache":
        return
    root = Path(os.environ.get("LLMCOURSE_BOOK_CACHE") or Path(app.outdir).parent).resolve()
    path = root / f".jupyter_cache-{library_hash()}"
    for old in root.glob(".jupyter_cache-*"):
        if old != path:
            shutil.rmtree(old, ignore_errors=True)
    config.nb_execution_cache_path = str(path)


def _reread_on_library_change(app, env, added, changed, removed):
    # Sphinx re-reads only pages whose source changed; a page whose code calls a changed
    # library must be re-read (and so re-executed) too.
    current, before = library_hash(), getattr(env, "llmcourse_library_hash", None)
    env.llmcourse_library_hash = current
    if before is not None and before != current:
        return sorted(set(env.found_docs) - set(added) - set(changed))
    return []


def setup(app):
    """Sphinx extension entry point (see the module docstring, points 2 and 3)."""
    # sphinx-book-theme adds its buttons at priority 501; run after it.
    app.connect("html-page-context", _drop_launch_buttons_off_notebooks, priority=502)
    # Early: html-page-context stops at the first handler that returns a template name.
    app.connect("html-page-context", _dedupe_scripts, priority=100)
    app.connect("config-inited", _add_static)
    app.connect("config-inited", _execution_cache)
    app.connect("env-get-outdated", _reread_on_library_change)
    app.add_css_file("llmcourse.css")
    return {"parallel_read_safe": True, "parallel_write_safe": True}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3 or args[0] != "vendor":
        print(f"error: {USAGE} (got {' '.join(args) or 'no arguments'})", file=sys.stderr)
        return 2
    try:
        n = vendor(Path(args[1]), Path(args[2]))
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"vendored {n} files into {args[2]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

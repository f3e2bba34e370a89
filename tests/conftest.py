"""Shared helpers for the project's own test suite."""

from __future__ import annotations

import json
import os
import tempfile
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = str(Path(sys.executable).parent)
# nbgrader runs `alembic` and kernels run `python` from PATH: the venv's.
os.environ["PATH"] = BIN + os.pathsep + os.environ.get("PATH", "")
os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
# Training notebooks size their loops with llmcourse.budget(full, quick): the suite grades
# them end to end with the quick sizes; `make bench` times the full ones.
os.environ["LLMCOURSE_QUICK"] = "1"
# the grader's prepared chapters (llmcourse.grading.prepared): one cache per test run, shared by
# its xdist workers, so every run also prepares each chapter from scratch once
os.environ.setdefault("LLMCOURSE_CACHE", os.path.join(
    tempfile.gettempdir(), f"llmcourse-test-cache-{os.environ.get('PYTEST_XDIST_TESTRUNUID', os.getpid())}"))


def chapter_names() -> list[str]:
    from llmcourse.grading.course import chapters

    return chapters(ROOT)


def llmcourse(*args: str, cwd: Path = ROOT, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run the real console command (as a learner or instructor would)."""
    return subprocess.run([sys.executable, "-m", "llmcourse.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def sandbox_available() -> tuple[bool, str]:
    """Whether `llmcourse grade` can make its bubblewrap sandbox on this machine."""
    from llmcourse.grading.sandbox import probe

    return probe()


def run_gloo(launch, *args):
    """``launch(*args)``: a reference's launcher of real gloo processes over loopback (ch07, ch08);
    skips where torch.distributed, gloo or loopback sockets are unavailable."""
    import torch

    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    try:
        return launch(*args)
    except Exception as exc:  # noqa: BLE001
        text = str(exc)
        if any(s in text for s in ("interface", "socket", "Connection", "gloo", "Address")):
            pytest.skip(f"gloo cannot use localhost here: {text.splitlines()[-1][:200]}")
        raise


def grade(path: Path, course_dir: Path, *extra: str,
          timeout: float = 900) -> tuple[subprocess.CompletedProcess, list[dict]]:
    out = course_dir.parent / f"{course_dir.name}-result.json"
    if not sandbox_available()[0]:  # grading tests still run; the sandbox's own tests skip
        extra = (*extra, "--unsafe-no-sandbox")
    proc = llmcourse("grade", path, "--course-dir", course_dir, "--json", out, "--seed", "1234",
                     *extra, timeout=timeout)
    rows = json.loads(out.read_text()) if out.exists() else []
    return proc, rows


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def save(path: Path, nb: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(nb, indent=1), encoding="utf-8")
    return path


def nbgrader_meta(cell: dict) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def filled_student_notebook(chapter: str, name: str) -> dict:
    """The released student notebook with the instructor's answers pasted into its answer
    cells: what a learner who solved everything submits."""
    student = load(ROOT / "chapters" / chapter / f"{name}.ipynb")
    answers = {nbgrader_meta(c).get("grade_id"): c["source"]
               for c in load(ROOT / "solutions" / chapter / f"{name}.ipynb")["cells"]
               if nbgrader_meta(c).get("solution")}
    for cell in student["cells"]:
        gid = nbgrader_meta(cell).get("grade_id")
        if gid in answers:
            src = answers[gid]
            src = "".join(src) if isinstance(src, list) else src
            cell["source"] = "\n".join(l for l in src.splitlines() if "### " not in l)
    return student


@pytest.fixture(scope="session")
def book_html(tmp_path_factory) -> Path:
    """The whole book built ONCE per test session (shared by test_book.py and
    test_browser.py, which are in the same xdist group) into a temporary folder; returns its
    ``html`` folder. ``LLMCOURSE_BOOK_BUILD=<dir>`` reuses an existing ``--path-output``
    folder instead (quick iterations only: nothing checks that it is up to date)."""
    reuse = os.environ.get("LLMCOURSE_BOOK_BUILD")
    if reuse:
        html = Path(reuse) / "_build" / "html"
        if not (html / "index.html").is_file():
            pytest.fail(f"LLMCOURSE_BOOK_BUILD={reuse}: no _build/html/index.html there")
        return html
    from llmcourse.book import MATHJAX_JS

    if not (ROOT / "_vendor/static" / MATHJAX_JS).is_file():
        pytest.fail("_vendor/static is empty: run `make vendor` (npm ci + llmcourse.book vendor)")
    out = tmp_path_factory.mktemp("book")
    cmd = [str(Path(BIN) / "jupyter-book"), "build", str(ROOT), "--path-output", str(out),
           "--warningiserror", "--keep-going", "--builder", "html"]
    # The narrative pages' outputs are cached in the repository's _build/ (keyed on each
    # page's code and on the library's hash, see llmcourse.book), shared with `make book`.
    env = {**os.environ, "LLMCOURSE_BOOK_CACHE": str(ROOT / "_build")}
    (ROOT / "_build").mkdir(exist_ok=True)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    log = proc.stdout + proc.stderr
    (out / "build.log").write_text(log, encoding="utf-8")
    if proc.returncode != 0:
        pytest.fail(f"jupyter-book build failed (exit {proc.returncode}); log tail:\n{log[-6000:]}")
    return out / "_build" / "html"


@pytest.fixture
def course_dir(tmp_path) -> Path:
    return tmp_path / "course"


_learner_modules = __import__("itertools").count()


@pytest.fixture
def learner(tmp_path):
    """``learner(source, name=None)``: a learner's code as an importable module, so that the
    forbidden-shortcut inspector reads exactly that code (as it reads a notebook's cells)."""
    import importlib.util
    import textwrap

    loaded = []

    def load(source: str, name: str | None = None):
        module_name = f"{name or 'learner'}_{next(_learner_modules)}"
        path = tmp_path / f"{module_name}.py"
        path.write_text(textwrap.dedent(source))
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        loaded.append(module_name)
        spec.loader.exec_module(module)
        return module

    yield load
    for module_name in loaded:
        sys.modules.pop(module_name, None)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``full`` run only in ``make test-all`` (LLMCOURSE_TEST_ALL=1): each is a
    second representative of a kind of check that ``make test`` already holds one of."""
    if os.environ.get("LLMCOURSE_TEST_ALL", "") == "1":
        return
    skip = pytest.mark.skip(reason="make test-all only (LLMCOURSE_TEST_ALL=1)")
    for item in items:
        if "full" in item.keywords:
            item.add_marker(skip)

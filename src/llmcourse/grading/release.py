"""``make release``: regenerate chapters/ from solutions/ with nbgrader, for every chapter.

Student notebooks get a setup cell, right after the title and before any other code, that
installs the course library when it is missing (Colab), keeping whatever torch is already
installed; ``LLMCOURSE_INSTALL_URL`` overrides where it installs from (a fork, a local clone). The output is deterministic, so a test
can compare a fresh release with the committed chapters/.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from .course import CourseError, chapters, nbgrader_config, read_repository_url

SETUP_ID = "llmcourse-setup"

#: Folders of solutions/ that hold book pages only (no notebooks, no assignment): the release
#: copies them to chapters/ as they are, like the pages of a chapter.
PAGE_DIRS = ("appendix",)

SETUP_SOURCE = '''\
# @title Setup: run this cell first
# Where the course library is missing (e.g. on Colab) this installs it from the course's
# repository, keeping the PyTorch that is already installed.
import importlib, importlib.util, os, re, subprocess, sys, tempfile
if importlib.util.find_spec("llmcourse") is None:
    course_url = os.environ.get("LLMCOURSE_INSTALL_URL", "git+{url}")
    pins = []  # keep the installed torch (its version, read without importing it)
    try:
        from importlib.metadata import version
        pins.append(f"torch=={{version('torch')}}")
    except ImportError:
        pass
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\\n".join(pins))
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-c", f.name, course_url],
                         capture_output=True, text=True)
    importlib.invalidate_caches()
    if pip.returncode != 0 or importlib.util.find_spec("llmcourse") is None:
        out = re.sub(r"\\x1b\\[[0-9;]*m", "", pip.stderr + pip.stdout)
        lines = [l.strip() for l in out.splitlines() if len(l.strip()) > 3]
        why = next((l for p in ("fatal:", "ERROR:", "error:") for l in lines if l.startswith(p)),
                   lines[-1] if lines else "")
        raise RuntimeError(
            f"Could not install the course library from {{course_url}} ({{why or 'no message'}}). "
            "This cell runs pip, which needs the internet: check that this runtime is online, "
            "and that the URL names the course's repository (it comes from repository.url in the "
            "course's _config.yml; a copy of the course must set its own and run `make release`). "
            "Working from a clone of the repository instead? Run `pip install -e .` there and "
            "restart the kernel.") from None'''

#: Cell tags: ``hide-input`` folds the cell away in the book (MyST-NB); Colab shows the
#: ``# @title`` line instead of the code (``cellView: form``).
SETUP_TAGS = [SETUP_ID, "hide-input"]


def setup_cell(url: str) -> dict:
    return {"cell_type": "code", "execution_count": None, "id": SETUP_ID,
            "metadata": {"tags": list(SETUP_TAGS), "cellView": "form"}, "outputs": [],
            "source": SETUP_SOURCE.format(url=url)}


def setup_position(cells: list[dict]) -> int:
    """Right after the title cell (a markdown cell opening with a ``# `` heading), else first:
    either way the setup cell is the first code cell a learner runs."""
    first = cells[0] if cells else {}
    src = first.get("source", "")
    src = "".join(src) if isinstance(src, list) else src
    return 1 if first.get("cell_type") == "markdown" and src.lstrip().startswith("# ") else 0


def write_notebook(path: Path, nb: dict) -> None:
    path.write_text(json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n",
                    encoding="utf-8")


def finalize(path: Path, url: str) -> None:
    nb = json.loads(path.read_text(encoding="utf-8"))
    nb["cells"] = [c for c in nb["cells"] if c.get("id") != SETUP_ID]
    nb["cells"].insert(setup_position(nb["cells"]), setup_cell(url))
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
        if isinstance(cell.get("source"), list):
            cell["source"] = "".join(cell["source"])
    write_notebook(path, nb)


def release(root: Path, out_dir: Path | None = None, log=print,
            only: list[str] | None = None) -> list[str]:
    from nbgrader.apps import NbGraderAPI
    from nbgrader.coursedir import CourseDirectory

    out = Path(out_dir or root / "chapters").resolve()
    url = read_repository_url(root)
    names = chapters(root)
    if not names:
        raise CourseError(f"no chapter folders (NN-name) in {root / 'solutions'}")
    out.mkdir(parents=True, exist_ok=True)
    pages = [d for d in PAGE_DIRS if (root / "solutions" / d).is_dir()]
    if only:
        unknown = sorted(set(only) - set(names) - set(pages))
        if unknown:
            raise CourseError(f"no chapter {unknown[0]!r} in solutions/ (have: {', '.join(names)})")
        names = [n for n in names if n in only]
    else:
        for stale in out.iterdir():
            if stale.is_dir() and stale.name not in names + pages:
                shutil.rmtree(stale)
    with tempfile.TemporaryDirectory(prefix="llmc-release-") as tmp:
        cfg = nbgrader_config(root, course_dir=Path(tmp), release_dir=out)
        api = NbGraderAPI(CourseDirectory(config=cfg), config=cfg)
        for name in names:
            result = api.generate_assignment(name, force=True, create=True)
            if not result["success"]:
                lines = (result.get("error") or result.get("log") or "unknown error").strip().splitlines()
                raise CourseError(f"release of {name} failed: {lines[-1]}")
            for nb in sorted((out / name).glob("*.ipynb")):
                finalize(nb, url)
            log(f"released {name}")
    for name in pages:
        if not only or name in only:
            shutil.rmtree(out / name, ignore_errors=True)
            shutil.copytree(root / "solutions" / name, out / name,
                            ignore=shutil.ignore_patterns(".*", "__pycache__"))
            log(f"released {name}")
    return names

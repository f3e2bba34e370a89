"""Plays Google Colab: a fresh virtualenv with only torch, ipykernel and nbclient, where the
learner's notebook must install the course library itself.

The setup cell that `make release` puts in every notebook is run as it is, pointed by
``LLMCOURSE_INSTALL_URL`` (the override the cell supports) at a ``git+file://`` clone of
this repository: the committed history plus the working tree's changes, so what is tested is
what you are about to push. Then, for one notebook per chapter, the released notebook with the
instructor's answers pasted in runs up to its first test cell, which must PASS. Before that, a
wrong URL must give one clear paragraph, not pip's traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from conftest import ROOT, chapter_names, filled_student_notebook, nbgrader_meta, save

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("colab")]

TORCH = "torch==2.13.0"
SETUP_ID = "llmcourse-setup"

#: Runs inside the fresh venv: executes one notebook with nbclient, writes it back.
RUN_NOTEBOOK = """
import sys, nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
nb = nbformat.read(sys.argv[1], as_version=4)
try:
    NotebookClient(nb, timeout=300, kernel_name="python3", allow_errors=False).execute()
except CellExecutionError:
    pass
nbformat.write(nb, sys.argv[1])
"""


def _snapshot_repo(dest: Path) -> Path:
    """A git repository with HEAD plus the working tree's tracked changes and new files."""
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid"]
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(ROOT), str(dest)], check=True)
    changed = subprocess.run(["git", "ls-files", "-m", "-d", "-o", "--exclude-standard", "src", "pyproject.toml"],
                             cwd=ROOT, check=True, capture_output=True, text=True).stdout.split()
    for rel in changed:
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
        elif (dest / rel).exists():
            (dest / rel).unlink()
    subprocess.run([*git, "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "working tree"], cwd=dest, check=True)
    return dest


@pytest.fixture(scope="module")
def colab(tmp_path_factory):
    """(python, env): a clean venv (no site packages) with torch, ipykernel and nbclient."""
    if shutil.which("git") is None:
        pytest.skip("no Colab test: git is not installed")
    tmp = tmp_path_factory.mktemp("colab")
    venv.EnvBuilder(with_pip=True, clear=True).create(tmp / "venv")
    python = tmp / "venv" / "bin" / "python"
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "LLMCOURSE_ROOT")}
    env["PATH"] = f"{python.parent}{os.pathsep}{env.get('PATH', '')}"
    env["HOME"] = str(tmp / "home")  # no user site-packages, no user config
    env["PIP_NO_INPUT"] = "1"
    proc = subprocess.run([str(python), "-m", "pip", "install", "-q", TORCH, "ipykernel", "nbclient",
                           "nbformat"], env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        pytest.fail(f"could not make the Colab-like venv: {proc.stderr[-2000:]}")
    probe = subprocess.run([str(python), "-c", "import importlib.util as u; print(u.find_spec('llmcourse'))"],
                           env=env, capture_output=True, text=True)
    assert probe.stdout.strip() == "None", "the fresh venv already sees llmcourse"
    return python, env, tmp


def _setup_cell(nb: dict) -> dict:
    cells = [c for c in nb["cells"] if c.get("id") == SETUP_ID]
    assert len(cells) == 1, "the released notebook has no setup cell"
    return cells[0]


def _run(python: Path, env: dict, nb: dict, path: Path) -> dict:
    save(path, nb)
    subprocess.run([str(python), "-c", RUN_NOTEBOOK, str(path)], env=env, cwd=path.parent,
                   check=True, capture_output=True, text=True, timeout=900)
    return json.loads(path.read_text(encoding="utf-8"))


def _errors(nb: dict) -> list[dict]:
    return [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])
            if o.get("output_type") == "error"]


def _text(cell: dict) -> str:
    return "".join("".join(o.get("text", "")) + "".join(o.get("data", {}).get("text/plain", ""))
                   for o in cell.get("outputs", []))


def _first_exercise(chapter: str, name: str) -> dict:
    """The released notebook, answers filled in, cut after its first test (grade) cell."""
    nb = filled_student_notebook(chapter, name)
    cut = next(i for i, c in enumerate(nb["cells"]) if nbgrader_meta(c).get("grade"))
    nb["cells"] = nb["cells"][:cut + 1]
    return nb


def test_setup_cell_failure_is_one_clear_paragraph(colab):
    python, env, tmp = colab
    nb = filled_student_notebook("00-getting-started", "warmup")
    nb["cells"] = [_setup_cell(nb)]
    bad = "git+file:///nonexistent/llm-course-repo"
    out = _run(python, {**env, "LLMCOURSE_INSTALL_URL": bad}, nb, tmp / "fail" / "setup.ipynb")
    errors = _errors(out)
    assert len(errors) == 1, "a failed install must stop the notebook at the setup cell"
    err = errors[0]
    assert err["ename"] == "RuntimeError"
    message = err["evalue"]
    assert "\n" not in message.strip(), "one paragraph"
    for part in (f"Could not install the course library from {bad}", "internet",
                 "repository.url", "_config.yml"):
        assert part in message, part
    tb = "\n".join(err["traceback"])
    assert "pip/_internal" not in tb and "subprocess.CalledProcessError" not in tb


def _one_notebook_per_chapter() -> list[tuple[str, str]]:
    """The first exercise notebook of each chapter in the book's order (_toc.yml)."""
    import yaml

    picks = {}

    def walk(entries):
        for e in entries or []:
            parts = e.get("file", "").split("/")
            if len(parts) == 3 and parts[0] == "chapters" and parts[1] not in picks \
                    and (ROOT / "chapters" / parts[1] / f"{parts[2]}.ipynb").is_file() \
                    and (ROOT / "solutions" / parts[1] / f"{parts[2]}.ipynb").is_file():
                picks[parts[1]] = parts[2]
            walk(e.get("sections"))

    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    return [(ch, picks[ch]) for ch in chapter_names() if ch in picks]


def test_colab_installs_the_library_and_first_exercises_pass(colab):
    python, env, tmp = colab
    repo = _snapshot_repo(tmp / "clone")
    env = {**env, "LLMCOURSE_INSTALL_URL": f"git+file://{repo}"}
    picks = _one_notebook_per_chapter()
    assert len(picks) >= 5, picks
    results = {}
    for i, (ch, name) in enumerate(picks):
        nb = _first_exercise(ch, name)
        out = _run(python, env, nb, tmp / "work" / ch / f"{name}.ipynb")
        errors = _errors(out)
        grade = out["cells"][-1]
        results[f"{ch}/{name}"] = (errors[0]["ename"] + ": " + errors[0]["evalue"][:300]) if errors \
            else ("ok" if "PASS" in _text(grade) else "no PASS in: " + _text(grade)[:300])
        if i == 0:
            where = subprocess.run([str(python), "-c", "import llmcourse; print(llmcourse.__file__)"],
                                   env=env, capture_output=True, text=True).stdout
            assert str(tmp / "venv") in where, f"llmcourse not installed into the venv: {where!r}"
    bad = {k: v for k, v in results.items() if v != "ok"}
    assert not bad, "\n".join(f"{k}: {v}" for k, v in bad.items())

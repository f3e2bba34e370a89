"""Where things are, and the one nbgrader configuration every command uses.

``autograder/nbgrader_config.py`` calls :func:`nbgrader_config` too, so running plain
``nbgrader`` commands from ``autograder/`` sees exactly what ``llmcourse`` sees.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from traitlets.config import Config

CHAPTER_DIR = re.compile(r"^\d\d-[a-z0-9-]+$")


class CourseError(Exception):
    """A problem with the course files themselves (reported in one line)."""


def repo_root(start: str | Path | None = None) -> Path:
    """The course repository: $LLMCOURSE_ROOT, else the nearest parent with solutions/ and _toc.yml."""
    if os.environ.get("LLMCOURSE_ROOT"):
        return Path(os.environ["LLMCOURSE_ROOT"]).resolve()
    here = Path(start or Path.cwd()).resolve()
    for d in [here, *here.parents]:
        if (d / "solutions").is_dir() and (d / "_toc.yml").exists():
            return d
    pkg = Path(__file__).resolve().parents[3]  # src/llmcourse/grading -> repo (editable install)
    if (pkg / "solutions").is_dir():
        return pkg
    raise CourseError("cannot find the course repository (a folder with solutions/ and _toc.yml); "
                      "run from inside it or set LLMCOURSE_ROOT")


def chapters(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "solutions").iterdir()
                  if p.is_dir() and CHAPTER_DIR.match(p.name))


def nbgrader_config(root: Path, course_dir: Path | None = None, release_dir: Path | None = None,
                    *, cell_timeout: int = 30, notebook_timeout: int = 600, memory: str = "4G",
                    verify_dir: str = "", unsafe: bool = False) -> Config:
    course_dir = Path(course_dir or root / "autograder").resolve()
    c = Config()
    c.CourseDirectory.course_id = "llmcourse"
    c.CourseDirectory.root = str(course_dir)
    c.CourseDirectory.source_directory = str((root / "solutions").resolve())
    c.CourseDirectory.release_directory = str(Path(release_dir or root / "chapters").resolve())
    c.CourseDirectory.submitted_directory = "submitted"
    c.CourseDirectory.autograded_directory = "autograded"
    c.CourseDirectory.feedback_directory = "feedback"
    c.CourseDirectory.db_url = f"sqlite:///{course_dir / 'gradebook.db'}"
    # Narrative pages travel with the notebooks; nothing else does.
    c.CourseDirectory.ignore = [".ipynb_checkpoints", "*.pyc", "__pycache__", "feedback", ".*"]
    c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
    c.ClearSolutions.text_stub = "YOUR ANSWER HERE"
    # Grading: restore deleted test cells, the notebook in a sandbox, limits, verification.
    # Without verify_dir (plain `nbgrader autograde`) SafeExecute refuses in one line.
    c.OverwriteCells.add_missing_cells = True
    from .execute import SafeExecute, StripHiddenTests  # noqa: F401

    from nbgrader.converters.autograde import Autograde
    from nbgrader.converters.generate_feedback import GenerateFeedback

    c.Autograde.autograde_preprocessors = [
        SafeExecute if p.__name__ == "Execute" else p
        for p in Autograde.class_traits()["autograde_preprocessors"].default()]
    c.SafeExecute.timeout = cell_timeout
    c.SafeExecute.notebook_timeout = notebook_timeout
    c.SafeExecute.verify_dir = verify_dir
    c.SafeExecute.memory = memory
    c.SafeExecute.unsafe = unsafe
    c.LimitOutput.max_lines = 200
    c.LimitOutput.max_traceback = 20
    c.GenerateFeedback.preprocessors = (
        [StripHiddenTests] + list(GenerateFeedback.class_traits()["preprocessors"].default()))
    return c


def read_repository_url(root: Path) -> str:
    """The repository URL, set in one place: ``repository.url`` in _config.yml."""
    text = (root / "_config.yml").read_text(encoding="utf-8")
    m = re.search(r"^repository:\s*\n(?:[ \t]+.*\n)*?[ \t]+url:\s*(\S+)", text, re.M)
    if not m:
        raise CourseError("_config.yml has no repository.url")
    return m.group(1).strip("'\"")

"""Finding submissions, matching notebooks to chapters, and repairing what can be repaired.

Everything here reads files; nothing runs learner code. Every problem becomes one line in
``Submission.problems`` and grading goes on.
"""

from __future__ import annotations

import ast
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from .course import CHAPTER_DIR, chapters
from .protocol import (MAX_CELL_CHARS, MAX_NOTEBOOK_BYTES, ProtocolError, printable,
                       read_regular)
from .protocol import strip_hidden as _strip

SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


@dataclass
class GradeCell:
    grade_id: str
    points: float
    source: str  # as the learner sees it (hidden tests removed)
    exercises: dict[str, str]  # exercise id -> entry name, from check("ID", entry) calls


@dataclass
class SourceNotebook:
    assignment: str
    name: str
    ids: set[str]
    grade_cells: dict[str, GradeCell]


@dataclass
class Submission:
    student: str
    assignment: str
    notebooks: dict[str, dict] = field(default_factory=dict)  # name -> repaired notebook JSON
    problems: list[str] = field(default_factory=list)


def strip_hidden(src: str) -> str:
    """A test cell as the learner sees it (hidden tests removed, ends trimmed)."""
    return _strip(src).strip()


def checked_exercises(src: str) -> dict[str, str]:
    """``check("00.softmax", softmax)`` calls in a test cell -> {"00.softmax": "softmax"}."""
    found = {}
    try:
        tree = ast.parse(src)
    except SyntaxError:
        return found
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "check"
                and len(node.args) >= 2 and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[1], ast.Name)):
            found[node.args[0].value] = node.args[1].id
    return found


def _text(cell) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else str(src)


def _nbg(cell) -> dict:
    meta = cell.get("metadata", {}) if isinstance(cell, dict) else {}
    nbg = meta.get("nbgrader", {}) if isinstance(meta, dict) else {}
    return nbg if isinstance(nbg, dict) else {}


class SourceIndex:
    """What the instructor notebooks contain: cell ids, graded cells, exercises per cell."""

    def __init__(self, root: Path):
        self.root = root
        self.notebooks: dict[tuple[str, str], SourceNotebook] = {}
        for assignment in chapters(root):
            for path in sorted((root / "solutions" / assignment).glob("*.ipynb")):
                nb = json.loads(path.read_text(encoding="utf-8"))
                ids, grade_cells = set(), {}
                for cell in nb["cells"]:
                    nbg = _nbg(cell)
                    if "grade_id" not in nbg:
                        continue
                    ids.add(nbg["grade_id"])
                    if nbg.get("grade"):
                        src = _text(cell)
                        grade_cells[nbg["grade_id"]] = GradeCell(
                            nbg["grade_id"], float(nbg.get("points", 0)), strip_hidden(src),
                            checked_exercises(src))
                self.notebooks[(assignment, path.stem)] = SourceNotebook(
                    assignment, path.stem, ids, grade_cells)

    @property
    def assignments(self) -> list[str]:
        return sorted({a for a, _ in self.notebooks})

    def of(self, assignment: str) -> list[SourceNotebook]:
        return [nb for (a, _), nb in sorted(self.notebooks.items()) if a == assignment]

    def identify(self, nb: dict, filename: str) -> SourceNotebook | None:
        """The source notebook this submission is a copy of (by cell ids, then by name)."""
        ids = {_nbg(c).get("grade_id") for c in nb.get("cells", [])} - {None}
        best = max(self.notebooks.values(), key=lambda s: (len(s.ids & ids), s.name == filename),
                   default=None)
        if best is None or not (best.ids & ids):
            named = [s for s in self.notebooks.values() if s.name == filename]
            return named[0] if len(named) == 1 else None
        return best


MAX_CELLS = 2000


def load_notebook(path: Path) -> tuple[dict | None, str | None]:
    """Parse and validate a notebook; return (notebook, None) or (None, one-line reason).

    Hostile input: a regular file only (no link, FIFO or device), its size checked before a
    byte is read, at most MAX_CELLS cells of at most MAX_CELL_CHARS characters each."""
    name = printable(path.name, 200)
    try:
        raw = read_regular(path, MAX_NOTEBOOK_BYTES)
    except ProtocolError as exc:
        msg = str(exc)
        if "larger than" in msg:
            return None, f"{name}: larger than 50 MB; clear the outputs and submit again"
        return None, f"{name}: {msg.split(': ', 1)[-1]}"
    try:
        text = raw.decode("utf-8")
        data = json.loads(text)
    except UnicodeDecodeError:
        return None, f"{name}: not a text file (not UTF-8)"
    except json.JSONDecodeError as exc:
        return None, f"{name}: not valid notebook JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
    except RecursionError:
        return None, f"{name}: not valid notebook JSON (nested too deeply)"
    if not isinstance(data, dict) or not isinstance(data.get("cells"), list):
        return None, f"{name}: JSON, but not a notebook (no list of cells)"
    if len(data["cells"]) > MAX_CELLS:
        return None, f"{name}: more than {MAX_CELLS} cells; not graded"
    for i, cell in enumerate(data["cells"]):
        src = cell.get("source", "") if isinstance(cell, dict) else ""
        size = sum(len(x) for x in src if isinstance(x, str)) if isinstance(src, list) else len(str(src))
        if size > MAX_CELL_CHARS:
            return None, f"{name}: cell {i} is larger than {MAX_CELL_CHARS} characters; not graded"
    try:
        nb = nbformat.reads(text, as_version=4)
        nbformat.validate(nb)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return None, f"{name}: not a valid Jupyter notebook ({first[:160]})"
    return json.loads(nbformat.writes(nb)), None


def repair(nb: dict, source: SourceNotebook) -> list[str]:
    """Report edited or deleted test cells (nbgrader restores them from the source) and
    clear outputs, so stored outputs can never count."""
    notes = []
    present = {}
    for cell in nb["cells"]:
        gid = _nbg(cell).get("grade_id")
        if gid:
            present[gid] = cell
        if cell.get("cell_type") == "code":
            cell["outputs"], cell["execution_count"] = [], None
    for gid, gc in source.grade_cells.items():
        cell = present.get(gid)
        if cell is None:
            notes.append(f"{source.name}: test cell '{gid}' was deleted; restored from the source")
        elif cell.get("cell_type") != "code" or strip_hidden(_text(cell)) != gc.source:
            notes.append(f"{source.name}: test cell '{gid}' was edited; restored from the source")
    return notes


def _walk(folder: Path, depth: int = 3) -> tuple[list[Path], list[str]]:
    """The regular ``*.ipynb`` files under ``folder`` (links are never followed) and one
    line for each link, FIFO or device found where a notebook or folder should be."""
    files, problems = [], []
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        return [], [f"{printable(folder.name, 200)}: cannot read ({exc.strerror or exc})"]
    for e in entries:
        if e.name.startswith(".") or e.name == "__pycache__":
            continue
        if e.is_symlink():
            if e.name.endswith(".ipynb") or os.path.isdir(e.path):
                problems.append(f"{printable(e.name, 200)}: a symbolic link, not the learner's own "
                                "file; not graded")
            continue
        if e.is_dir(follow_symlinks=False):
            if depth > 0:
                more, notes = _walk(Path(e.path), depth - 1)
                files += more
                problems += notes
        elif e.name.endswith(".ipynb"):
            if e.is_file(follow_symlinks=False):
                files.append(Path(e.path))
            else:
                problems.append(f"{printable(e.name, 200)}: not a regular file (a FIFO or device); "
                                "not graded")
    return files, problems


def _learner_folder(path: Path) -> bool:
    """One learner's folder: notebooks in it, or only chapter folders (alice/00-.../)."""
    try:
        entries = [e for e in os.scandir(path) if not e.name.startswith(".")]
    except OSError:
        return False
    if any(e.name.endswith(".ipynb") for e in entries):
        return True
    dirs = [e for e in entries if e.is_dir(follow_symlinks=False)]
    return bool(dirs) and all(CHAPTER_DIR.match(e.name) for e in dirs)


def discover(path: Path, index: SourceIndex, assignment: str | None = None,
             student: str | None = None) -> list[Submission]:
    """One notebook, one learner's folder (``alice/*.ipynb`` or ``alice/<chapter>/*.ipynb``),
    or a folder of learners' folders."""
    path = Path(path)
    if not os.path.lexists(path):
        raise FileNotFoundError(f"no such file or folder: {path}")
    notes: dict[str, list[str]] = {}
    if not path.is_dir():
        groups = {student or "learner": [path]}
    elif _learner_folder(path):
        who = student or path.resolve().name
        groups = {who: []}
        groups[who], notes[who] = _walk(path)
    else:
        groups = {}
        for d in sorted(os.scandir(path), key=lambda e: e.name):
            if d.name.startswith("."):
                continue
            if d.is_symlink():
                notes.setdefault(d.name, []).append("the learner's folder is a symbolic link; not graded")
                groups[d.name] = []
            elif d.is_dir(follow_symlinks=False):
                groups[d.name], notes[d.name] = _walk(Path(d.path))
    subs: dict[tuple[str, str], Submission] = {}
    orphans: list[Submission] = []
    for who, files in groups.items():
        if not SAFE_ID.match(who):
            orphans.append(Submission(printable(repr(who), 80), assignment or "?", problems=[
                f"student id {printable(repr(who), 80)} is not usable (letters, digits, '.', '_', "
                "'-', '@' only)"]))
            continue
        if not files:
            orphans.append(Submission(who, assignment or "?",
                                      problems=notes.get(who, []) + ["no notebooks found"]))
            continue
        for f in files:
            nb, problem = load_notebook(f)
            src = index.identify(nb, f.stem) if nb is not None else None
            if nb is not None and src is None:
                problem = f"{printable(f.name, 200)}: not a notebook of this course (no known cell ids or name)"
            target = assignment or (src.assignment if src else None) or _guess(f, index)
            sub = subs.setdefault((who, target), Submission(who, target))
            if problem:
                sub.problems.append(problem)
                continue
            if src.assignment != target:
                sub.problems.append(f"{printable(f.name, 200)}: is a notebook of chapter {src.assignment}, "
                                    f"not {target}; not graded")
                continue
            if src.name in sub.notebooks:
                sub.problems.append(f"{printable(f.name, 200)}: a second copy of {src.name}.ipynb; ignored")
                continue
            sub.problems += repair(nb, src)
            sub.notebooks[src.name] = nb
        for (w, _), sub in subs.items():
            if w == who:
                for n in notes.get(who, []):
                    if n not in sub.problems:
                        sub.problems.append(n)
    return list(subs.values()) + orphans


def _guess(f: Path, index: SourceIndex) -> str:
    for part in f.parts[::-1]:
        if part in index.assignments:
            return part
    return index.assignments[0] if len(index.assignments) == 1 else "?"

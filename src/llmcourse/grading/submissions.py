"""Finding submissions, matching notebooks to chapters, and repairing what can be repaired.

Everything here reads files; nothing runs learner code. Every problem becomes one line in
``Submission.problems`` and grading goes on.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from .course import chapters
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


def load_notebook(path: Path) -> tuple[dict | None, str | None]:
    """Parse and validate a notebook; return (notebook, None) or (None, one-line reason)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return None, f"{path.name}: cannot read ({exc.strerror or exc})"
    if len(raw) > 50 * 2**20:
        return None, f"{path.name}: larger than 50 MB; clear the outputs and submit again"
    try:
        text = raw.decode("utf-8")
        data = json.loads(text)
    except UnicodeDecodeError:
        return None, f"{path.name}: not a text file (not UTF-8)"
    except json.JSONDecodeError as exc:
        return None, f"{path.name}: not valid notebook JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
    if not isinstance(data, dict) or not isinstance(data.get("cells"), list):
        return None, f"{path.name}: JSON, but not a notebook (no list of cells)"
    try:
        nb = nbformat.reads(text, as_version=4)
        nbformat.validate(nb)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return None, f"{path.name}: not a valid Jupyter notebook ({first[:160]})"
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


def discover(path: Path, index: SourceIndex, assignment: str | None = None,
             student: str | None = None) -> list[Submission]:
    """One notebook, one learner's chapter folder, or a folder of learners' folders."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {path}")
    if path.is_file():
        groups = {student or "learner": [path]}
    elif any(path.glob("*.ipynb")):
        groups = {student or path.name: sorted(path.glob("*.ipynb"))}
    else:
        groups = {d.name: sorted(d.rglob("*.ipynb")) for d in sorted(path.iterdir()) if d.is_dir()}
    subs: dict[tuple[str, str], Submission] = {}
    orphans: list[Submission] = []
    for who, files in groups.items():
        if not SAFE_ID.match(who):
            orphans.append(Submission(who, assignment or "?", problems=[
                f"student id {who!r} is not usable (letters, digits, '.', '_', '-', '@' only)"]))
            continue
        if not files:
            orphans.append(Submission(who, assignment or "?", problems=["no notebooks found"]))
            continue
        for f in files:
            nb, problem = load_notebook(f)
            src = index.identify(nb, f.stem) if nb is not None else None
            if nb is not None and src is None:
                problem = f"{f.name}: not a notebook of this course (no known cell ids or name)"
            target = assignment or (src.assignment if src else None) or _guess(f, index)
            sub = subs.setdefault((who, target), Submission(who, target))
            if problem:
                sub.problems.append(problem)
                continue
            if src.assignment != target:
                sub.problems.append(f"{f.name}: is a notebook of chapter {src.assignment}, "
                                    f"not {target}; not graded")
                continue
            if src.name in sub.notebooks:
                sub.problems.append(f"{f.name}: a second copy of {src.name}.ipynb; ignored")
                continue
            sub.problems += repair(nb, src)
            sub.notebooks[src.name] = nb
    return list(subs.values()) + orphans


def _guess(f: Path, index: SourceIndex) -> str:
    for part in f.parts[::-1]:
        if part in index.assignments:
            return part
    return index.assignments[0] if len(index.assignments) == 1 else "?"

"""``llmcourse grade``: nbgrader autograde, hardened.

For each submission: repaired notebooks go to ``submitted/``; nbgrader autogrades them in
a sandboxed kernel (:mod:`.execute`); then, in this process, each exercise is judged again
on hidden cases the learner's kernel never saw the answers to (:mod:`.verify`) and the
learner's code is read for forbidden shortcuts. A graded cell keeps its points only if
nbgrader passed it AND every exercise it checks passed both. Overrides are written to the
gradebook (as a manual score of 0 with a comment), so nbgrader's feedback and exports agree.
"""

from __future__ import annotations

import json
import secrets
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..checks.core import exception_line
from .course import nbgrader_config
from .learner import LearnerBuild, learner_build, notebook_reference_imports, pristine_copy
from . import prepared
from .protocol import BatchDir, printable, write_plan
from .sandbox import NO_SANDBOX, probe
from .scan import scan
from .submissions import SourceIndex, Submission, _nbg, _text, discover
from .verify import CaseMaker, entries_and_rules, judge


@dataclass
class CellScore:
    grade_id: str
    points: float
    max_points: float
    reason: str = ""
    # challenges: {exercise id: {"figure", "floor", "unit", "credit", "band"}} (the leaderboard)
    figures: dict = field(default_factory=dict)


@dataclass
class Row:
    student: str
    assignment: str
    notebook: str
    score: float
    max_score: float
    cells: list[CellScore] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    feedback: str = ""


@dataclass
class Options:
    course_dir: Path
    cell_timeout: int = 30
    notebook_timeout: int = 600
    memory: str = "4G"
    feedback: bool = True
    seed: int | None = None
    unsafe: bool = False  # --unsafe-no-sandbox: no bwrap; every row says "not sandboxed"


NOT_SANDBOXED = "not sandboxed (--unsafe-no-sandbox): trusted work only"


def start(root: Path, options: Options, assignment: str | None):
    """The course's source index, once the chapter is known and a sandbox can be made."""
    index = SourceIndex(root)
    if assignment and assignment not in index.assignments:
        raise ValueError(f"unknown chapter {assignment!r} (known: {', '.join(index.assignments)})")
    if not options.unsafe:
        ok, why = probe()
        if not ok:
            raise RuntimeError(NO_SANDBOX.format(why=why))
    return index


def grade(path: Path, root: Path, options: Options, assignment: str | None = None,
          student: str | None = None, log=print) -> list[Row]:
    index = start(root, options, assignment)
    subs = discover(path, index, assignment, student)
    rows: list[Row] = []
    seed = options.seed if options.seed is not None else secrets.randbits(31)
    by_assignment: dict[str, list[Submission]] = {}
    for sub in subs:
        if sub.assignment not in index.assignments:
            rows.append(Row(sub.student, sub.assignment, "-", 0, 0, problems=sub.problems or
                            ["could not tell which chapter this is; pass --assignment"]))
        else:
            by_assignment.setdefault(sub.assignment, []).append(sub)
    options.course_dir.mkdir(parents=True, exist_ok=True)
    for name, group in by_assignment.items():
        with tempfile.TemporaryDirectory(prefix="llmc-verify-") as vdir:
            try:
                rows += _grade_assignment(name, group, index, root, options, seed, Path(vdir), log)
            except Exception as exc:  # the chapter could not be prepared: every row says why
                line = f"grader error: {exception_line(exc)}"
                rows += [Row(s.student, name, src.name, 0.0, sum(g.points for g in src.grade_cells.values()),
                             problems=[line]) for s in group for src in index.of(name)]
    if options.unsafe:
        for row in rows:
            row.problems.insert(0, NOT_SANDBOXED)
    return rows


@dataclass
class Chapter:
    """What grading one chapter needs, made once per batch before any learner code runs."""

    assignment: str
    sources: list
    options: Options
    batch: BatchDir
    api: object
    db_url: str
    maker: CaseMaker | None
    build: LearnerBuild | None

    def exercises(self, src) -> list[str]:
        return sorted({e for g in src.grade_cells.values() for e in g.exercises})


@dataclass
class Graded:
    """One submission after nbgrader and the sandbox ran: what the rows are built from."""

    sub: Submission
    problems: list[str]
    expected: tuple | None
    success: bool
    t0: float


@dataclass
class CellContext:
    """Everything :func:`_settle` needs to decide one graded cell."""

    gb: object
    grade_cell: object  # submissions.GradeCell
    source: object  # submissions.SourceNotebook
    student: str
    verdicts: dict  # exercise id -> verify.Verdict (the hidden cases, judged here)
    violations: dict  # exercise id -> [forbidden shortcuts found by the scan]


def _grade_assignment(assignment, subs, index, root, options, seed, vdir, log) -> list[Row]:
    chapter = _prepare(assignment, index, root, options, seed, BatchDir(vdir))
    rows = []
    for sub in subs:
        try:
            rows += _rows(chapter, _grade_submission(chapter, sub), log)
        except Exception as exc:  # one learner's failure: one line and 0, the batch goes on
            _zero_gradebook(chapter, sub.student)
            line = f"grader error: {exception_line(exc)}"
            rows += [Row(sub.student, assignment, src.name, 0.0,
                         sum(g.points for g in src.grade_cells.values()), problems=[line])
                     for src in chapter.sources]
    return rows


def _prepare(assignment, index, root, options, seed, batch: BatchDir) -> Chapter:
    """The truth and the learner build, from a pristine copy, before any learner code runs.
    What does not depend on the seed is kept between batches (:mod:`.prepared`)."""
    from nbgrader.apps import NbGraderAPI
    from nbgrader.coursedir import CourseDirectory

    sources = index.of(assignment)
    exercise_ids = sorted({e for s in sources for g in s.grade_cells.values() for e in g.exercises})
    batch.inputs_dir.mkdir(parents=True, exist_ok=True)
    pristine, digest = pristine_copy(batch.pristine)
    cfg = nbgrader_config(root, options.course_dir, cell_timeout=options.cell_timeout,
                          notebook_timeout=options.notebook_timeout, memory=options.memory,
                          verify_dir=str(batch.root), unsafe=options.unsafe)
    db_url = cfg.CourseDirectory.db_url
    solutions = _digest(root / "solutions" / assignment)
    # a new sqlite gradebook can start as a copy of one that holds just this chapter's cells
    db_file = Path(db_url[len("sqlite:///"):]) if db_url.startswith("sqlite:///") else None
    fresh = db_file if db_file is not None and not db_file.exists() else None
    cached = prepared.entry_dir(prepared.cache_key(digest, solutions, assignment, exercise_ids))
    kept = None if options.unsafe else prepared.restore(cached, batch.library, batch.public, fresh)
    maker = None
    if exercise_ids:  # the hidden cases: every batch, from its seed
        maker = CaseMaker(seed, str(batch.inputs), exercise_ids,
                          "-" if kept else str(batch.public), str(pristine))
    if kept:
        info, build = kept.info, kept.build
        if kept.gradebook:
            _stamp(db_url).write_text(json.dumps({assignment: solutions}))
    else:
        info = maker.public() if maker is not None else {}
        build = learner_build(pristine, batch.library, assignment[:2], batch.public, info,
                              notebook_reference_imports(root / "solutions" / assignment))
    write_plan(batch.plan, {s.name: {e: entry for g in s.grade_cells.values()
                                     for e, entry in g.exercises.items()} for s in sources},
               {e: int(i["budget_s"]) for e, i in info.items() if "budget_s" in i},
               {e for e, i in info.items() if "budget_s" in i and not i.get("record_ops", True)})
    api = NbGraderAPI(CourseDirectory(config=cfg), config=cfg)
    _ensure_assignment(api, assignment, db_url, root)
    if not options.unsafe and (not kept or (fresh is not None and not kept.gradebook)):
        prepared.store(cached, info, build, batch.public, fresh)
    return Chapter(assignment, sources, options, batch, api, db_url, maker, build)


def _grade_submission(chapter: Chapter, sub: Submission) -> Graded:
    """Hand the submission to nbgrader, which runs each notebook in the sandbox; then set
    every cell of it to 0 in the gradebook until :func:`_settle` has verified it."""
    t0 = time.perf_counter()
    folder = chapter.options.course_dir / "submitted" / sub.student / chapter.assignment
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for name, nb in sub.notebooks.items():
        (folder / f"{name}.ipynb").write_text(json.dumps(nb, indent=1), encoding="utf-8")
    problems = list(sub.problems)
    result = {"success": False, "error": "no notebooks to grade"}
    if sub.notebooks:
        result = chapter.api.autograde(chapter.assignment, sub.student, force=True, create=True)
    _zero_gradebook(chapter, sub.student)  # fail closed from here on
    if not result["success"] and sub.notebooks:
        problems.append("nbgrader could not grade this submission: " + _last_line(result))
    expected = chapter.maker.result() if chapter.maker is not None else None
    return Graded(sub, problems, expected, bool(result["success"]), t0)


def _zero_gradebook(chapter: Chapter, student: str) -> None:
    """Every grade of this learner in this chapter -> 0 until verified (manual score 0)."""
    from nbgrader.api import Gradebook, MissingEntry

    try:
        with Gradebook(chapter.db_url, "llmcourse") as gb:
            try:
                sub = gb.find_submission(chapter.assignment, student)
            except MissingEntry:
                return
            for nb in sub.notebooks:
                for g in nb.grades:
                    g.manual_score = 0.0
            gb.db.commit()
    except Exception:  # noqa: BLE001 - nothing was recorded, so nothing stands
        pass


def _rows(chapter: Chapter, graded: Graded, log) -> list[Row]:
    """The gradebook's final word and one row per notebook of the chapter."""
    from nbgrader.api import Gradebook

    sub, problems, expected, options = graded.sub, graded.problems, graded.expected, chapter.options
    sources, assignment = chapter.sources, chapter.assignment
    rules = entries_and_rules(expected) if expected else {}
    sub_rows = []
    with Gradebook(chapter.db_url, "llmcourse") as gb:
        for src in sources:
            nb = sub.notebooks.get(src.name)
            exids = chapter.exercises(src)
            verdicts = judge(expected, str(chapter.batch.job(sub.student, src.name).outputs),
                             exids) if (expected and nb is not None) else {}
            mine = [p for p in problems if p.startswith(src.name)]
            row = Row(sub.student, assignment, src.name, 0.0, 0.0, problems=mine + (
                [p for p in problems if not any(p.startswith(s.name) for s in sources)]
                if src is sources[0] else []))
            if chapter.build is not None and chapter.build.note:
                row.problems.append(chapter.build.note)
            violations = {}
            if nb is None:  # one line, not one "the test cell failed" per cell (issue 20)
                row.problems.append(f"{src.name}.ipynb: not submitted (scored 0)")
                row.cells = [CellScore(gc.grade_id, 0.0, gc.points) for gc in src.grade_cells.values()]
                row.max_score = sum(c.max_points for c in row.cells)
                sub_rows.append(row)
                continue
            else:
                row.problems += _run_problems(options, sub.student, assignment, src.name)
                cells = [(f"cell '{_nbg(c).get('grade_id') or i}'", _text(c))
                         for i, c in enumerate(nb["cells"])
                         if c.get("cell_type") == "code" and not _nbg(c).get("locked")]
                violations = scan({e: rules[e] for e in exids if e in rules}, cells,
                                  str(chapter.batch.pristine))
            for gc in src.grade_cells.values():
                row.cells.append(_settle(CellContext(gb, gc, src, sub.student, verdicts, violations)))
            row.score = sum(c.points for c in row.cells)
            row.max_score = sum(c.max_points for c in row.cells)
            sub_rows.append(row)
    if options.feedback and graded.success:
        fb = chapter.api.generate_feedback(assignment, sub.student, force=True)
        for row in sub_rows:
            html = options.course_dir / "feedback" / sub.student / assignment / f"{row.notebook}.html"
            row.feedback = str(html) if fb["success"] and html.exists() else ""
    for row in sub_rows:
        row.seconds = round(time.perf_counter() - graded.t0, 2)
        log(f"graded {row.student}/{assignment}/{row.notebook}: {row.score:g}/{row.max_score:g}")
    return sub_rows


def _settle(cell: CellContext) -> CellScore:
    """Final points of one graded cell. Fail closed: nbgrader's in-sandbox score stands only
    when every exercise the cell checks was verified here (hidden cases judged outside the
    sandbox, no forbidden shortcut); otherwise the gradebook says 0."""
    from nbgrader.api import MissingEntry

    gc, src, gb = cell.grade_cell, cell.source, cell.gb
    try:
        grade = gb.find_grade(gc.grade_id, src.name, src.assignment, cell.student)
    except MissingEntry:
        return CellScore(gc.grade_id, 0.0, gc.points, "not graded")
    reasons, notes, credit, figures = [], [], 1.0, {}
    if not gc.exercises:
        reasons.append("nothing in this cell can be verified outside the notebook")
    for exid in gc.exercises:
        reasons += [f"{exid}: {v}" for v in cell.violations.get(exid, [])[:1]]
        v = cell.verdicts.get(exid)
        if v is None:
            reasons.append(f"{exid}: not verified (the hidden cases did not run)")
        elif not v.ok:
            reasons.append(f"{exid}: {v.message}" + (f" - diagnosis: {v.mistake}" if v.mistake else ""))
        elif v.credit < 1.0 or v.figure is not None:  # a challenge: its band's share
            credit *= max(0.0, min(1.0, v.credit))
            notes.append(f"{exid}: {v.message}")
        if v is not None and v.figure is not None:
            figures[exid] = {"figure": v.figure, "floor": v.floor, "credit": v.credit,
                             "unit": v.unit, "lower_is_better": v.lower_is_better,
                             "limits": [list(x) for x in v.limits],
                             "message": v.message}
    auto = float(grade.auto_score or 0.0)
    final = 0.0 if reasons else round(min(auto, gc.points) * credit, 4)
    grade.manual_score = final
    _comment(gb, gc, src, cell.student, reasons or notes)
    gb.db.commit()
    if not reasons and auto < gc.points:
        reasons.append("the test cell failed in the notebook (see the feedback)")
    return CellScore(gc.grade_id, final, gc.points, "; ".join(reasons + notes), figures)


RUN_PROBLEMS = {
    "CellTimeoutError": "a cell ran past the {t} s per-cell limit and was interrupted",
    "NotebookTimeout": "the notebook used up its {n} s limit; later cells were skipped",
    "MemoryError": "a cell hit the {m} memory limit",
    "DeadKernelError": "the kernel died (crash or os._exit)",
}


def _run_problems(options, student, assignment, name) -> list[str]:
    """One line for each limit the notebook ran into, read from the autograded copy."""
    path = options.course_dir / "autograded" / student / assignment / f"{name}.ipynb"
    try:
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    except (OSError, ValueError, KeyError):
        return [f"{name}: no autograded notebook was written (see nbgrader's log)"]
    found = []
    for i, cell in enumerate(cells):
        for out in cell.get("outputs", []):
            text = out.get("text", "")
            kind = out.get("ename") if out.get("output_type") == "error" else (
                "truncated" if "output truncated by the grader" in "".join(text) else None)
            if kind in RUN_PROBLEMS:
                msg = RUN_PROBLEMS[kind].format(t=options.cell_timeout, n=options.notebook_timeout,
                                                m=options.memory)
                found.append(f"{name}: cell {i}: {msg}")
            elif kind == "truncated":
                found.append(f"{name}: cell {i}: output over the grader's limit was truncated")
    return list(dict.fromkeys(found))[:10]


def _comment(gb, gc, src, student, reasons) -> None:
    """Put the reason on the answer cell(s) of the exercise, where the feedback shows it."""
    from nbgrader.api import MissingEntry

    for entry in gc.exercises.values():
        try:
            comment = gb.find_comment(entry, src.name, src.assignment, student)
        except MissingEntry:
            continue
        comment.manual_comment = ("Checked outside your notebook: " + "; ".join(reasons)) if reasons else None


def _ensure_assignment(api, assignment, db_url, root) -> None:
    """Make sure the gradebook knows the chapter's cells (nbgrader records them on release)."""
    from nbgrader.api import Gradebook, MissingEntry

    stamp = _stamp(db_url)
    digest = _digest(root / "solutions" / assignment)
    seen = json.loads(stamp.read_text()) if stamp.exists() else {}
    try:
        with Gradebook(db_url, "llmcourse") as gb:
            gb.find_assignment(assignment)
        known = seen.get(assignment) == digest
    except MissingEntry:
        known = False
    if known:
        return
    with tempfile.TemporaryDirectory(prefix="llmc-release-") as tmp:
        api.coursedir.release_directory = tmp
        result = api.generate_assignment(assignment, force=True, create=True)
    if not result["success"]:
        raise RuntimeError(f"could not register {assignment} in the gradebook: {_last_line(result)}")
    seen[assignment] = digest
    stamp.write_text(json.dumps(seen))


def _stamp(db_url: str) -> Path:
    """Which version of each chapter's solutions the gradebook's cells were registered from."""
    return Path(db_url.replace("sqlite:///", "")).with_suffix(".sources.json")


def _digest(folder: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    for p in sorted(folder.glob("*.ipynb")):
        h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def _last_line(result: dict) -> str:
    text = (result.get("error") or result.get("log") or "unknown error").strip().splitlines()
    errors = [ln for ln in text if "ERROR" in ln or "Error" in ln]
    return (errors or text or ["unknown error"])[-1][:300]


def clean_rows(rows: list[Row]) -> list[Row]:
    """Every name and line made printable before it is written anywhere."""
    for r in rows:
        r.student, r.assignment, r.notebook = (printable(r.student, 200), printable(r.assignment, 200),
                                               printable(r.notebook, 200))
        r.problems = [printable(p) for p in r.problems]
        for c in r.cells:
            c.reason = printable(c.reason, 4000)
    return rows


def rows_to_json(rows: list[Row]) -> str:
    return json.dumps([asdict(r) for r in clean_rows(rows)], indent=2)


def rows_to_csv(rows: list[Row]) -> str:
    import csv
    import io

    clean_rows(rows)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["student", "assignment", "notebook", "score", "max_score", "problems"])
    for r in rows:
        w.writerow([r.student, r.assignment, r.notebook, f"{r.score:g}", f"{r.max_score:g}",
                    " | ".join(r.problems + [f"{c.grade_id}: {c.reason}" for c in r.cells if c.reason])])
    return buf.getvalue()

"""The ``llmcourse`` command: grade, export, check, release.

Every failure the user can cause (a bad path, a bad option, a broken notebook) ends in one
line starting with ``llmcourse: error:`` and exit status 2; nothing is half-written.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path


class Failure(Exception):
    pass


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def _memory(text: str) -> str:
    from .grading.sandbox import _size

    try:
        if _size(text) < 2**28:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a memory size of at least 256M: {text!r} "
                                         "(examples: 2G, 512M)") from None
    return text


class OneLineParser(argparse.ArgumentParser):
    """Usage mistakes end in one line too (argparse would print the whole usage first)."""

    def error(self, message):
        self.exit(2, f"llmcourse: error: {message} (see `{self.prog} --help`)\n")


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="llmcourse", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    g = sub.add_parser("grade", help="autograde a notebook, a chapter folder or a folder of submissions")
    g.add_argument("path", type=Path, help="a .ipynb, one learner's chapter folder, or a folder "
                   "with one sub-folder per learner (learner/*.ipynb or learner/<chapter>/*.ipynb)")
    g.add_argument("--assignment", "--chapter", dest="assignment", help="chapter id, e.g. 00-getting-started "
                   "(default: recognised from the notebooks' cells)")
    g.add_argument("--student", help="learner id when PATH is one notebook or one folder")
    g.add_argument("--course-dir", type=Path, default=None,
                   help="nbgrader course folder with gradebook.db (default: autograder/)")
    g.add_argument("--json", type=Path, help="write the results as JSON to this file")
    g.add_argument("--csv", type=Path, help="write the scores as CSV to this file")
    g.add_argument("--timeout", type=_positive, default=30, help="seconds per cell (default 30)")
    g.add_argument("--notebook-timeout", type=_positive, default=600,
                   help="seconds per notebook (default 600)")
    g.add_argument("--memory", type=_memory, default="4G", help="kernel memory limit (default 4G)")
    g.add_argument("--seed", type=int, help="seed of the hidden verification cases (default: random)")
    g.add_argument("--no-feedback", action="store_true", help="skip the feedback HTML")
    g.add_argument("--unsafe-no-sandbox", action="store_true",
                   help="grade without the bubblewrap sandbox (trusted work only; every row "
                   "says 'not sandboxed')")
    g.add_argument("--jobs", "-j", type=_positive, default=None,
                   help="notebooks graded at once, each in its own sandbox (default: the number of cores)")
    g.add_argument("--dask", action="store_true",
                   help="run the jobs on an embedded Dask LocalCluster of --jobs workers")
    g.add_argument("--scheduler", metavar="tcp://HOST:8786",
                   help="send the jobs to the workers of this Dask scheduler")
    g.add_argument("--db", metavar="URL", help="gradebook database (nbgrader db_url), e.g. "
                   "postgresql://user@host/gradebook (default: sqlite in the course folder)")
    g.add_argument("--html", type=Path, help="write the instructor report (score histograms, "
                   "most common mistakes) as HTML to this file")
    g.add_argument("--leaderboard", type=Path, help="write the challenge leaderboard (figures ranked, "
                   "the floor drawn) as HTML to this file")
    g.add_argument("--hash-ids", action="store_true", help="the leaderboard shows aliases, not learner "
                   "ids (an HMAC with the salt in $LLMCOURSE_LEADERBOARD_SALT, else a random one; "
                   "the aliases are written to FILE.aliases.csv for the instructor)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--regrade", action="store_true", help="grade every hand-in again, also those "
                   "the gradebook already holds a complete result for (default: keep them)")

    e = sub.add_parser("export", help="CSV/JSON/HTML of every graded learner, rebuilt from the gradebook")
    e.add_argument("--course-dir", type=Path, default=None, help="course folder (default: autograder/)")
    e.add_argument("--db", metavar="URL", help="gradebook database (default: sqlite in the course folder)")
    e.add_argument("--assignment", "--chapter", dest="assignment", help="only this chapter")
    e.add_argument("--json", type=Path)
    e.add_argument("--csv", type=Path)
    e.add_argument("--html", type=Path)

    c = sub.add_parser("check", help="run a notebook and print the public verdict of every exercise")
    c.add_argument("notebook", type=Path)
    c.add_argument("--timeout", type=_positive, default=120, help="seconds per cell (default 120)")

    r = sub.add_parser("release", help="regenerate chapters/ from solutions/ (nbgrader)")
    r.add_argument("--to", type=Path, help="write the student notebooks here instead of chapters/")
    r.add_argument("--chapter", action="append", metavar="NN-name",
                   help="release only this chapter, or the page folder appendix (repeatable; default: all)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    warnings.filterwarnings("ignore", message=".*not in session.*")  # nbgrader's SQLAlchemy noise
    # nbgrader runs `alembic` (and kernels run `python`) from PATH: use this environment's.
    bindir = os.path.dirname(sys.executable)
    if bindir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    try:
        return {"grade": _grade, "export": _export, "check": _check,
                "release": _release}[args.command](args)
    except Failure as exc:
        print(f"llmcourse: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("llmcourse: interrupted", file=sys.stderr)
        return 130


def _root():
    from .grading.course import CourseError, repo_root

    try:
        return repo_root()
    except CourseError as exc:
        raise Failure(str(exc)) from None


def _writable(path: Path | None) -> None:
    if path is not None and not path.resolve().parent.is_dir():
        raise Failure(f"cannot write {path}: folder {path.resolve().parent} does not exist")


def _grade(args) -> int:
    from .grading.cohort import Engine, grade_cohort
    from .grading.grade import Options, clean_rows

    root = _root()
    for out in (args.json, args.csv, args.html, args.leaderboard):
        _writable(out)
    if args.hash_ids and not args.leaderboard:
        raise Failure("--hash-ids needs --leaderboard FILE")
    if args.scheduler and not args.scheduler.startswith(("tcp://", "tls://", "ucx://")):
        raise Failure(f"--scheduler must be an address like tcp://host:8786, not {args.scheduler!r}")
    if not args.path.exists():
        raise Failure(f"no such file or folder: {args.path}")
    if args.path.is_file() and args.path.suffix != ".ipynb":
        raise Failure(f"{args.path} is not a notebook (.ipynb)")
    options = Options(course_dir=(args.course_dir or root / "autograder").resolve(),
                      cell_timeout=args.timeout, notebook_timeout=args.notebook_timeout,
                      memory=args.memory, feedback=not args.no_feedback, seed=args.seed,
                      unsafe=args.unsafe_no_sandbox)
    engine = Engine(jobs=args.jobs or 0, dask=args.dask, scheduler=args.scheduler)
    progress = not args.no_progress and sys.stderr.isatty()
    try:
        rows = grade_cohort(args.path, root, options, args.assignment, args.student, engine=engine,
                            db_url=args.db, log=lambda m: print(m, file=sys.stderr), progress=progress,
                            regrade=args.regrade)
    except (ValueError, FileNotFoundError, RuntimeError, ImportError) as exc:
        raise Failure(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - e.g. a database that cannot be reached
        if type(exc).__module__.split(".")[0] in ("sqlalchemy", "psycopg", "distributed", "dask"):
            raise Failure(f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}") from None
        raise
    clean_rows(rows)
    _table(rows)
    _write(rows, args.json, args.csv, args.html)
    if args.leaderboard:
        _leaderboard(rows, args.leaderboard, args.hash_ids)
    return 0


def _leaderboard(rows, path: Path, hash_ids: bool) -> None:
    import csv
    import secrets

    from .grading.leaderboard import alias, leaderboard_html

    salt = os.environ.get("LLMCOURSE_LEADERBOARD_SALT") or secrets.token_hex(16)
    path.write_text(leaderboard_html(rows, hash_ids, salt), encoding="utf-8")
    if hash_ids:
        with open(f"{path}.aliases.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["student", "alias"])
            for s in sorted({r.student for r in rows}):
                w.writerow([s, alias(s, salt)])


def _write(rows, json_path, csv_path, html_path) -> None:
    from .grading.grade import rows_to_csv, rows_to_json

    if json_path:
        json_path.write_text(rows_to_json(rows), encoding="utf-8")
    if csv_path:
        csv_path.write_text(rows_to_csv(rows), encoding="utf-8")
    if html_path:
        from .grading.report import report_html

        html_path.write_text(report_html(rows), encoding="utf-8")


def _export(args) -> int:
    from .grading.cohort import export

    root = _root()
    for out in (args.json, args.csv, args.html):
        _writable(out)
    course = (args.course_dir or root / "autograder").resolve()
    if not args.db and not (course / "gradebook.db").exists():
        raise Failure(f"no gradebook in {course} (pass --course-dir or --db)")
    try:
        rows = export(course, args.db, args.assignment)
    except Exception as exc:  # noqa: BLE001 - a database that cannot be read: one line
        raise Failure(f"cannot read the gradebook: {type(exc).__name__}: "
                      f"{str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}") from None
    _table(rows)
    _write(rows, args.json, args.csv, args.html)
    return 0


def _table(rows) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="llmcourse grade")
    for col in ("student", "chapter", "notebook", "score", "notes"):
        t.add_column(col, overflow="fold")
    for r in rows:
        notes = r.problems + [f"{c.grade_id}: {c.reason}" for c in r.cells if c.reason]
        t.add_row(r.student, r.assignment, r.notebook, f"{r.score:g}/{r.max_score:g}",
                  "\n".join(notes) or "-")
    Console(width=160).print(t)


def _check(args) -> int:
    from .grading.check_notebook import check_notebook

    if not args.notebook.is_file():
        raise Failure(f"no such notebook: {args.notebook}")
    try:
        ok = check_notebook(args.notebook, timeout=args.timeout)
    except ValueError as exc:
        raise Failure(str(exc)) from None
    return 0 if ok else 1


def _release(args) -> int:
    from .grading.course import CourseError
    from .grading.release import release

    try:
        release(_root(), args.to, only=args.chapter)
    except CourseError as exc:
        raise Failure(str(exc)) from None
    return 0


if __name__ == "__main__":
    sys.exit(main())

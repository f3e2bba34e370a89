"""Grading a cohort: one job = one learner's hand-in of one chapter, run by a pool of workers.

Workers (processes of this machine via :mod:`concurrent.futures`, or Dask workers: an
embedded ``LocalCluster`` or a scheduler at ``tcp://host:8786``) each prepare a chapter once
(the truth from a pristine copy and the learner build, exactly as :func:`.grade._prepare`),
grade hand-ins in the sandbox into a private scratch gradebook, and return a :class:`Result`:
the rows, the grades and comments nbgrader and the verification settled, and the files
(submitted, autograded, feedback). Only the coordinator writes the real gradebook
(:mod:`.store`), one transaction per learner as each result arrives, so a killed batch loses
at most the learners that were running, and a rerun grades only what is missing.

A worker that dies (the out-of-memory killer, SIGKILL) costs one learner, not the batch: the
pool is started again, the hand-ins that were in flight are graded again one at a time, and
one that kills its worker a second time gets 0 and the line :data:`WORKER_DIED`. On Dask the
embedded cluster runs one task per worker, retries a task once (``allowed-failures: 1``) and
the nanny restarts the worker.
Test hook (grader side, never the learner's code): ``LLMCOURSE_TEST_KILL_WORKER=bo,cy:once``
makes a worker process SIGKILL itself when it grades ``bo`` (``cy``: the first time only).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ..checks.core import exception_line
from .grade import NOT_SANDBOXED, Options, Row
from .store import Store, export, sqlite_url, write_files  # noqa: F401 (export: re-exported)
from .store import register_chapter as _register
from .store import row_of as _row


@dataclass
class Job:
    student: str
    assignment: str
    digest: str
    sub: object  # submissions.Submission (picklable)
    force: bool = False  # --regrade: grade it even if a record of this hand-in exists
    tries: int = 0  # how many times a worker died while grading it


@dataclass
class Result:
    student: str
    assignment: str
    digest: str
    rows: list[dict]
    grades: dict | None  # notebook -> {"grades": {id: (auto, manual, extra, needs)}, "comments": ...}
    files: dict[str, bytes] = field(default_factory=dict)
    phases: dict[str, float] = field(default_factory=dict)  # seconds: prepare, autograde, verify, ...
    worker: str = ""


def job_digest(sub, source_digest: str, options: Options) -> str:
    """What decides a learner's grade: the hand-in, the chapter's source, the limits."""
    h = hashlib.sha256()
    h.update(json.dumps([sorted(sub.notebooks.items()), sub.problems, source_digest,
                         options.cell_timeout, options.notebook_timeout, options.memory,
                         options.unsafe, options.feedback], sort_keys=True, default=str).encode())
    return h.hexdigest()


WORKER_DIED = ("grader error: the grading worker died while grading this hand-in, on its retry "
               "too (out of memory, or killed by a signal); the rest of the batch was graded, and "
               "a rerun grades it again")
KILL_ENV = "LLMCOURSE_TEST_KILL_WORKER"


# ---------------------------------------------------------------------------------- worker
_CHAPTERS: dict[tuple, object] = {}


def _worker_chapter(assignment, root, options, seed):
    """This worker's prepared chapter (made once per worker, batch seed and limits)."""
    from .grade import _prepare
    from .protocol import BatchDir
    from .submissions import SourceIndex

    k = (assignment, str(root), seed, options.cell_timeout, options.notebook_timeout,
         options.memory, options.unsafe, options.feedback)
    if k not in _CHAPTERS:
        if not _CHAPTERS:
            import atexit

            atexit.register(forget_chapters)
        scratch = Path(tempfile.mkdtemp(prefix="llmc-worker-"))
        private = replace(options, course_dir=scratch / "course")
        private.course_dir.mkdir(parents=True)
        t0 = time.perf_counter()
        chapter = _prepare(assignment, SourceIndex(root), root, private, seed, BatchDir(scratch / "verify"))
        _CHAPTERS[k] = (chapter, time.perf_counter() - t0, scratch)
    return _CHAPTERS[k][:2]


def forget_chapters() -> None:
    """Drop this process's prepared chapters and their scratch folders."""
    for _chapter, _t, scratch in _CHAPTERS.values():
        shutil.rmtree(scratch, ignore_errors=True)
    _CHAPTERS.clear()


def grade_job(job: Job, root: str, options: Options, seed: int) -> Result:
    """Grade one hand-in in its sandbox; return everything, write nothing shared."""
    from nbgrader.api import Gradebook, MissingEntry

    from .grade import _grade_submission, _rows, _zero_gradebook

    root_p = Path(root)
    worker = f"{os.uname().nodename}:{os.getpid()}"
    phases: dict[str, float] = {}
    try:
        fresh = (job.assignment, root, seed) not in {k[:3] for k in _CHAPTERS}
        chapter, prep = _worker_chapter(job.assignment, root_p, options, seed)
        if fresh:
            phases["prepare (once per worker)"] = prep
    except Exception as exc:  # the chapter could not be prepared here
        line = f"grader error: {exception_line(exc)}"
        return Result(job.student, job.assignment, job.digest, _error_rows(job, root_p, line), None,
                      worker=worker)
    _test_kill(job, options)
    course = chapter.options.course_dir
    try:
        t0 = time.perf_counter()
        graded = _grade_submission(chapter, job.sub)
        phases["autograde (sandbox + kernel)"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        rows = _rows(replace(chapter, options=replace(chapter.options, feedback=False)), graded,
                     log=lambda m: None)
        phases["verify + scan"] = time.perf_counter() - t1
        if chapter.options.feedback and graded.success:
            t2 = time.perf_counter()
            fb = chapter.api.generate_feedback(job.assignment, job.student, force=True)
            pages = course / "feedback" / job.student / job.assignment
            for extra in (list(pages.rglob("*")) if pages.is_dir() else []):  # feedback pages
                if extra.is_file() and extra.suffix != ".html" and extra.name != "timestamp.txt":
                    extra.unlink()  # only: no copies of the chapter's narrative pages (issue 20)
            for row in rows:
                html = course / "feedback" / job.student / job.assignment / f"{row.notebook}.html"
                row.feedback = (str(options.course_dir / html.relative_to(course))
                                if fb["success"] and html.exists() else "")
            phases["feedback"] = time.perf_counter() - t2
    except Exception as exc:  # one learner's failure: one line and 0, the batch goes on
        _zero_gradebook(chapter, job.student)
        rows = [Row(job.student, job.assignment, src.name, 0.0,
                    sum(g.points for g in src.grade_cells.values()),
                    problems=[f"grader error: {exception_line(exc)}"]) for src in chapter.sources]
    grades: dict = {}
    try:
        with Gradebook(chapter.db_url, "llmcourse") as gb:
            for nb in gb.find_submission(job.assignment, job.student).notebooks:
                grades[nb.name] = {
                    "grades": {g.name: (g.auto_score, g.manual_score, g.extra_credit,
                                        bool(g.needs_manual_grade)) for g in nb.grades},
                    "comments": {c.name: (c.auto_comment, c.manual_comment) for c in nb.comments}}
    except MissingEntry:
        grades = {}
    files = {}
    for kind in ("submitted", "autograded", "feedback"):
        folder = course / kind / job.student / job.assignment
        for p in sorted(folder.rglob("*")) if folder.is_dir() else []:
            if p.is_file() and not p.is_symlink():
                files[str(p.relative_to(course))] = p.read_bytes()
        shutil.rmtree(course / kind / job.student, ignore_errors=True)
    return Result(job.student, job.assignment, job.digest, [asdict(r) for r in rows], grades,
                  files, phases, worker)


def _test_kill(job: Job, options: Options) -> None:
    """The fault-injection hook of :data:`KILL_ENV`; only ever in a worker process."""
    import multiprocessing

    wanted = dict((w.split(":") + [""])[:2] for w in os.environ.get(KILL_ENV, "").split(",") if w)
    if job.student not in wanted or multiprocessing.parent_process() is None:
        return
    if wanted[job.student] == "once":
        mark = Path(options.course_dir) / f".killed-{job.student}"
        if mark.exists():
            return
        mark.touch()
    os.kill(os.getpid(), 9)


def _error_rows(job, root, line):
    from .submissions import SourceIndex

    return [asdict(Row(job.student, job.assignment, src.name, 0.0,
                       sum(g.points for g in src.grade_cells.values()), problems=[line]))
            for src in SourceIndex(root).of(job.assignment)]


# ------------------------------------------------------------------------------ coordinator
@dataclass
class Engine:
    """Where jobs run: ``jobs`` local processes, or Dask (``dask=True``: a LocalCluster of
    ``jobs`` workers; ``scheduler``: an existing cluster)."""

    jobs: int = 0
    dask: bool = False
    scheduler: str | None = None

    def start(self, n_jobs: int):
        n = max(1, min(self.jobs or os.cpu_count() or 1, n_jobs))
        if self.scheduler or self.dask:
            from dask.distributed import Client, LocalCluster

            if self.scheduler:
                return Client(self.scheduler), n
            import dask

            # one task per worker (a "grade" slot: a worker that dies takes no other learner
            # down with it), and a task whose worker died is retried once, then fails
            with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
                cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                       dashboard_address=None, silence_logs=40,
                                       resources={"grade": 1})
            return Client(cluster), n
        if n == 1:
            return None, 1  # one at a time: in this process, no pool to start
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        return ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn")), n


def grade_cohort(path: Path, root: Path, options: Options, assignment: str | None = None,
                 student: str | None = None, engine: Engine | None = None,
                 db_url: str | None = None, log=print, progress: bool = False,
                 stats: dict | None = None, regrade: bool = False) -> list[Row]:
    """Grade every hand-in under ``path``; rows of this batch (stored ones for skipped learners).
    A learner whose stored record was made from the same hand-in is kept unless ``regrade``."""
    from .grade import _last_line, start
    from .submissions import discover

    engine = engine or Engine()
    index = start(root, options, assignment)
    subs = discover(path, index, assignment, student)
    options.course_dir.mkdir(parents=True, exist_ok=True)
    store = Store(db_url or sqlite_url(options.course_dir), options.course_dir)
    seed = options.seed if options.seed is not None else secrets.randbits(31)
    loose: list[Row] = []
    todo: list[Job] = []
    wanted: list[tuple[str, str]] = []
    stats = stats if stats is not None else {}
    stats.update(skipped=0, graded=0, failed=0, busy=0, phases={})
    try:
        digests = {}
        for sub in subs:
            if sub.assignment not in index.assignments:
                loose.append(Row(sub.student, sub.assignment, "-", 0, 0, problems=sub.problems or
                                 ["could not tell which chapter this is; pass --assignment"]))
                continue
            if sub.assignment not in digests:
                digests[sub.assignment] = _register(store, root, options, sub.assignment, _last_line)
            job = Job(sub.student, sub.assignment, job_digest(sub, digests[sub.assignment], options), sub)
            wanted.append((sub.student, sub.assignment))
            if regrade:
                job.force = True
                todo.append(job)
            elif store.digest_of(job.student, job.assignment) == job.digest:
                stats["skipped"] += 1
                log(f"kept {job.student}/{job.assignment}: graded before, same hand-in")
            else:
                todo.append(job)
        _run(store, todo, root, options, seed, engine, log, progress, stats)
        stored: dict[tuple, list] = {}
        for r in store.records():
            stored.setdefault((r["student"], r["assignment"]), []).append(r)
        rows = [_row(r) for key in wanted for r in stored.get(key, [])]
    finally:
        store.close()
    if not Path(path).is_dir():  # one notebook: its row only, not the chapter's (issue 20)
        names = {n for s in subs for n in s.notebooks}
        rows = [r for r in rows if r.notebook in names] or rows[:1]
    rows += loose
    if options.unsafe:
        for row in rows:
            if not row.problems or row.problems[0] != NOT_SANDBOXED:
                row.problems.insert(0, NOT_SANDBOXED)
    return rows


def _run(store, todo, root, options, seed, engine, log, progress, stats) -> None:
    from concurrent.futures import FIRST_COMPLETED, wait
    from concurrent.futures.process import BrokenProcessPool

    if not todo:
        return
    pool, n = engine.start(len(todo))
    bar = _Bar(len(todo), n) if progress else None
    pending: dict = {}
    queue = list(todo)
    t0 = time.perf_counter()

    def settle(job, result):
        w = time.perf_counter()
        store.commit(result)
        write_files(options.course_dir, result.files)
        store.release(job.student, job.assignment)
        failed = any(r["problems"] and r["problems"][0].startswith("grader error") for r in result.rows)
        stats["failed" if failed else "graded"] += 1
        for phase, s in result.phases.items():
            stats["phases"].setdefault(phase, []).append(s)
        for r in result.rows:
            log(f"graded {r['student']}/{r['assignment']}/{r['notebook']}: {r['score']:g}/{r['max_score']:g}")
        stats["phases"].setdefault("gradebook write", []).append(time.perf_counter() - w)
        if bar:
            bar.update(stats, len(pending))

    def claim(job) -> bool:
        if not store.claim(job.student, job.assignment):
            stats["busy"] += 1
            log(f"skipped {job.student}/{job.assignment}: another grader is grading it")
            return False
        if not job.force and store.digest_of(job.student, job.assignment) == job.digest:  # done meanwhile
            store.release(job.student, job.assignment)
            stats["skipped"] += 1
            return False
        return True

    def collect(done, suspects) -> bool:
        """Settle finished futures; True if the pool broke (its jobs go to ``suspects``)."""
        broken = False
        for fut in done:
            job = pending.pop(fut)
            try:
                result = fut.result()
            except BrokenProcessPool:
                broken, job.tries = True, job.tries + 1
                if job.tries < 2:
                    suspects.append(job)
                    continue
                result = _failed(job, root, WORKER_DIED)
            except Exception as exc:  # noqa: BLE001 - Dask: KilledWorker after its retry
                line = (WORKER_DIED if type(exc).__name__ == "KilledWorker"
                        else f"grader error: {exception_line(exc)}")
                result = _failed(job, root, line)
            settle(job, result)
        return broken

    try:
        if pool is None:
            for job in queue:
                if claim(job):
                    settle(job, grade_job(job, str(root), options, seed))
            return
        dask = bool(engine.dask or engine.scheduler)
        kw = {} if not dask else {"pure": False} if engine.scheduler else {
            "pure": False, "resources": {"grade": 1}}
        ready: list[Job] = []  # claimed, not running yet
        suspects: list[Job] = []  # in flight when a worker died: graded again, one at a time

        def submit(job, back: list) -> bool:
            try:
                pending[pool.submit(grade_job, job, str(root), options, seed, **kw)] = job
                return True
            except BrokenProcessPool:  # it broke since the last wait: the job goes back
                back.insert(0, job)
                return False

        while queue or ready or pending or suspects:
            broken = False
            if suspects:
                if not pending:
                    broken = not submit(suspects.pop(0), suspects)
            else:
                while (ready or queue) and len(pending) < 2 * n and not broken:  # a small lead
                    if ready or claim(queue[0]):
                        broken = not submit((ready or queue).pop(0), ready)
                    else:
                        queue.pop(0)
            if bar:
                bar.update(stats, len(pending))
            if pending and not broken:
                broken = collect(_wait(pool, pending, dask, wait, FIRST_COMPLETED), suspects)
            if broken:  # the other futures of a broken pool fail at once: settle them, start anew
                collect(wait(list(pending)).done, suspects)
                pool.shutdown(wait=True, cancel_futures=True)
                pool, _ = engine.start(n)
                log(f"a grading worker died; started the pool again; grading "
                    f"{', '.join(j.student for j in suspects) or 'the rest'} again, one at a time")
    finally:
        stats["seconds"] = time.perf_counter() - t0
        if bar:
            bar.close()
        if pool is None:
            forget_chapters()
        elif engine.dask or engine.scheduler:  # a dask.distributed Client
            cluster = getattr(pool, "cluster", None)
            pool.close()
            if cluster is not None and not engine.scheduler:
                cluster.close()
        else:
            pool.shutdown(wait=True, cancel_futures=True)


def _failed(job, root, line) -> Result:
    """0 and one line; the digest differs from the hand-in's, so a rerun grades it again."""
    return Result(job.student, job.assignment, "failed:" + job.digest[:50], _error_rows(job, root, line), None)


def _wait(pool, pending, dask, wait, first):
    if dask:
        from dask.distributed import wait as dwait

        return dwait(list(pending), return_when="FIRST_COMPLETED").done
    return wait(list(pending), return_when=first).done


class _Bar:
    """done / running / failed, rate and time left, on standard error."""

    def __init__(self, total: int, workers: int):
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        self.t0 = time.perf_counter()
        self.progress = Progress(TextColumn("grading"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
                                 TextColumn("left"), TimeRemainingColumn(),
                                 console=Console(stderr=True), transient=False)
        self.task = self.progress.add_task("grade", total=total, status=f"{workers} workers")
        self.progress.start()

    def update(self, stats, running):
        done = stats["graded"] + stats["failed"]
        rate = done / max(time.perf_counter() - self.t0, 1e-9) * 60
        self.progress.update(self.task, completed=done + stats["busy"], status=(
            f"running {running} · failed {stats['failed']} · {rate:.1f}/min"))

    def close(self):
        self.progress.stop()

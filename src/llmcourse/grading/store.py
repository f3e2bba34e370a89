"""The cohort gradebook: nbgrader's database (SQLite or PostgreSQL) plus one result record
per learner and chapter, written by the coordinator only, in ONE transaction per learner.

A learner's grades, comments and result record (the rows of the score table, and the digest
of the hand-in they were made from) are committed together, so after any crash a learner has
either the old complete record or the new complete one, never half of each. A rerun skips a
learner whose record carries the digest of the same hand-in. Two graders on one gradebook
claim each learner first (PostgreSQL: a session advisory lock; SQLite: an ``flock`` on a file
next to the database); a claim dies with its process, so a killed grader blocks nobody.
Also here: the chapter's registration in the gradebook (:func:`register_chapter`) and the
rows of a dead batch rebuilt from the records (:func:`export`).
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import hashlib
import json
import os
import tempfile
from pathlib import Path

RESULTS = "llmcourse_results"
SOURCES = "llmcourse_sources"


def sqlite_url(course_dir: Path) -> str:
    return f"sqlite:///{Path(course_dir).resolve() / 'gradebook.db'}"


def _key(*parts: str) -> int:
    """A signed 63-bit lock id for PostgreSQL's advisory locks."""
    return int.from_bytes(hashlib.sha256("\0".join(parts).encode()).digest()[:8], "big") >> 1


class Store:
    """Result records and claims on the gradebook at ``db_url``."""

    def __init__(self, db_url: str, course_dir: Path):
        from sqlalchemy import create_engine, text

        self.url, self.course_dir = db_url, Path(course_dir)
        self.postgres = db_url.startswith("postgresql")
        if self.postgres and db_url.startswith("postgresql://"):
            db_url = "postgresql+psycopg://" + db_url[len("postgresql://"):]  # psycopg 3
            self.url = db_url
        self.engine = create_engine(self.url, **({} if self.postgres else
                                                 {"connect_args": {"timeout": 60}}))
        self._locks = None  # PostgreSQL: the connection that holds our advisory locks
        self._files: dict[tuple, object] = {}
        with self.engine.begin() as c:
            if self.postgres:  # two graders starting at once must not race on CREATE TABLE
                c.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _key("llmcourse", "schema")})
            c.execute(text(f"CREATE TABLE IF NOT EXISTS {RESULTS} (student VARCHAR(128) NOT NULL, "
                           "assignment VARCHAR(128) NOT NULL, digest VARCHAR(64) NOT NULL, "
                           "rows_json TEXT NOT NULL, finished VARCHAR(40) NOT NULL, "
                           "PRIMARY KEY (student, assignment))"))
            c.execute(text(f"CREATE TABLE IF NOT EXISTS {SOURCES} (assignment VARCHAR(128) "
                           "PRIMARY KEY, digest VARCHAR(64) NOT NULL)"))

    # -- what is done -------------------------------------------------------------------
    def digest_of(self, student: str, assignment: str) -> str | None:
        from sqlalchemy import text

        with self.engine.connect() as c:
            r = c.execute(text(f"SELECT digest FROM {RESULTS} WHERE student=:s AND assignment=:a"),
                          {"s": student, "a": assignment}).first()
        return r[0] if r else None

    def records(self, assignment: str | None = None) -> list[dict]:
        """Every stored row (as dicts of grade.Row), ordered by learner then chapter."""
        from sqlalchemy import text

        q = f"SELECT student, assignment, rows_json FROM {RESULTS}"
        args = {}
        if assignment:
            q, args = q + " WHERE assignment=:a", {"a": assignment}
        with self.engine.connect() as c:
            got = c.execute(text(q + " ORDER BY student, assignment"), args).all()
        return [row for _, _, rows in got for row in json.loads(rows)]

    def source_digest(self, assignment: str) -> str | None:
        from sqlalchemy import text

        with self.engine.connect() as c:
            r = c.execute(text(f"SELECT digest FROM {SOURCES} WHERE assignment=:a"),
                          {"a": assignment}).first()
        return r[0] if r else None

    def set_source_digest(self, assignment: str, digest: str) -> None:
        from sqlalchemy import text

        with self.engine.begin() as c:
            c.execute(text(f"DELETE FROM {SOURCES} WHERE assignment=:a"), {"a": assignment})
            c.execute(text(f"INSERT INTO {SOURCES} VALUES (:a, :d)"), {"a": assignment, "d": digest})

    # -- claims ---------------------------------------------------------------------------
    def claim(self, *parts: str) -> bool:
        """Take the lock on (learner, chapter) or a setup step; False if another grader holds it."""
        if self.postgres:
            from sqlalchemy import text

            if self._locks is None:
                self._locks = self.engine.connect()
            ok = self._locks.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": _key(*parts)}).scalar()
            self._locks.commit()
            return bool(ok)
        folder = self.course_dir / ".claims"
        folder.mkdir(parents=True, exist_ok=True)
        f = open(folder / f"{hashlib.sha256(chr(0).join(parts).encode()).hexdigest()[:32]}.lock", "w")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            return False
        self._files[parts] = f
        return True

    def wait_claim(self, *parts: str) -> None:
        import time

        while not self.claim(*parts):
            time.sleep(0.5)

    def release(self, *parts: str) -> None:
        if self.postgres:
            from sqlalchemy import text

            if self._locks is not None:
                self._locks.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _key(*parts)})
                self._locks.commit()
            return
        f = self._files.pop(parts, None)
        if f is not None:
            f.close()

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()
        if self._locks is not None:
            self._locks.close()
            self._locks = None
        self.engine.dispose()

    # -- the one write per learner ---------------------------------------------------------
    def commit(self, result) -> None:
        """nbgrader's submission (grades, comments) and the result record, all or nothing."""
        from nbgrader.api import Gradebook, MissingEntry
        from sqlalchemy import text

        with Gradebook(self.url, "llmcourse") as gb:
            real_commit = gb.db.commit
            gb.db.commit = gb.db.flush  # nbgrader commits after each call: make it one transaction
            try:
                gb.update_or_create_student(result.student)
                try:
                    gb.remove_submission(result.assignment, result.student)
                except MissingEntry:
                    pass
                if result.grades is not None:
                    sub = gb.add_submission(result.assignment, result.student)
                    for nb in sub.notebooks:
                        mine = result.grades.get(nb.name, {})
                        for g in nb.grades:
                            vals = mine.get("grades", {}).get(g.name)
                            g.auto_score, g.manual_score, g.extra_credit, g.needs_manual_grade = (
                                vals if vals else (None, 0.0, None, False))
                        for c in nb.comments:
                            c.auto_comment, c.manual_comment = mine.get("comments", {}).get(
                                c.name, (None, None))
                gb.db.flush()
                gb.db.execute(text(f"DELETE FROM {RESULTS} WHERE student=:s AND assignment=:a"),
                              {"s": result.student, "a": result.assignment})
                gb.db.execute(text(f"INSERT INTO {RESULTS} VALUES (:s, :a, :d, :r, :t)"),
                              {"s": result.student, "a": result.assignment, "d": result.digest,
                               "r": json.dumps(result.rows),
                               "t": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})
                real_commit()
            except BaseException:
                gb.db.rollback()
                raise
            finally:
                gb.db.commit = real_commit


def write_files(course_dir: Path, files: dict[str, bytes]) -> None:
    """The submitted/autograded/feedback files of one learner, each replaced atomically."""
    base = Path(course_dir).resolve()
    for rel, data in files.items():
        dest = (base / rel).resolve()
        if base not in dest.parents:  # names come from a worker: never outside the course dir
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".part-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, dest)


def row_of(d: dict):
    """A stored row (a dict) as a :class:`.grade.Row`."""
    from .grade import CellScore, Row

    d = dict(d)
    d["cells"] = [CellScore(**c) for c in d.get("cells", [])]
    return Row(**d)


def export(course_dir: Path, db_url: str | None = None, assignment: str | None = None) -> list:
    """Every learner's stored rows, for ``llmcourse export`` (CSV/JSON/HTML of a dead batch)."""
    store = Store(db_url or sqlite_url(course_dir), course_dir)
    try:
        return [row_of(r) for r in store.records(assignment)]
    finally:
        store.close()


def register_chapter(store: Store, root: Path, options, assignment: str, last_line) -> str:
    """The chapter's cells in the gradebook (once per version of its source), under a claim."""
    from nbgrader.apps import NbGraderAPI
    from nbgrader.coursedir import CourseDirectory

    from .course import nbgrader_config
    from .grade import _digest

    digest = _digest(root / "solutions" / assignment)
    store.wait_claim("register", assignment)
    try:
        if store.source_digest(assignment) != digest:
            cfg = nbgrader_config(root, options.course_dir)
            cfg.CourseDirectory.db_url = store.url
            api = NbGraderAPI(CourseDirectory(config=cfg), config=cfg)
            with tempfile.TemporaryDirectory(prefix="llmc-release-") as tmp:
                api.coursedir.release_directory = tmp
                result = api.generate_assignment(assignment, force=True, create=True)
            if not result["success"]:
                raise RuntimeError(f"could not register {assignment} in the gradebook: {last_line(result)}")
            store.set_source_digest(assignment, digest)
    finally:
        store.release("register", assignment)
    return digest

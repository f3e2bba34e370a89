"""Issue 18: grading a cohort. Parallel workers, nothing lost (SIGKILL mid-batch, then
resume), nothing twice (two graders on one PostgreSQL gradebook), the gradebook compared row
by row with a clean single run, the instructor report. PostgreSQL is a real server: a
throwaway cluster made with Debian's ``initdb`` in a temporary folder, stopped at the end."""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import ROOT, filled_student_notebook, load, sandbox_available, save

pytestmark = pytest.mark.xdist_group("cohort")  # one worker: the clean run and the server are shared
CH, NB = "00-getting-started", "warmup"
LEARNERS = {"ada": "solved", "bo": "stub"}  # few: each one is a sandboxed notebook run


def _batch(folder: Path) -> Path:
    for who, kind in LEARNERS.items():
        nb = filled_student_notebook(CH, NB) if kind == "solved" else load(ROOT / "chapters" / CH / f"{NB}.ipynb")
        save(folder / who / f"{NB}.ipynb", nb)
    return folder


def _cmd(subs: Path, course: Path, *extra: str) -> list[str]:
    unsafe = [] if sandbox_available()[0] else ["--unsafe-no-sandbox"]
    return [sys.executable, "-m", "llmcourse.cli", "grade", str(subs), "--course-dir", str(course),
            "--assignment", CH, "--seed", "77", "--no-feedback", "--no-progress", *unsafe, *extra]


def _run(cmd, timeout=600):
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _said(stderr: str, verb: str) -> set[str]:
    return {ln.split()[1].split("/")[0] for ln in stderr.splitlines() if ln.startswith(verb + " ")}


def _grades_sql() -> str:
    return ("select s.student_id, n.notebook_id, c.name, g.auto_score, g.manual_score "
            "from grade g join submitted_notebook n on g.notebook_id = n.id "
            "join submitted_assignment s on n.assignment_id = s.id join base_cell c on g.cell_id = c.id")


def _grades(db: Path) -> list[tuple]:
    con = sqlite3.connect(db)
    assert con.execute("pragma integrity_check").fetchone()[0] == "ok"
    rows = con.execute(_grades_sql()).fetchall()
    names = dict(con.execute("select id, name from notebook"))
    return sorted((s, names[n], c, a, m) for s, n, c, a, m in rows)


def _scores(rows) -> dict:
    return {r["student"]: (r["score"], r["max_score"], [(c["grade_id"], c["points"]) for c in r["cells"]])
            for r in rows}


# ------------------------------------------------------------------------------- report
def test_report_renders_histograms_and_mistakes_escaped():
    from llmcourse.grading.grade import CellScore, Row
    from llmcourse.grading.report import mistakes, report_html

    bad = "00.softmax: case 1 (shape (3,)): max abs error 0.5 - diagnosis: no max subtraction"
    rows = [Row("<script>alert(1)</script>", CH, NB, 4, 6, [CellScore("test_softmax", 0, 2, bad),
                                                           CellScore("test_x", 2, 2)]),
            Row("bo", CH, NB, 4, 6, [CellScore("test_softmax", 0, 2, bad), CellScore("test_x", 2, 2)]),
            Row("cy", CH, NB, 6, 6, [CellScore("test_softmax", 2, 2), CellScore("test_x", 2, 2)],
                problems=["warmup: cell 3: <b>huge</b> output"])]
    assert mistakes(rows) == [("00.softmax", "no max subtraction", 2)]
    page = report_html(rows)
    assert "<script>" not in page and "&lt;script&gt;" in page and "&lt;b&gt;huge" in page
    assert page.count("<svg") == 3  # the notebook total and one per graded cell
    assert "<td>no max subtraction</td><td>2</td>" in page


# ----------------------------------------------------------------- nothing lost, nothing twice
@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """The reference: one uninterrupted run of the whole batch, one notebook at a time."""
    tmp = tmp_path_factory.mktemp("clean")
    subs = _batch(tmp / "subs")
    proc = _run(_cmd(subs, tmp / "course", "--jobs", "1", "--json", str(tmp / "rows.json")))
    assert _said(proc.stderr, "graded") == set(LEARNERS)
    return json.loads((tmp / "rows.json").read_text()), _grades(tmp / "course" / "gradebook.db")


@pytest.mark.slow
def test_killed_batch_resumes_with_only_the_missing_learners(tmp_path, clean):
    subs, course = _batch(tmp_path / "subs"), tmp_path / "course"
    proc = subprocess.Popen(_cmd(subs, course, "--jobs", "1"), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    db, done = course / "gradebook.db", 0
    deadline = time.time() + 500
    while time.time() < deadline and proc.poll() is None and done == 0:
        time.sleep(0.2)
        try:
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
            done = con.execute("select count(*) from llmcourse_results").fetchone()[0]
            con.close()
        except sqlite3.Error:
            pass
    os.killpg(proc.pid, signal.SIGKILL)  # the coordinator, its workers, their sandboxes
    proc.wait()
    assert done >= 1, "nothing finished before the kill"
    con = sqlite3.connect(db)
    before = {s: json.loads(r) for s, r in con.execute("select student, rows_json from llmcourse_results")}
    con.close()
    assert 1 <= len(before) < len(LEARNERS), "the batch finished before the kill"
    for who, rows in before.items():  # whatever the kill left is complete
        assert _scores(rows)[who] == _scores(clean[0])[who]
    resumed = _run(_cmd(subs, course, "--jobs", "1", "--json", str(tmp_path / "rows.json")))
    assert _said(resumed.stderr, "kept") == set(before)
    assert _said(resumed.stderr, "graded") == set(LEARNERS) - set(before)
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert _scores(rows) == _scores(clean[0])
    assert _grades(db) == clean[1]  # the gradebook, row by row
    export = subprocess.run([sys.executable, "-m", "llmcourse.cli", "export", "--course-dir", str(course),
                             "--csv", str(tmp_path / "g.csv"), "--html", str(tmp_path / "r.html")],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert export.returncode == 0, export.stderr
    csv = (tmp_path / "g.csv").read_text()
    assert f"ada,{CH},{NB},6,6" in csv and f"bo,{CH},{NB},0,6" in csv
    assert "<svg" in (tmp_path / "r.html").read_text()


# ---------------------------------------------------------------------- a worker that dies
def _killing(cmd, kill: str, timeout=600):
    """Run ``cmd`` with the grader-side fault hook: workers grading ``kill`` SIGKILL themselves."""
    from llmcourse.grading.cohort import KILL_ENV

    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, KILL_ENV: kill})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _survived(tmp_path, clean, proc):
    """ada (graded again after her worker died) as in the clean run; bo (his worker killed on
    each try) 0 and one line; the CSV and JSON written."""
    from llmcourse.grading.cohort import WORKER_DIED

    rows = {r["student"]: r for r in json.loads((tmp_path / "rows.json").read_text())}
    assert set(rows) == set(LEARNERS)
    assert _scores([rows["ada"]]) == {"ada": _scores(clean[0])["ada"]} and not rows["ada"]["problems"]
    assert rows["bo"]["score"] == 0 and rows["bo"]["problems"] == [WORKER_DIED]
    csv = (tmp_path / "g.csv").read_text()
    assert f"ada,{CH},{NB},6,6" in csv and f"bo,{CH},{NB},0,6" in csv
    db = tmp_path / "course" / "gradebook.db"
    assert [g for g in _grades(db) if g[0] == "ada"] == [g for g in clean[1] if g[0] == "ada"]
    return db


@pytest.mark.slow
def test_a_dead_pool_worker_costs_one_learner_not_the_batch(tmp_path, clean):
    subs, course = _batch(tmp_path / "subs"), tmp_path / "course"
    out = ("--json", str(tmp_path / "rows.json"), "--csv", str(tmp_path / "g.csv"))
    # bo's death takes the whole pool down, ada's job (in flight beside it) too: the two are
    # graded again one at a time, ada then passes, bo dies alone a second time
    proc = _killing(_cmd(subs, course, "--jobs", "2", *out), "bo")
    assert "a grading worker died" in proc.stderr
    db = _survived(tmp_path, clean, proc)
    again = _run(_cmd(subs, course, "--jobs", "2", *out))  # the rerun grades only the dead one
    assert _said(again.stderr, "kept") == {"ada"} and _said(again.stderr, "graded") == {"bo"}
    assert _scores(json.loads((tmp_path / "rows.json").read_text())) == _scores(clean[0])
    assert _grades(db) == clean[1]


@pytest.mark.slow
@pytest.mark.full  # make test holds the pool's dead-worker test
def test_a_dead_dask_worker_costs_one_learner_not_the_batch(tmp_path, clean):
    pytest.importorskip("distributed")
    subs, course = _batch(tmp_path / "subs"), tmp_path / "course"
    out = ("--json", str(tmp_path / "rows.json"), "--csv", str(tmp_path / "g.csv"))
    # one task per worker: ada's own death (once) costs her a retry, bo's two deaths cost him
    _survived(tmp_path, clean, _killing(_cmd(subs, course, "--dask", "--jobs", "2", *out), "ada:once,bo"))


# ------------------------------------------------------------------------- real PostgreSQL
def _pg_bin() -> Path | None:
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(d) / "initdb").exists():
            return Path(d)
    found = shutil.which("initdb")
    return Path(os.path.realpath(found)).parent if found else None


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL cluster on a free port; yields its URL; stopped at the end."""
    pytest.importorskip("psycopg")
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql; .ci/run does)")
    tmp = Path(tempfile.mkdtemp(prefix="llmc-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        import pwd

        user = next((u for u in ("postgres", "nobody") if _has_user(u)), None)
        if user is None or not shutil.which("runuser"):
            pytest.skip("running as root without a postgres/nobody user to run PostgreSQL as")
        pw = pwd.getpwnam(user)
        os.chown(tmp, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", user, "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = tmp / "data"
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "llmc", "--auth=trust",
                    "-E", "UTF8", "--no-sync"], check=True, capture_output=True, timeout=120)
    subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(tmp / "log"), "-w",
                    "-o", f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1 -c fsync=off", "start"],
                   check=True, capture_output=True, timeout=120)
    try:
        import psycopg

        with psycopg.connect(f"postgresql://llmc@127.0.0.1:{port}/postgres", autocommit=True) as c:
            c.execute("CREATE DATABASE gradebook")
        yield f"postgresql://llmc@127.0.0.1:{port}/gradebook"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(tmp, ignore_errors=True)


def _has_user(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


@pytest.mark.slow
def test_a_learners_record_is_all_or_nothing_on_postgres(postgres, tmp_path):
    from sqlalchemy import text

    from llmcourse.grading.cohort import Result, _register
    from llmcourse.grading.grade import Options, _last_line
    from llmcourse.grading.store import Store

    url = postgres.replace("/gradebook", "/postgres")  # a database of its own for this test
    store = Store(url, tmp_path)
    try:
        _register(store, ROOT, Options(course_dir=tmp_path), CH, _last_line)
        grades = {NB: {"grades": {g: (2.0, 2.0, None, False) for g in
                                  ("test_softmax", "test_log_softmax", "test_cross_entropy")}}}
        old = Result("ada", CH, "a" * 64, [{"student": "ada", "score": 6}], grades)
        store.commit(old)
        broken = Result("ada", CH, "b" * 64, [{"student": "ada", "score": object()}],  # fails late
                        {NB: {"grades": {"test_softmax": (0.0, 0.0, None, False)}}})
        with pytest.raises(TypeError):
            store.commit(broken)
        assert store.digest_of("ada", CH) == "a" * 64
        with store.engine.connect() as c:
            got = sorted(c.execute(text(_grades_sql())).all())
        assert [(r[2], r[4]) for r in got] == [("test_cross_entropy", 2.0), ("test_log_softmax", 2.0),
                                               ("test_softmax", 2.0)]
        assert store.claim("ada", CH)
        other = Store(url, tmp_path)  # a second grader cannot claim what the first holds
        assert not other.claim("ada", CH)
        store.release("ada", CH)
        assert other.claim("ada", CH)
        other.close()
    finally:
        store.close()


@pytest.mark.slow
def test_two_graders_on_one_postgres_gradebook(postgres, tmp_path, clean):
    subs = _batch(tmp_path / "subs")
    procs = [subprocess.Popen(_cmd(subs, tmp_path / f"course{i}", "--jobs", "1", "--db", postgres,
                                   "--json", str(tmp_path / f"rows{i}.json")),
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    graded = [_said(err, "graded") for _, err in outs]
    assert graded[0] | graded[1] == set(LEARNERS)
    assert not graded[0] & graded[1], graded  # nobody graded twice
    from sqlalchemy import create_engine, text

    engine = create_engine(postgres.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as c:
        got = c.execute(text(_grades_sql())).all()
        names = dict(c.execute(text("select id, name from notebook")).all())
        records = c.execute(text("select student, rows_json from llmcourse_results")).all()
    engine.dispose()
    assert sorted((s, names[n], g, a, m) for s, n, g, a, m in got) == clean[1]
    assert _scores([r for _, rows in records for r in json.loads(rows)]) == _scores(clean[0])

"""Bad input to the grader: one line of reason each, the batch goes on, the gradebook stays
intact, and tampering with the checking gains nothing."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from conftest import (ROOT, filled_student_notebook, grade, llmcourse, load, nbgrader_meta,
                      sandbox_available, save)

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("bad")]
CH, NB = "00-getting-started", "warmup"


def solved():
    return filled_student_notebook(CH, NB)


def with_cell(source: str, at: int = 2) -> dict:
    nb = solved()
    nb["cells"].insert(at, {"cell_type": "code", "id": f"extra{at}", "metadata": {},
                            "execution_count": None, "outputs": [], "source": source})
    return nb


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    ok, why = sandbox_available()
    if not ok:
        pytest.skip(f"no bubblewrap sandbox on this machine: {why}")
    tmp = tmp_path_factory.mktemp("bad")
    subs = tmp / "submissions"
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    threading.Thread(target=lambda: server.accept(), daemon=True).start()

    (subs / "malformed").mkdir(parents=True)
    (subs / "malformed" / f"{NB}.ipynb").write_text('{"cells": [ {"cell_type": "code",, }')
    (subs / "notanotebook").mkdir()
    (subs / "notanotebook" / f"{NB}.ipynb").write_text(json.dumps({"hello": "world"}))
    save(subs / "foreign" / "mine.ipynb", {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5})
    nb = solved()
    nb["cells"] = [c for c in nb["cells"] if nbgrader_meta(c).get("grade_id") != "test_softmax"]
    save(subs / "deletedtest" / f"{NB}.ipynb", nb)
    nb = solved()
    for c in nb["cells"]:
        if nbgrader_meta(c).get("grade_id") == "test_log_softmax":
            c["source"] = "print('all good')"
        if nbgrader_meta(c).get("grade_id") == "test_cross_entropy":
            c["cell_type"] = "markdown"
            c.pop("outputs"), c.pop("execution_count")
    save(subs / "editedtests" / f"{NB}.ipynb", nb)
    nb = solved()
    for c in nb["cells"]:
        if nbgrader_meta(c).get("grade_id") == "log_softmax":
            c["source"] = "while True:\n    pass"
    save(subs / "infiniteloop" / f"{NB}.ipynb", nb)
    save(subs / "memorybomb" / f"{NB}.ipynb", with_cell(
        "def bomb():\n    blocks = []\n    while True:\n        blocks.append(bytearray(4 * 10**8))\nbomb()"))
    save(subs / "hugeoutput" / f"{NB}.ipynb", with_cell("for _ in range(2000):\n    print('x' * 10000)"))
    save(subs / "network" / f"{NB}.ipynb", with_cell(
        f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=3)"))
    save(subs / "kernelkill" / f"{NB}.ipynb", with_cell("import os\nos._exit(1)", at=5))
    # tampering: patch the checker, torch and numpy comparisons, hide tracebacks; wrong answers
    nb = with_cell("import llmcourse, llmcourse.checks as C, torch, numpy\n"
                   "C.check = llmcourse.check = check = lambda *a, **k: True\n"
                   "torch.allclose = numpy.allclose = lambda *a, **k: True\n"
                   "torch.testing.assert_close = lambda *a, **k: None\n"
                   "get_ipython().showtraceback = lambda *a, **k: None")
    for c in nb["cells"]:
        if nbgrader_meta(c).get("solution"):
            c["source"] = c["source"].replace("return ", "return 0.5 * ")
    save(subs / "tamper" / f"{NB}.ipynb", nb)
    nb = solved()  # a forbidden shortcut through a helper
    for c in nb["cells"]:
        if nbgrader_meta(c).get("grade_id") == "softmax":
            c["source"] = ("import torch.nn.functional as G\ndef _h(x, d):\n    return G.softmax(x, d)\n"
                           "def softmax(x, dim=-1):\n    return _h(x, dim)")
    save(subs / "shortcut" / f"{NB}.ipynb", nb)
    save(subs / "good" / f"{NB}.ipynb", solved())
    _hostile(subs, tmp, port)
    before = _fingerprints(subs, tmp)
    proc, rows = grade(subs, tmp / "course", "--timeout", "8", "--memory", "2G", "--no-feedback",
                       "--csv", tmp / "grades.csv", timeout=2400)
    server.close()
    assert proc.returncode == 0, proc.stderr[-3000:]
    time.sleep(1)  # a daemon that outlived its sandbox would strike now
    after = _fingerprints(subs, tmp)
    return {r["student"]: r for r in rows}, proc, tmp, before, after


# ---------------------------------------------------------------------------------------
# Hostile learners (issue 19): each tries to gain points, to read what it must not, or to
# change something outside its sandbox. The token below is built at run time so that only
# a successful write can put it into a file.

TOKEN = "LLMC" + "-PWNED"
DAEMON = "llmc-hostile-daemon"


def _attack_cell(tmp, port) -> str:
    course = tmp / "course"
    targets = [ROOT / "src" / "llmcourse" / "reference" / "basics.py",
               ROOT / "src" / "llmcourse" / "pwned.py", ROOT / "solutions" / CH / f"{NB}.ipynb",
               course / "gradebook.db", course / "submitted" / "good" / CH / f"{NB}.ipynb",
               course / "autograded" / "good" / CH / f"{NB}.ipynb", course / "feedback" / "pwned.html",
               tmp / "submissions" / "good" / f"{NB}.ipynb", tmp / "grades.csv"]
    return f"""
import os, socket, subprocess, sys, glob
tok = "LLMC" + "-PWNED"
report = []
for path in {[str(t) for t in targets]!r}:
    try:
        with open(path, "a") as f:
            f.write(tok)
        report.append("WROTE " + path)
    except Exception as e:
        report.append("blocked " + type(e).__name__)
for path in {[str(ROOT / "solutions" / CH / f"{NB}.ipynb"), str(ROOT / "src" / "llmcourse" / "reference" / "basics.py")]!r}:
    try:
        open(path).read(); report.append("READ " + path)
    except Exception as e:
        report.append("blocked " + type(e).__name__)
try:
    import llmcourse.reference.basics; report.append("IMPORTED reference")
except ImportError:
    report.append("no reference")
report.append("procs %d" % len([p for p in os.listdir('/proc') if p.isdigit()]))
try:
    socket.create_connection(('127.0.0.1', {port}), timeout=2); report.append("CONNECTED")
except OSError as e:
    report.append("no network")
subprocess.Popen([sys.executable, "-c", "import time, sys; sys.argv.append({DAEMON!r}); time.sleep(120); open({str(tmp / 'late.txt')!r}, 'w').write('x')"],
                 start_new_session=True)
try:
    os.symlink("/dev/zero", os.path.join(os.environ.get("LLMCOURSE_JOB_OUT", "/job/out"), "outputs.bin"))
except OSError:
    pass
print(" | ".join(report))
"""


def _hostile(subs, tmp, port) -> None:
    nb = with_cell(_attack_cell(tmp, port))  # the attacker's answers are wrong as well
    for c in nb["cells"]:
        if nbgrader_meta(c).get("solution"):
            c["source"] = c["source"].replace("return ", "return 0.5 * ")
    save(subs / "attacker" / f"{NB}.ipynb", nb)
    save(subs / "killer" / f"{NB}.ipynb", with_cell("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)", at=5))
    nb = solved()  # shortcuts the source does not show: nested, run-time names, unlisted built-ins
    for c in nb["cells"]:
        gid = nbgrader_meta(c).get("grade_id")
        if gid == "softmax":  # reaches aten::_softmax, which only the run-time record sees
            c["source"] = ("import torch.nn.functional as G\nif True:\n    def softmax(x, dim=-1):\n"
                           "        return G.softmin(-x, dim)")
        elif gid == "log_softmax":
            c["source"] = ("import torch\ndef log_softmax(x, dim=-1):\n"
                           "    return getattr(torch, '_log_' + 'softmax')(x, dim, False)")
    save(subs / "hidden" / f"{NB}.ipynb", nb)
    # right answers in the notebook, forged outputs for the grader: fail closed
    save(subs / "forged" / f"{NB}.ipynb", with_cell(
        "import llmcourse.grading.harness as H\n"
        "def _forge(inputs, out, entries, record_ops=True):\n"
        "    import zipfile\n"
        "    with zipfile.ZipFile(out, 'w', zipfile.ZIP_DEFLATED) as z:\n"
        "        z.writestr('__meta__.npy', b'0' * 10**7)\n"
        "H.dump = _forge", at=len(solved()["cells"])))
    big = solved()
    big["cells"][2]["source"] = "x = 1\n" + "#" * 2_000_000
    save(subs / "bigcell" / f"{NB}.ipynb", big)
    (subs / "linked").symlink_to(ROOT / "solutions" / CH)
    (subs / "fifo").mkdir()
    os.mkfifo(subs / "fifo" / f"{NB}.ipynb")
    (subs / "devzero").mkdir()
    (subs / "devzero" / f"{NB}.ipynb").symlink_to("/dev/zero")
    bad = os.fsencode(subs) + b"/n\xffme"
    os.makedirs(bad)
    with open(bad + b"/" + NB.encode() + b".ipynb", "w") as f:
        f.write(json.dumps(solved()))


def _fingerprints(subs, tmp) -> dict:
    """What no sandbox may change: the course's own files and every hand-in."""
    paths = [ROOT / "src" / "llmcourse" / "reference" / "basics.py", ROOT / "solutions" / CH / f"{NB}.ipynb",
             ROOT / "chapters" / CH / f"{NB}.ipynb"]
    for folder, _dirs, files in os.walk(subs):  # links are not followed
        paths += [Path(folder) / f for f in sorted(files)
                  if (Path(folder) / f).is_file() and not (Path(folder) / f).is_symlink()]
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def _token_files(*folders) -> list[str]:
    hits = []
    for folder in folders:
        for p in Path(folder).rglob("*"):
            if p.is_file() and not p.is_symlink() and "attacker" not in p.parts:
                try:
                    if TOKEN.encode() in p.read_bytes():
                        hits.append(str(p))
                except OSError:
                    pass
    return hits


def notes(row) -> str:
    return " | ".join(row["problems"] + [c["reason"] for c in row["cells"]])


def test_malformed_and_foreign_notebooks_get_one_line(batch):
    rows, proc, *_ = batch
    assert rows["malformed"]["score"] == 0
    assert "not valid notebook JSON" in notes(rows["malformed"])
    assert "not a notebook" in notes(rows["notanotebook"])
    assert "not a notebook of this course" in notes(rows["foreign"])
    for key in ("malformed", "notanotebook", "foreign"):
        assert all("\n" not in p for p in rows[key]["problems"])
    assert "Traceback" not in proc.stdout


def test_deleted_and_edited_tests_are_restored(batch):
    rows, *_ = batch
    assert "'test_softmax' was deleted; restored" in notes(rows["deletedtest"])
    assert rows["deletedtest"]["score"] == rows["deletedtest"]["max_score"]
    assert "'test_log_softmax' was edited; restored" in notes(rows["editedtests"])
    assert rows["editedtests"]["score"] == rows["editedtests"]["max_score"]


def test_infinite_loop_memory_bomb_huge_output_kernel_death(batch):
    rows, _, tmp, *_ = batch
    loop = {c["grade_id"]: c["points"] for c in rows["infiniteloop"]["cells"]}
    assert loop["test_log_softmax"] == 0 and loop["test_softmax"] == 2  # the rest still graded
    # the bomb hits the kernel's memory limit (MemoryError), not the machine's memory
    assert "memorybomb" in rows
    out = tmp / "course" / "autograded" / "memorybomb" / CH / f"{NB}.ipynb"
    cell = next(c for c in load(out)["cells"] if c.get("id") == "extra2")
    assert [o["ename"] for o in cell["outputs"] if o["output_type"] == "error"] == ["MemoryError"]
    assert rows["hugeoutput"]["score"] == rows["hugeoutput"]["max_score"]
    assert rows["kernelkill"]["score"] < rows["kernelkill"]["max_score"]
    assert rows["good"]["score"] == rows["good"]["max_score"]  # the batch went on


def test_no_network_for_the_kernel(batch):
    _, _, tmp, *_ = batch
    out = tmp / "course" / "autograded" / "network" / CH / f"{NB}.ipynb"
    cell = next(c for c in load(out)["cells"] if c.get("id") == "extra2")
    errors = [o for o in cell["outputs"] if o["output_type"] == "error"]
    assert errors and errors[0]["ename"] in ("PermissionError", "OSError", "ConnectionRefusedError")


def test_huge_output_is_truncated(batch):
    _, _, tmp, *_ = batch
    out = tmp / "course" / "autograded" / "hugeoutput" / CH / f"{NB}.ipynb"
    assert out.stat().st_size < 2_000_000


def test_tampering_gains_nothing(batch):
    rows, *_ = batch
    assert rows["tamper"]["score"] == 0, notes(rows["tamper"])
    assert "hidden case" in notes(rows["tamper"])
    assert rows["shortcut"]["score"] == rows["shortcut"]["max_score"] - 2
    assert "forbidden shortcut: `torch.nn.functional.softmax`" in notes(rows["shortcut"])


def test_gradebook_and_csv_intact(batch):
    rows, _, tmp, *_ = batch
    db = sqlite3.connect(tmp / "course" / "gradebook.db")
    assert db.execute("pragma integrity_check").fetchone()[0] == "ok"
    csv = (tmp / "grades.csv").read_text()
    assert csv.splitlines()[0].startswith("student,assignment,notebook,score,max_score")
    assert "good,00-getting-started,warmup,6,6" in csv


@pytest.mark.parametrize("args,message", [
    (["grade", "no/such/path"], "no such file or folder"),
    (["grade", "README.md"], "is not a notebook"),
    (["grade", "chapters", "--memory", "lots"], "not a memory size"),
    (["grade", "chapters/00-getting-started", "--assignment", "99-nope"], "unknown chapter"),
    (["grade", "chapters/00-getting-started", "--json", "no/dir/out.json"], "cannot write"),
    (["check", "no/such.ipynb"], "no such notebook"),
])
def test_cli_bad_input_is_one_line(args, message):
    proc = llmcourse(*args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr


def test_check_command_on_solution_and_stub(tmp_path):
    good = save(tmp_path / "good" / f"{NB}.ipynb", solved())
    proc = llmcourse("check", good)
    assert proc.returncode == 0 and "3/3 exercises pass" in proc.stdout, proc.stdout + proc.stderr
    proc = llmcourse("check", ROOT / "chapters" / CH / f"{NB}.ipynb")
    assert proc.returncode == 1 and "not implemented yet" in proc.stdout


# ---------------------------------------------------------------------------------------
# Issue 19: the hostile learners


def test_hostile_learners_gain_nothing(batch):
    rows, *_ = batch
    assert rows["good"]["score"] == rows["good"]["max_score"] == 6  # the honest learner
    assert rows["attacker"]["score"] == 0, notes(rows["attacker"])
    assert rows["killer"]["score"] == 0, notes(rows["killer"])
    assert rows["forged"]["score"] == 0, notes(rows["forged"])
    assert "unreadable outputs" in notes(rows["forged"])
    hidden = {c["grade_id"]: c for c in rows["hidden"]["cells"]}
    assert hidden["test_softmax"]["points"] == 0
    assert "reached at run time: `aten::_softmax`" in hidden["test_softmax"]["reason"], hidden
    assert hidden["test_log_softmax"]["points"] == 0
    assert "made at run time" in hidden["test_log_softmax"]["reason"], hidden
    # cross_entropy is written honestly but calls the learner's log_softmax, so as run it
    # reaches PyTorch's log-softmax too (forbidden there as well): no points, and it says why.
    assert hidden["test_cross_entropy"]["points"] == 0
    assert "log_softmax" in hidden["test_cross_entropy"]["reason"], hidden


def test_hostile_files_are_one_line_each(batch):
    rows, proc, tmp, *_ = batch
    text = json.dumps(rows)
    assert "cell 2 is larger than" in notes(rows["bigcell"]) and rows["bigcell"]["score"] == 0
    assert "symbolic link" in notes(rows["linked"]) and rows["linked"]["score"] == 0
    assert "not a regular file" in notes(rows["fifo"]) and "symbolic link" in notes(rows["devzero"])
    assert "is not usable" in text
    csv = (tmp / "grades.csv").read_text(encoding="utf-8")
    assert "good,00-getting-started,warmup,6,6" in csv and "attacker" in csv and "fifo" in csv


def test_the_sandbox_holds(batch):
    rows, _, tmp, before, after = batch
    assert before == after, [k for k in before if before[k] != after.get(k)]
    assert not (ROOT / "src" / "llmcourse" / "pwned.py").exists()
    assert _token_files(tmp / "course", tmp / "submissions", ROOT / "solutions" / CH) == []
    out = tmp / "course" / "autograded" / "attacker" / CH / f"{NB}.ipynb"
    cell = next(c for c in load(out)["cells"] if c.get("id") == "extra2")
    said = "".join("".join(o.get("text", "")) for o in cell["outputs"])
    assert "no reference" in said and "no network" in said and "procs" in said, said
    for word in ("WROTE", "READ ", "IMPORTED", "CONNECTED"):
        assert word not in said, said
    assert int(said.split("procs ")[1].split()[0]) < 10  # only the sandbox's own processes
    db = sqlite3.connect(tmp / "course" / "gradebook.db")
    assert db.execute("pragma integrity_check").fetchone()[0] == "ok"


def test_nothing_outlives_the_sandbox(batch):
    *_, tmp, _before, _after = batch
    alive = []
    for pid in os.listdir("/proc"):
        try:
            cmd = (Path("/proc") / pid / "cmdline").read_bytes()
        except OSError:
            continue
        if DAEMON.encode() in cmd:
            alive.append(pid)
    assert alive == []
    assert not (tmp / "late.txt").exists()


def test_fail_closed_in_the_gradebook(batch):
    """The gradebook's own score (what nbgrader exports) is 0 wherever verification failed."""
    rows, _, tmp, *_ = batch
    db = sqlite3.connect(tmp / "course" / "gradebook.db")
    got = dict(db.execute(
        "select s.student_id, sum(coalesce(g.manual_score, g.auto_score, 0)) from grade g "
        "join submitted_notebook n on g.notebook_id = n.id join submitted_assignment s "
        "on n.assignment_id = s.id group by s.student_id"))
    for who in ("attacker", "killer", "forged", "tamper", "good", "hidden"):
        assert got[who] == rows[who]["score"], (who, got[who], rows[who]["score"])

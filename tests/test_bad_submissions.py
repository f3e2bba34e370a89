"""Bad input to the grader: one line of reason each, the batch goes on, the gradebook stays
intact, and tampering with the checking gains nothing."""

from __future__ import annotations

import json
import socket
import sqlite3
import threading

import pytest
from conftest import ROOT, filled_student_notebook, grade, llmcourse, load, nbgrader_meta, save

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
    proc, rows = grade(subs, tmp / "course", "--timeout", "8", "--memory", "2G", "--no-feedback",
                       "--csv", tmp / "grades.csv")
    server.close()
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {r["student"]: r for r in rows}, proc, tmp


def notes(row) -> str:
    return " | ".join(row["problems"] + [c["reason"] for c in row["cells"]])


def test_malformed_and_foreign_notebooks_get_one_line(batch):
    rows, proc, _ = batch
    assert rows["malformed"]["score"] == 0
    assert "not valid notebook JSON" in notes(rows["malformed"])
    assert "not a notebook" in notes(rows["notanotebook"])
    assert "not a notebook of this course" in notes(rows["foreign"])
    for key in ("malformed", "notanotebook", "foreign"):
        assert all("\n" not in p for p in rows[key]["problems"])
    assert "Traceback" not in proc.stdout


def test_deleted_and_edited_tests_are_restored(batch):
    rows, _, _ = batch
    assert "'test_softmax' was deleted; restored" in notes(rows["deletedtest"])
    assert rows["deletedtest"]["score"] == rows["deletedtest"]["max_score"]
    assert "'test_log_softmax' was edited; restored" in notes(rows["editedtests"])
    assert rows["editedtests"]["score"] == rows["editedtests"]["max_score"]


def test_infinite_loop_memory_bomb_huge_output_kernel_death(batch):
    rows, _, tmp = batch
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
    _, _, tmp = batch
    out = tmp / "course" / "autograded" / "network" / CH / f"{NB}.ipynb"
    cell = next(c for c in load(out)["cells"] if c.get("id") == "extra2")
    errors = [o for o in cell["outputs"] if o["output_type"] == "error"]
    assert errors and errors[0]["ename"] in ("PermissionError", "OSError", "ConnectionRefusedError")


def test_huge_output_is_truncated(batch):
    _, _, tmp = batch
    out = tmp / "course" / "autograded" / "hugeoutput" / CH / f"{NB}.ipynb"
    assert out.stat().st_size < 2_000_000


def test_tampering_gains_nothing(batch):
    rows, _, _ = batch
    assert rows["tamper"]["score"] == 0, notes(rows["tamper"])
    assert "hidden case" in notes(rows["tamper"])
    assert rows["shortcut"]["score"] == rows["shortcut"]["max_score"] - 2
    assert "forbidden shortcut: `torch.nn.functional.softmax`" in notes(rows["shortcut"])


def test_gradebook_and_csv_intact(batch):
    rows, _, tmp = batch
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

"""Issue 19 end to end: the learner build carries no reference in a chapter whose specs call
the learner's function their own way (02), and a fork bomb is held by the process limit
also when the grader runs as root."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import filled_student_notebook, grade, nbgrader_meta, sandbox_available, save

pytestmark = [pytest.mark.slow]


def _need_sandbox():
    ok, why = sandbox_available()
    if not ok:
        pytest.skip(f"no bubblewrap sandbox on this machine: {why}")


def _notes(row) -> str:
    return " | ".join(row["problems"] + [c["reason"] for c in row["cells"]])


def _cell(source: str) -> dict:
    return {"cell_type": "code", "id": f"x{abs(hash(source)) % 10**8}", "metadata": {},
            "execution_count": None, "outputs": [], "source": source}


PROBE = ("import importlib\n"
         "for name in ('llmcourse.reference.attention', 'llmcourse.reference'):\n"
         "    try:\n"
         "        m = importlib.import_module(name)\n"
         "        print('LE' + 'AK', name, sorted(vars(m))[:5])\n"
         "    except ImportError as exc:\n"
         "        print('NOREF', name)\n")


def test_chapter_02_learner_build_has_no_reference(tmp_path):
    """sdpa (plain calls) and transformer (02.gpt: the spec's own build) score full marks; a
    learner who imports the reference's attention gets 0 for it, with the reason, and the
    import fails inside the sandbox."""
    _need_sandbox()
    ch = "02-attention"
    subs = tmp_path / "subs"
    for nb in ("sdpa", "transformer"):
        save(subs / "honest" / f"{nb}.ipynb", filled_student_notebook(ch, nb))
    hostile = filled_student_notebook(ch, "sdpa")
    for c in hostile["cells"]:
        if nbgrader_meta(c).get("grade_id") == "scaled_dot_product_attention":
            c["source"] = "from llmcourse.reference.attention import scaled_dot_product_attention"
    hostile["cells"].insert(3, _cell(PROBE))
    save(subs / "hostile" / "sdpa.ipynb", hostile)
    proc, rows = grade(subs, tmp_path / "course", "--assignment", ch)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = {(r["student"], r["notebook"]): r for r in rows}
    for nb in ("sdpa", "transformer"):
        r = got[("honest", nb)]
        assert r["score"] == r["max_score"] > 0, _notes(r)
    r = got[("hostile", "sdpa")]
    sdpa = {c["grade_id"]: c for c in r["cells"]}["test_sdpa"]
    assert sdpa["points"] == 0 and sdpa["reason"], sdpa
    feedback = (tmp_path / "course" / "feedback" / "hostile" / ch / "sdpa.html").read_text()
    assert "NOREF llmcourse.reference.attention" in feedback and "LEAK" not in feedback


BOMB = ("import os, time\n"
        "def bomb():\n"
        "    while True:\n"
        "        try:\n"
        "            os.fork()\n"
        "        except OSError:\n"
        "            time.sleep(0.05)\n"
        "bomb()\n")


def _left_in(folder: str) -> list[str]:
    """Processes whose mounts come from ``folder`` (a sandbox of this test's batch)."""
    left = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if folder in Path(f"/proc/{pid}/mountinfo").read_text():
                left.append(pid)
        except OSError:
            pass
    return left


def test_fork_bomb_is_held_and_the_batch_finishes(tmp_path, monkeypatch):
    """The bomb replaces the first answer: its sandbox hits the process limit (pids cgroup
    and RLIMIT_NPROC of the sandbox's own uid), the cell is stopped at its time limit, the
    bombed exercise gets 0 (the rest of the notebook may still run within the limits), the
    honest learner after it full marks, and no process of the bomb outlives its sandbox."""
    _need_sandbox()
    ch, nb = "00-getting-started", "warmup"
    subs = tmp_path / "subs"
    bomber = filled_student_notebook(ch, nb)
    for c in bomber["cells"]:
        if nbgrader_meta(c).get("grade_id") == "softmax":
            c["source"] = BOMB
    save(subs / "a_bomber" / f"{nb}.ipynb", bomber)
    save(subs / "b_honest" / f"{nb}.ipynb", filled_student_notebook(ch, nb))
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the batch folder (and the sandboxes' binds)
    t0 = time.monotonic()
    proc, rows = grade(subs, tmp_path / "course", "--timeout", "10", "--notebook-timeout", "90",
                       "--no-feedback", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert time.monotonic() - t0 < 500
    got = {r["student"]: r for r in rows}
    bomber = {c["grade_id"]: c["points"] for c in got["a_bomber"]["cells"]}
    assert bomber["test_softmax"] == 0, _notes(got["a_bomber"])  # the bombed exercise
    assert got["a_bomber"]["score"] < got["a_bomber"]["max_score"]
    assert got["b_honest"]["score"] == got["b_honest"]["max_score"] > 0, _notes(got["b_honest"])
    assert (tmp_path / "course-result.json").exists()
    time.sleep(1)
    # nothing of the bomb outlived its sandbox (mountinfo names a bind's path within its
    # file system: match the test folder's own part of it)
    assert _left_in(f"{tmp_path.parent.name}/{tmp_path.name}/") == []


FORKS = ("import os, time\nn = 0\ntry:\n    for _ in range(300):\n        if os.fork() == 0:\n"
         "            time.sleep(2)\n            os._exit(0)\n        n += 1\nexcept OSError:\n    pass\n"
         "print(os.getuid(), n)\nprint(open('/proc/self/uid_map').read().split())\n")


def test_process_limit_holds_in_the_sandbox_without_a_cgroup(tmp_path):
    """RLIMIT_NPROC alone (no pids cgroup) stops a fork flood inside the sandbox, also when
    the grader is root: there the sandbox runs as a real throwaway uid, not as root, and in
    the initial user namespace (none is made, so disabled user namespaces do not matter)."""
    from llmcourse.grading import sandbox

    _need_sandbox()
    script = tmp_path / "forks.py"
    script.write_text(FORKS)
    script.chmod(0o644)
    tmp_path.chmod(0o755)
    limits = sandbox.Limits(nproc=20)
    uid = sandbox.ROOT_MODE_UIDS[0] + 7 if sandbox.root_mode() else None
    tail = sandbox._drop(uid) if uid is not None else [sys.executable]
    cmd = [sandbox.bwrap(), *sandbox._namespaces(), *sandbox._system_binds(),
           *sandbox._parents(["/job/forks.py"]), "--ro-bind", str(script), "/job/forks.py",
           "--die-with-parent", "--new-session", *tail, "/job/forks.py"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                       preexec_fn=sandbox._child_setup(limits, None, uid))
    assert p.returncode == 0, p.stderr[-2000:]
    first, uid_map = p.stdout.splitlines()[:2]
    who, forked = map(int, first.split())
    assert who != 0 and forked <= limits.nproc, p.stdout
    if uid is not None:  # as root: no user namespace at all (works where they are disabled)
        assert eval(uid_map) == ["0", "0", "4294967295"], uid_map

"""The grader's own process treats everything from a hand-in or a sandbox as hostile.

Fast, in-process tests (no kernel): files that are not regular files, sizes, names that are
not UTF-8, archives that inflate, malformed outputs, code that defeats a recursive scan,
shortcuts hidden in nested or run-time code, the learner build and the refusals. The
end-to-end hostile batch is in test_bad_submissions.py."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
from conftest import ROOT, filled_student_notebook, llmcourse, save

from llmcourse.grading import protocol
from llmcourse.grading.submissions import SourceIndex, discover, load_notebook

CH, NB = "00-getting-started", "warmup"
INDEX = SourceIndex(ROOT)


def by_student(subs):
    return {s.student: s for s in subs}


# ---------------------------------------------------------------------------------------
# Hand-ins


def test_documented_learner_layout_records_the_learner(tmp_path):
    for who in ("alice", "bob"):
        save(tmp_path / who / CH / f"{NB}.ipynb", filled_student_notebook(CH, NB))
        subs = discover(tmp_path / who, INDEX)
        assert [(s.student, s.assignment, sorted(s.notebooks)) for s in subs] == [(who, CH, [NB])]
    subs = by_student(discover(tmp_path, INDEX))  # the folder of learners still works
    assert set(subs) == {"alice", "bob"}


def test_links_fifos_and_devices_are_not_graded(tmp_path):
    subs_dir = tmp_path / "subs"
    save(subs_dir / "honest" / f"{NB}.ipynb", filled_student_notebook(CH, NB))
    (subs_dir / "linkfolder").symlink_to(ROOT / "solutions" / CH)
    (subs_dir / "linknb").mkdir()
    (subs_dir / "linknb" / f"{NB}.ipynb").symlink_to(ROOT / "solutions" / CH / f"{NB}.ipynb")
    (subs_dir / "devzero").mkdir()
    (subs_dir / "devzero" / f"{NB}.ipynb").symlink_to("/dev/zero")
    (subs_dir / "fifo").mkdir()
    os.mkfifo(subs_dir / "fifo" / f"{NB}.ipynb")
    t0 = time.monotonic()
    subs = by_student(discover(subs_dir, INDEX))
    assert time.monotonic() - t0 < 20  # nothing blocked on the FIFO or read /dev/zero
    assert sorted(subs["honest"].notebooks) == [NB]
    for who in ("linkfolder", "linknb", "devzero", "fifo"):
        assert not subs[who].notebooks, who
        assert any("symbolic link" in p or "not a regular file" in p for p in subs[who].problems), \
            (who, subs[who].problems)
    # the learner's own folder given directly, when it is a link, is not followed either
    nb, problem = load_notebook(subs_dir / "devzero" / f"{NB}.ipynb")
    assert nb is None and "not a regular file" in problem


def test_size_caps_and_non_utf8_names(tmp_path):
    nb = filled_student_notebook(CH, NB)
    nb["cells"][2]["source"] = "x = 1\n" + "#" * (protocol.MAX_CELL_CHARS + 10)
    save(tmp_path / "bigcell" / f"{NB}.ipynb", nb)
    big = tmp_path / "huge" / f"{NB}.ipynb"
    big.parent.mkdir()
    with open(big, "wb") as f:
        f.truncate(protocol.MAX_NOTEBOOK_BYTES + 1)  # sparse: instant
    for folder in (b"l\xffarner", b"carol"):
        bad = os.fsencode(tmp_path) + b"/" + folder
        os.makedirs(bad)
        with open(bad + b"/" + b"w\xfe.ipynb", "wb") as f:
            f.write(json.dumps(filled_student_notebook(CH, NB)).encode())
    subs = discover(tmp_path, INDEX)
    lines = [p for s in subs for p in s.problems]
    assert any("cell 2 is larger than" in p for p in lines), lines
    assert any("larger than 50 MB" in p for p in lines), lines
    assert any("is not usable" in p for p in lines), lines
    assert sorted(by_student(subs)["carol"].notebooks) == [NB]  # a bad file name is no reason to fail
    for s in subs:  # every line can be written as UTF-8
        for text in [s.student] + s.problems:
            protocol.printable(text).encode("utf-8")
    from llmcourse.grading.grade import Row, rows_to_csv, rows_to_json

    rows = [Row(s.student, s.assignment, "-", 0, 0, problems=s.problems) for s in subs]
    rows.append(Row("x", "y", "n\udcff", 0, 0, problems=["f\udcfe.ipynb: bad\nline"]))
    csv, js = rows_to_csv(rows), rows_to_json(rows)
    csv.encode("utf-8"), js.encode("utf-8")
    assert "\\udcfe" in csv and "bad line" in csv


# ---------------------------------------------------------------------------------------
# Files from the sandbox


def _valid() -> bytes:
    buf = io.BytesIO()
    protocol.save(buf, {"a": np.arange(6.0).reshape(2, 3), "s": np.array(3.5)}, {"k": [1, 2]})
    return buf.getvalue()


def test_array_files_round_trip_and_refuse_archives_and_lies(tmp_path):
    arrays, meta = protocol.loads(_valid())
    assert arrays["a"].shape == (2, 3) and arrays["s"].shape == () and meta == {"k": [1, 2]}
    npz = io.BytesIO()
    np.savez_compressed(npz, a=np.zeros(10**6))
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("x", b"\0" * 10**7)
    data = _valid()
    n = len(protocol.MAGIC) + 8
    header = json.loads(data[n:n + int.from_bytes(data[len(protocol.MAGIC):n], "little")])
    lies = []
    for change in ({"dtype": "|O"}, {"shape": [10**9]}, {"offset": 10**9}, {"shape": [-1]}):
        h = json.loads(json.dumps(header))
        h["arrays"][0].update(change)
        raw = json.dumps(h).encode()
        lies.append(protocol.MAGIC + len(raw).to_bytes(8, "little") + raw + b"\0" * 64)
    huge_header = protocol.MAGIC + (2**40).to_bytes(8, "little") + b"{}"
    for bad in [npz.getvalue(), zipped.getvalue(), b"", b"garbage", data[:-5], huge_header, *lies]:
        with pytest.raises(protocol.ProtocolError):
            protocol.loads(bad)
    with pytest.raises(protocol.ProtocolError):
        protocol.loads(data, cap=10)
    link = tmp_path / "out.bin"
    link.symlink_to("/dev/zero")
    with pytest.raises(protocol.ProtocolError, match="not a regular file"):
        protocol.load(link)


def test_judge_fails_closed_on_any_output_file(tmp_path):
    from llmcourse.grading.verify import judge

    expected = ({}, {"00.softmax": {"cases": [{"label": "c", "rtol": 0, "atol": 0, "expected":
                                                [["output", "torch.float32", True]], "mistakes": []}],
                                    "forbid": [], "entry": "softmax"}})
    path = tmp_path / "out.bin"
    metas = [{"00.softmax": [{"items": [["output", "torch.float32", True]]}]},
             {"00.softmax": [{"items": "nope"}]}, {"00.softmax": "x"}, [], {"00.softmax": [7]},
             {"00.softmax": [{"items": [[1, 2, 3]]}]}, {"__ops__": 5}]
    arrays = [{}, {"00.softmax:0:0": np.array(["text"])}, {"00.softmax:0:0": np.zeros((2, 2))}]
    for meta in metas:
        for arr in arrays:
            protocol.save(path, arr, meta)
            v = judge(expected, str(path), ["00.softmax"])["00.softmax"]
            assert not v.ok
    path.write_bytes(b"PK\x03\x04 not an archive we read")
    assert not judge(expected, str(path), ["00.softmax"])["00.softmax"].ok
    path.unlink()
    assert "never reached" in judge(expected, str(path), ["00.softmax"])["00.softmax"].message


# ---------------------------------------------------------------------------------------
# The shortcut scan (static) and the run-time operator record


RULES = [["torch.nn.functional.softmax", "build it from exp", []], [".softmax", "no method", []],
         ["torch.softmax", "no", []], ["llmcourse.reference", "no reference", []]]


def scan_one(src: str, entry: str = "softmax") -> list[str]:
    from llmcourse.grading.scan import scan

    return scan({"00.softmax": (entry, RULES)}, [("cell 'softmax'", src)])["00.softmax"]


@pytest.mark.parametrize("src", [
    "import torch\nif True:\n    def softmax(x, dim=-1):\n        return torch.softmax(x, dim)",
    "import torch\ntry:\n    def softmax(x, dim=-1):\n        return torch.softmax(x, dim)\nexcept Exception:\n    pass",
    "def softmax(x, dim=-1):\n    m = __import__('llmcourse.ref' + 'erence.basics', fromlist=['x'])\n    return m.softmax(x, dim)",
    "import sys\ndef softmax(x, dim=-1):\n    return sys.modules['llmcourse.reference.basics'].softmax(x, dim)",
    "import importlib\ndef softmax(x, dim=-1):\n    return getattr(importlib, 'import_module')('torch').softmax(x, dim)",
    "import pickle\ndef softmax(x, dim=-1):\n    return pickle.loads(b'')(x)",
    "import torch\ndef softmax(x, dim=-1):\n    return getattr(torch, 'soft' + 'max')(x, dim)",
    "def softmax(x, dim=-1):\n    return eval('x.softmax(dim)')",
    "def softmax(x, dim=-1):\n    src = open('/work/main/solutions/00-getting-started/warmup.ipynb').read()\n    return x",
    f"exec(__import__('base64').b64decode({base64.b64encode(b'def softmax(x, dim=-1): return x.softmax(dim)')!r}))",
])
def test_scan_finds_nested_and_dynamic_shortcuts(src):
    found = scan_one(src)
    assert found and ("forbidden shortcut" in found[0] or "not defined" in found[0]), found


def test_scan_of_hostile_code_is_bounded():
    deep = "def softmax(x, dim=-1):\n    return " + "-" * 600_000 + "x\n"
    t0 = time.monotonic()
    found = scan_one(deep)
    assert time.monotonic() - t0 < 120 and found  # one line, never a crash of the grader


def test_scan_has_no_false_positives_on_the_solutions():
    from llmcourse.checks import get
    from llmcourse.checks.forbidden import violations_for
    from llmcourse.grading.submissions import _nbg, _text

    checked = 0
    for (chapter, name), src in INDEX.notebooks.items():
        if not (ROOT / "chapters" / chapter / f"{name}.ipynb").exists():
            continue
        nb = filled_student_notebook(chapter, name)
        cells = [(f"cell {i}", _text(c)) for i, c in enumerate(nb["cells"])
                 if c.get("cell_type") == "code" and not _nbg(c).get("locked")]
        for gc in src.grade_cells.values():
            for exid, entry in gc.exercises.items():
                assert violations_for(entry, get(exid).rules, cells) == [], exid
                checked += 1
    assert checked > 20


def test_runtime_record_catches_builtins_the_rules_do_not_list():
    import torch
    import torch.nn.functional as F

    from llmcourse.grading.opsmode import forbidden_ops, recorder

    x = torch.randn(3, 5)
    with recorder() as r:
        F.softmin(-x, -1)
    assert forbidden_ops(r.names, RULES)
    with recorder() as r:
        torch._log_softmax(x, -1, False)
    assert forbidden_ops(r.names, [["torch.nn.functional.log_softmax", "no", []]])
    with recorder() as r:
        e = (x - x.max(-1, keepdim=True).values).exp()
        e / e.sum(-1, keepdim=True)
    assert forbidden_ops(r.names, RULES) == []


# ---------------------------------------------------------------------------------------
# The learner build


def test_learner_build_lacks_reference_and_keeps_public_checks(tmp_path):
    """Chapter 00's learner build: ``import llmcourse.reference`` fails, the public checks
    pass on the reference answers, fail on the stubs and name each cataloged mistake."""
    from llmcourse.checks import all_exercises
    from llmcourse.grading.learner import learner_build, pristine_copy
    from llmcourse.grading.verify import make_public

    pristine, digest = pristine_copy(tmp_path / "pristine")
    assert len(digest) == 64
    ids = [e.id for e in all_exercises("00")]
    make_public(str(tmp_path / "public"), ids)
    info = json.loads((tmp_path / "public" / "build.json").read_text())
    build = learner_build(pristine, tmp_path / "lib", "00", tmp_path / "public", info)
    assert not build.full and build.reference == []
    pkg = tmp_path / "lib" / "llmcourse"
    assert not (pkg / "reference").exists() and not (pkg / "grading" / "verify.py").exists()
    code = """
import importlib, torch
try:
    import llmcourse.reference
    print("REFERENCE IMPORTED")
except ImportError:
    print("no reference")
from llmcourse import check
from llmcourse.checks import get, run
import llmcourse.checks.core as core
def softmax(x, dim=-1):
    e = (x - x.amax(dim, keepdim=True)).exp()
    return e / e.sum(dim, keepdim=True)
def stub(x, dim=-1):
    raise NotImplementedError()
print(run(get("00.softmax"), softmax))
print(run(get("00.softmax"), stub))
for m in get("00.softmax").mistakes:
    r = run(get("00.softmax"), m.impl)
    print("MISTAKE", m.name, "->", r.diagnosis.name if r.diagnosis else None, bool(r))
"""
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(tmp_path / "lib"), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    out = p.stdout
    assert "no reference" in out and "REFERENCE IMPORTED" not in out
    assert "PASS 00.softmax" in out and "TODO 00.softmax" in out
    mistakes = [line.split() for line in out.splitlines() if line.startswith("MISTAKE")]
    assert mistakes and all(line[-1] == "False" for line in mistakes)
    assert all(" ".join(line[1:line.index("->")]) == " ".join(line[line.index("->") + 1:-1])
               for line in mistakes), mistakes


# ---------------------------------------------------------------------------------------
# Refusals


def test_no_sandbox_means_refusal_in_one_line(tmp_path):
    save(tmp_path / "s" / "alice" / f"{NB}.ipynb", filled_student_notebook(CH, NB))
    env = dict(os.environ, LLMCOURSE_BWRAP="/nonexistent/bwrap")
    p = subprocess.run([sys.executable, "-m", "llmcourse.cli", "grade", str(tmp_path / "s"),
                        "--course-dir", str(tmp_path / "course")], capture_output=True, text=True,
                       env=env, cwd=ROOT, timeout=300)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1, p.stderr
    assert "no sandbox available" in lines[0] and "--unsafe-no-sandbox" in lines[0]


DISABLED_USERNS = """
import sys
from llmcourse.grading import sandbox
sandbox.root_mode = lambda: False  # the unprivileged grader's path (uid 0 only in this namespace)
from llmcourse.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_where_user_namespaces_are_disabled_an_unprivileged_grader_refuses(tmp_path):
    """In a user namespace whose limit on nested user namespaces is 0 (as on hosts with
    user.max_user_namespaces = 0), bwrap cannot make the sandbox's user namespace: the
    grader says so in one line and grades nothing, instead of running the kernel bare."""
    import shutil

    unshare = shutil.which("unshare")
    if unshare is None or subprocess.run([unshare, "--user", "--map-root-user", "true"],
                                         capture_output=True).returncode != 0:
        pytest.skip("unshare --user is not available here")
    save(tmp_path / "s" / "alice" / f"{NB}.ipynb", filled_student_notebook(CH, NB))
    driver = tmp_path / "driver.py"
    driver.write_text(DISABLED_USERNS)
    script = ('echo 0 > /proc/sys/user/max_user_namespaces && ! unshare --user true 2>/dev/null '
              '&& exec "$0" "$@"')
    p = subprocess.run([unshare, "--user", "--map-root-user", "sh", "-c", script, sys.executable,
                        str(driver), "grade", str(tmp_path / "s"), "--course-dir",
                        str(tmp_path / "course")], capture_output=True, text=True, cwd=ROOT,
                       timeout=300)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1, (p.returncode, p.stderr[-2000:])
    assert "no sandbox available" in lines[0] and "user namespace" in lines[0], lines[0]
    assert "--unsafe-no-sandbox" in lines[0]
    assert not (tmp_path / "course" / "feedback").exists()


def test_plain_nbgrader_autograde_refuses():
    from nbformat.v4 import new_notebook

    from llmcourse.grading.execute import REFUSE, SafeExecute

    with pytest.raises(RuntimeError, match="llmcourse grade"):
        SafeExecute().preprocess(new_notebook(), {})
    assert "llmcourse grade" in REFUSE and "\n" not in REFUSE


def test_sandbox_probe_here():
    """Where bubblewrap is installed, it must work (else every grading test would skip)."""
    from llmcourse.grading.sandbox import bwrap, probe

    if bwrap() is None:
        pytest.skip("bubblewrap is not installed here (make venv installs it where apt works)")
    ok, why = probe()
    assert ok, why

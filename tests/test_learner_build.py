"""The learner build of every notebook carries no reference answer (issue 19).

For each chapter the grader's learner builds are made exactly as ``llmcourse grade`` makes
them (:func:`learner_build` from a pristine copy and the case maker's public data). The
answers are found independently of the build: every reference function that an exercise's
``reference`` names in its source or reaches when it runs (traced with ``sys.setprofile``).
None of them may be defined in, or have a line of its body in, the build of a notebook that
grades that exercise, and importing it there must fail. Where a spec calls the learner's
function its own way, that way is in ``checks/calls.py`` (so no chapter needs the spec
modules or the whole reference any more)."""

from __future__ import annotations

import ast
import inspect
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
from conftest import ROOT

import llmcourse.reference as reference_pkg
from llmcourse.checks import all_exercises
from llmcourse.checks.runner import _clone
from llmcourse.grading.learner import (calls_needs, learner_build, notebook_reference_imports,
                                       pristine_copy)
from llmcourse.grading.learner_specs import glue, spec_kind

REF_DIR = Path(reference_pkg.__file__).parent
CHAPTERS = sorted({e.id[:2] for e in all_exercises()})
# Notebooks whose OWN lab cells run the reference answer of an exercise they grade: the
# build must carry it, so the learner's kernel can reach it (only the shortcut scan and the
# run-time operator record stand in the way). Fixing one means the lab cells use the
# learner's function (or a lab-only helper that is not the answer); then remove it here.
KNOWN_LAB_ANSWERS = {
    # the lab loads the course's tiny GPT (llmcourse.pretrained), whose blocks call layer_norm,
    # the final normalisation of 10.logit_lens; the lab hands the learner that model's own
    # final LayerNorm module (gpt.transformer.ln_f) anyway, so the build cannot hide it
    ("10", "inside"): {("transformer", "layer_norm")},
}


def _named(ex) -> set[tuple[str, str]]:
    """(module, name) of the reference functions ``ex.reference`` names in its source."""
    fn = type(ex).reference
    if isinstance(fn, type):  # an nn.Module answer: the reference class itself
        mod = fn.__module__
        return {(mod.rsplit(".", 1)[1], fn.__qualname__)} if mod.startswith("llmcourse.reference.") else set()
    mod_globals = sys.modules[fn.__module__].__dict__
    tree = ast.parse(inspect.cleandoc("\n" + inspect.getsource(fn)))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            obj = mod_globals.get(node.value.id)
            if isinstance(obj, types.ModuleType) and obj.__name__.startswith("llmcourse.reference."):
                out.add((obj.__name__.rsplit(".", 1)[1], node.attr))
        elif isinstance(node, ast.Name):
            obj = mod_globals.get(node.id)
            mod = getattr(obj, "__module__", "") or ""
            if callable(obj) and mod.startswith("llmcourse.reference."):
                out.add((mod.rsplit(".", 1)[1], obj.__qualname__))
    return out


def _reached(ex) -> set[tuple[str, str]]:
    """(module, qualname) of the reference code run by ``ex.reference`` on a public case."""
    ref = type(ex).reference
    target, seen, depth = getattr(ref, "__code__", None), set(), [0 if hasattr(ref, "__code__") else 1]

    def prof(frame, event, arg):  # a class answer: everything its check runs
        if frame.f_code is target:
            depth[0] += 1 if event == "call" else -1 if event == "return" else 0
        elif event == "call" and depth[0] > 0 and frame.f_code.co_filename.startswith(str(REF_DIR)):
            seen.add((Path(frame.f_code.co_filename).stem, frame.f_code.co_qualname))

    sys.setprofile(prof)
    try:
        for case in ex.cases(0, False)[:1]:
            try:
                ex.expected(_clone(case))
            except Exception:
                pass
    finally:
        sys.setprofile(None)
    return {(m, q) for m, q in seen if "<" not in q}


def _infrastructure() -> set[tuple[str, str]]:
    """What checks/calls.py imports from the reference (the glue's objects, not answers)."""
    calls_py = ROOT / "src" / "llmcourse" / "checks" / "calls.py"
    names = {n.name for n in ast.parse(calls_py.read_text()).body if isinstance(n, ast.FunctionDef)}
    return calls_needs(calls_py, names)


def _defined(pkg: Path) -> dict[tuple[str, str], str]:
    """(module, qualname) -> source of every top-level def/class and method in the build's
    reference."""
    out = {}
    for path in sorted((pkg / "reference").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                out[(path.stem, node.name)] = ast.get_source_segment(path.read_text(), node)
                for sub in getattr(node, "body", []):
                    if isinstance(sub, ast.FunctionDef):
                        out[(path.stem, f"{node.name}.{sub.name}")] = ""
    return out


def _body_lines(module: str, qualname: str) -> list[str]:
    """Distinctive code lines of a reference function (no docstring, comments, short lines)."""
    obj = sys.modules.get(f"llmcourse.reference.{module}") or __import__(
        f"llmcourse.reference.{module}", fromlist=["_"])
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return []
    try:
        src = inspect.getsource(obj)
    except (TypeError, OSError, IndexError):
        return []
    doc = inspect.getdoc(obj) or ""
    lines = [ln.strip() for ln in src.splitlines()[1:]]
    return [ln for ln in lines if len(ln) >= 40 and not ln.startswith(("#", '"', "'", "def "))
            and ln not in doc]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return pristine_copy(tmp_path_factory.mktemp("pristine"))[0]


def test_every_custom_call_ships_in_the_learner_build():
    """No exercise needs its spec module in the sandbox: its call/build is core's, the kit's
    or one of checks/calls.py's."""
    for ex in all_exercises():
        glue(ex)  # raises for a call defined anywhere else
        assert spec_kind(ex) is not None, ex.id


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_learner_build_has_no_reference_answer(chapter, pristine, tmp_path):
    from llmcourse.grading.verify import make_public

    folder = next((ROOT / "solutions").glob(f"{chapter}-*"))
    exercises = all_exercises(chapter)
    make_public(str(tmp_path / "public"), [e.id for e in exercises])
    info = json.loads((tmp_path / "public" / "build.json").read_text())
    assert all(v["kind"] is not None for v in info.values()), info
    lab = notebook_reference_imports(folder)
    build = learner_build(pristine, tmp_path / "lib", chapter, tmp_path / "public", info, lab)
    assert not build.full and build.note == ""
    assert set(build.notebooks) == {p.stem for p in folder.glob("*.ipynb")}
    infra = _infrastructure()
    by_id = {e.id: e for e in exercises}
    problems, probes, seen_known = [], [], set()
    for nb, root in [("(default)", tmp_path / "lib")] + sorted(build.notebooks.items()):
        pkg = root / "llmcourse"
        assert not (pkg / "grading" / "verify.py").exists()
        assert not any((pkg / "checks" / f"ch{chapter}").glob("*.py")) or \
            sorted(p.name for p in (pkg / "checks" / f"ch{chapter}").glob("*.py")) == ["__init__.py"]
        graded = sorted(lab.notebooks.get(nb, {}).get("exercises", set()) & set(by_id)) \
            if nb != "(default)" else sorted(by_id)
        answers = set()
        for exid in graded:
            answers |= {(m, q) for m, q in _named(by_id[exid]) | _reached(by_id[exid])}
        answers = {(m, q) for m, q in answers if (m, q.split(".")[0]) not in infra}
        defined = _defined(pkg)
        text = "\n".join(p.read_text() for p in pkg.rglob("*.py"))
        known = KNOWN_LAB_ANSWERS.get((chapter, nb), set())
        for m, q in sorted(answers):
            leaked = [f"defines reference.{m}.{q}"] if (m, q) in defined else [
                f"a line of reference.{m}.{q}: {ln!r}" for ln in _body_lines(m, q) if ln in text]
            if leaked and (m, q.split(".")[0]) in known:
                seen_known.add((m, q.split(".")[0]))
            elif leaked:
                problems.append(f"{nb}: {leaked[0]}")
            elif "." not in q:
                probes.append((root, m, q))
    assert not problems, "\n".join(problems)
    listed = set().union(*[v for (c, _), v in KNOWN_LAB_ANSWERS.items() if c == chapter])
    assert seen_known == listed, f"KNOWN_LAB_ANSWERS is out of date: {sorted(listed - seen_known)}"
    # importing an answer inside a build fails (one interpreter per build)
    by_root: dict[Path, list] = {}
    for root, m, q in probes:
        by_root.setdefault(root, []).append((m, q))
    for root, pairs in by_root.items():
        code = ("import importlib\nfor m, q in %r:\n"
                "    try:\n        getattr(importlib.import_module('llmcourse.reference.' + m), q)\n"
                "        print('IMPORTED', m, q)\n    except (ImportError, AttributeError):\n"
                "        pass\n") % (pairs,)
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                           env={"PATH": os.environ["PATH"], "PYTHONPATH": str(root)}, cwd=root)
        assert p.returncode == 0 and "IMPORTED" not in p.stdout, (root, p.stdout, p.stderr[-500:])


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_learner_build_keeps_what_the_lab_cells_use(chapter, pristine, tmp_path):
    """Every name a notebook's lab cells import from the reference (and every module its
    exercises may import) resolves inside that notebook's build, with what it imports."""
    from llmcourse.grading.learner import WHOLE, _allowed
    from llmcourse.grading.verify import make_public

    folder = next((ROOT / "solutions").glob(f"{chapter}-*"))
    make_public(str(tmp_path / "public"), [e.id for e in all_exercises(chapter)])
    info = json.loads((tmp_path / "public" / "build.json").read_text())
    lab = notebook_reference_imports(folder)
    build = learner_build(pristine, tmp_path / "lib", chapter, tmp_path / "public", info, lab)
    for nb, root in sorted(build.notebooks.items()):
        # the library modules outside the reference its cells import (llmcourse.pretrained
        # imports the reference's GPT and trainer): each must import inside the build
        from llmcourse.grading.learner import _code_cells

        library = sorted({n.module for t in _code_cells(folder / f"{nb}.ipynb") for n in ast.walk(t)
                          if isinstance(n, ast.ImportFrom) and n.module and not n.level
                          and n.module.startswith("llmcourse.")
                          and not n.module.startswith(("llmcourse.reference", "llmcourse.checks"))})
        if library:
            code = "import importlib\nfor m in %r:\n    importlib.import_module(m)\nprint('OK')\n" % (library,)
            p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                               env={"PATH": os.environ["PATH"], "PYTHONPATH": str(root),
                                    "OMP_NUM_THREADS": "1"}, cwd=root)
            assert p.returncode == 0 and "OK" in p.stdout, (nb, library, p.stderr[-1500:])
        needs = set(lab.notebooks[nb]["needs"]) | _allowed(info, lab.notebooks[nb]["exercises"])
        pairs = sorted((m, "" if n == WHOLE else n) for m, n in needs
                       if (REF_DIR / f"{m}.py").exists())
        if not pairs:
            continue
        code = ("import importlib\nfor m, n in %r:\n    mod = importlib.import_module("
                "'llmcourse.reference.' + m)\n    n and getattr(mod, n)\nprint('OK')\n") % (pairs,)
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                           env={"PATH": os.environ["PATH"], "PYTHONPATH": str(root),
                                "OMP_NUM_THREADS": "1"}, cwd=root)
        assert p.returncode == 0 and "OK" in p.stdout, (nb, p.stderr[-1500:])

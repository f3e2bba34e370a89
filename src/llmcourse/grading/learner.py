"""The pristine copy of the course library and the LEARNER BUILD that the sandbox sees.

* :func:`pristine_copy` copies the installed ``llmcourse`` package once per batch, before
  any learner code runs, and checks that the copy hashes like its source. The hidden
  cases' expected outputs (and the learner build's public data) are made from this copy,
  so nothing a kernel could have written - ever - becomes the truth.
* :func:`learner_build` makes, for one chapter, the library the kernel imports: no
  ``solutions/``, no hidden tests, no expected outputs of hidden cases, no instructor
  tooling, and no ``llmcourse.reference`` (``import llmcourse.reference`` fails) except the
  modules the chapter's exercises may use (``Exercise.allow_reference``) and those its
  notebooks' lab cells import (with what they import). Each exercise's
  public cases come precomputed (:mod:`.learner_specs`), so ``check()`` works as usual.

  A chapter with an exercise whose spec defines its own ``call`` (the build cannot call
  the learner's function without the spec module) gets a FULL build instead: its spec
  package and the whole reference, still read-only. :attr:`LearnerBuild.full` says so and
  every row of such a chapter carries the note.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .protocol import safe_name

# Grading modules the sandbox needs (the in-sandbox runner and the verification harness).
SANDBOX_GRADING = {"__init__.py", "protocol.py", "codec.py", "harness.py", "runner.py",
                   "sandbox.py", "opsmode.py"}
INSTRUCTOR_ONLY = ("authoring.py", "book.py", "cli.py", "static")


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if "__pycache__" in p.parts or p.suffix == ".pyc" or not p.is_file() or p.is_symlink():
            continue
        h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def _ignore(_dir, names):
    return [n for n in names if n == "__pycache__" or n.endswith((".pyc", ".egg-info"))]


def pristine_copy(dest: Path) -> tuple[Path, str]:
    """Copy the installed library to ``dest/llmcourse``; return (dest, sha256 of the tree)."""
    import llmcourse

    src = Path(llmcourse.__file__).resolve().parent
    before = tree_digest(src)
    shutil.copytree(src, dest / "llmcourse", ignore=_ignore, symlinks=False)
    digest = tree_digest(dest / "llmcourse")
    if digest != before or tree_digest(src) != before:
        raise RuntimeError("the course library changed while it was copied; grade again")
    return dest, digest


@dataclass
class LearnerBuild:
    root: Path  # put on the sandbox's PYTHONPATH
    full: bool
    reference: list[str]  # reference modules left in the build

    @property
    def note(self) -> str:
        return ("learner build carries the reference (this chapter's checks need their spec "
                "modules)" if self.full else "")


def _reference_deps(ref_dir: Path, names: set[str]) -> set[str]:
    """``names`` plus every reference module they import (transitively)."""
    todo, seen = list(names), set()
    while todo:
        name = todo.pop()
        path = ref_dir / f"{name}.py"
        if name in seen or not path.exists():
            continue
        seen.add(name)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                mod = node.module or ""
                if node.level == 1:
                    todo += [mod.split(".")[0]] if mod else [a.name for a in node.names]
                elif mod.startswith("llmcourse.reference."):
                    todo.append(mod.split(".")[2])
    return seen


def notebook_reference_imports(folder: Path) -> set[str]:
    """Reference modules the chapter's notebooks import in their own (lab) cells."""
    found = set()
    for path in sorted(folder.glob("*.ipynb")):
        for cell in json.loads(path.read_text(encoding="utf-8")).get("cells", []):
            if cell.get("cell_type") != "code":
                continue
            src = cell.get("source", "")
            src = "".join(src) if isinstance(src, list) else src
            try:
                tree = ast.parse("\n".join("" if ln.lstrip().startswith(("%", "!")) else ln
                                           for ln in src.splitlines()))
            except SyntaxError:
                continue
            for node in ast.walk(tree):
                names = []
                if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                elif isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                    names = [node.value]
                for n in names:
                    if n.startswith("llmcourse.reference.") and n.count(".") >= 2:
                        found.add(n.split(".")[2])
    return found


def learner_build(pristine: Path, dest: Path, chapter: str, public_dir: Path,
                  info: dict[str, dict], lab_modules: set[str] = frozenset()) -> LearnerBuild:
    """Make ``dest/llmcourse`` for chapter ``chapter`` (``NN``) from the pristine copy.

    ``lab_modules``: reference modules the chapter's notebooks import outside the answers."""
    pkg = dest / "llmcourse"
    shutil.copytree(pristine / "llmcourse", pkg, ignore=_ignore, symlinks=False)
    for name in INSTRUCTOR_ONLY:
        target = pkg / name
        shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    for p in (pkg / "grading").iterdir():
        if p.name not in SANDBOX_GRADING:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    full = any(v.get("kind") is None for v in info.values())
    # The project's own tests grade "mistake packs" whose answers call the catalog's
    # implementations inside the notebook: they need the spec modules (never set this for
    # real submissions).
    full = full or os.environ.get("LLMCOURSE_FULL_LEARNER_BUILD", "") not in ("", "0")
    checks = pkg / "checks"
    for p in checks.iterdir():
        is_chapter = p.name.startswith("ch") and p.name[2:4].isdigit()
        if is_chapter and not (full and p.name.split(".")[0] == f"ch{chapter}"):
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    ref = pkg / "reference"
    if full:
        keep = sorted(p.stem for p in ref.glob("*.py") if p.stem != "__init__")
    else:
        allowed = {m.split(".")[0] for v in info.values() for m in v.get("allow_reference", [])}
        allowed |= set(lab_modules)
        keep = sorted(_reference_deps(ref, allowed))
        if keep:
            for p in ref.glob("*.py"):
                if p.stem not in keep and p.stem != "__init__":
                    p.unlink()
        else:
            shutil.rmtree(ref)
        data = checks / f"ch{chapter}"
        data.mkdir()
        shutil.copy(Path(__file__).with_name("learner_specs.py"), checks / "_public.py")
        from .learner_specs import CHAPTER_INIT

        (data / "__init__.py").write_text(CHAPTER_INIT.format(chapter=chapter))
        for exid in info:
            f = public_dir / f"{safe_name(exid)}.bin"
            if f.exists():
                shutil.copy(f, data / f.name)
    import compileall

    compileall.compile_dir(str(pkg), quiet=2, workers=1)  # the sandbox cannot write caches
    (pkg / "LEARNER_BUILD.json").write_text(json.dumps({"chapter": chapter, "full": full,
                                                         "reference": keep}))
    return LearnerBuild(dest, full, keep)

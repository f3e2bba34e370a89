"""The pristine copy of the course library and the LEARNER BUILDS that the sandbox sees.

* :func:`pristine_copy` copies the installed ``llmcourse`` package once per batch, before
  any learner code runs, and checks that the copy hashes like its source. The hidden
  cases' expected outputs (and the learner build's public data) are made from this copy,
  so nothing a kernel could have written - ever - becomes the truth.
* :func:`learner_build` makes the library the kernel imports: no ``solutions/``, no hidden
  tests, no expected outputs of hidden cases, no instructor tooling, no spec modules (they
  hold the cataloged mistakes) and no reference answers. Each exercise's public cases come
  precomputed (:mod:`.learner_specs`) and a spec's own way of calling the learner's function
  lives in ``checks/calls.py``, which the build ships, so ``check()`` works as usual.

  One build per NOTEBOOK (``lib/notebooks/<name>/llmcourse``; the sandbox picks it by the
  job's notebook): ``llmcourse.reference`` in it holds only the names that notebook needs -
  what its lab cells import, what its exercises may use (``Exercise.allow_reference``) and
  what ``checks/calls.py`` imports for its exercises - with the definitions those names use,
  cut out of the reference modules definition by definition (:func:`prune_reference`).
  Everything else, the answers of the notebook's exercises included, is not in the build:
  ``from llmcourse.reference.attention import scaled_dot_product_attention`` fails.
  ``lib/llmcourse`` (any other notebook) carries only what ``checks/calls.py`` needs.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .protocol import safe_name

# Grading modules the sandbox needs (the in-sandbox runner and the verification harness).
SANDBOX_GRADING = {"__init__.py", "protocol.py", "codec.py", "harness.py", "runner.py",
                   "sandbox.py", "opsmode.py"}
INSTRUCTOR_ONLY = ("authoring.py", "book.py", "cli.py", "static")
WHOLE = "*"  # a need for a whole reference module
REF_PREFIX = "llmcourse.reference."


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
    root: Path  # put on the sandbox's PYTHONPATH (the default build)
    full: bool
    reference: list[str]  # reference modules left in any of the builds (pruned)
    notebooks: dict[str, Path] = field(default_factory=dict)  # notebook -> its build's root

    @property
    def note(self) -> str:
        return ("learner build carries the reference (LLMCOURSE_FULL_LEARNER_BUILD is set)"
                if self.full else "")


# ---------------------------------------------------------------------------------------
# What a notebook needs from the reference


class LabImports(set):
    """The reference modules a chapter's notebooks use in their own (lab) cells (the set),
    and per notebook: ``needs`` {(module, name or WHOLE)} and the exercises it grades."""

    def __init__(self, modules=(), notebooks=None):
        super().__init__(modules)
        self.notebooks: dict[str, dict] = notebooks or {}


def _code_cells(path: Path) -> list[ast.Module]:
    trees = []
    for cell in json.loads(path.read_text(encoding="utf-8")).get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        src = cell.get("source", "")
        src = "".join(src) if isinstance(src, list) else src
        try:
            trees.append(ast.parse("\n".join("" if ln.lstrip().startswith(("%", "!")) else ln
                                             for ln in src.splitlines())))
        except SyntaxError:
            continue
    return trees


def _ref_module(dotted: str) -> str | None:
    return dotted[len(REF_PREFIX):].split(".")[0] if dotted.startswith(REF_PREFIX) else None


def library_needs(module: str) -> set[tuple[str, str]]:
    """What a library module outside the reference (``llmcourse.pretrained``) imports from
    the reference at its top level: a lab cell that imports it needs those too."""
    parts = module.split(".")[1:]
    if not parts or parts[0] in ("reference", "checks", "grading"):
        return set()
    base = Path(__file__).resolve().parents[1].joinpath(*parts)
    path = base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError):
        return set()
    depth = len(parts) - (0 if path.name == "__init__.py" else 1)  # packages above the module
    needs = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level == depth + 1 and node.module \
                and node.module.startswith("reference."):
            needs |= {(node.module.split(".")[1], a.name) for a in node.names}
    return needs


def lab_needs(trees: list[ast.Module]) -> set[tuple[str, str]]:
    """(module, name) pairs of the reference that these cells import; a module bound to a
    name (``from llmcourse.reference import gpt as lab_gpt``) needs the attributes used on it,
    or all of it when the module object itself is passed around."""
    needs, aliases = set(), {}
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                mod = _ref_module(node.module + ".")
                if node.module == "llmcourse.reference":
                    for a in node.names:
                        aliases[a.asname or a.name] = a.name
                elif mod:
                    needs |= {(mod, a.name) for a in node.names}
                elif node.module.startswith("llmcourse."):
                    needs |= library_needs(node.module)
            elif isinstance(node, ast.Import):
                for a in node.names:
                    mod = _ref_module(a.name + ".")
                    if mod:
                        needs.add((mod, WHOLE)) if not a.asname else aliases.update({a.asname: mod})
            elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(
                    node.targets[0], ast.Name):  # lab_x = importlib.import_module("llmcourse.reference.x")
                for c in ast.walk(node.value):
                    if isinstance(c, ast.Constant) and isinstance(c.value, str) and _ref_module(c.value + "."):
                        aliases[node.targets[0].id] = _ref_module(c.value + ".")
    for tree in trees:
        attr_bases = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                    and node.value.id in aliases:
                needs.add((aliases[node.value.id], node.attr))
                attr_bases.add(id(node.value))
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and node.id in aliases and id(node) not in attr_bases \
                    and isinstance(node.ctx, ast.Load):
                needs.add((aliases[node.id], WHOLE))
    return needs


CHECK_CALL = re.compile(r"""check\(\s*["'](\d\d\.\w+)["']""")


def notebook_reference_imports(folder: Path) -> LabImports:
    """Reference modules the chapter's notebooks import in their own (lab) cells; per
    notebook, the names they import and the exercises their cells check."""
    modules, notebooks = set(), {}
    for path in sorted(folder.glob("*.ipynb")):
        needs = lab_needs(_code_cells(path))
        modules |= {m for m, _ in needs}
        cells = json.loads(path.read_text(encoding="utf-8")).get("cells", [])
        text = "\n".join("".join(c.get("source", "")) for c in cells)
        notebooks[path.stem] = {"needs": needs, "exercises": set(CHECK_CALL.findall(text))}
    return LabImports(modules, notebooks)


def calls_needs(calls_py: Path, names: set[str]) -> set[tuple[str, str]]:
    """What the functions ``names`` of ``checks/calls.py`` import from the reference."""
    needs = set()
    for node in ast.parse(calls_py.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.FunctionDef) and node.name in names:
            for sub in ast.walk(node):
                if isinstance(sub, ast.ImportFrom) and sub.level == 2 and \
                        (sub.module or "").startswith("reference."):
                    needs |= {(sub.module.split(".")[1], a.name) for a in sub.names}
    return needs


# ---------------------------------------------------------------------------------------
# Cutting the reference down to what is needed


@dataclass
class _Module:
    tree: ast.Module
    lines: list[str]
    defs: dict[str, ast.stmt]  # top-level def / class name -> node
    imports: dict[str, tuple[str, str]]  # local name -> (reference module, name or WHOLE)


def _is_main_guard(node: ast.stmt) -> bool:
    return isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)


def _parse(path: Path) -> _Module:
    text = path.read_text(encoding="utf-8")
    tree = ast.parse(text)
    tree.body = [n for n in tree.body if not _is_main_guard(n)]  # `python -m` entry points
    defs, imports = {}, {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defs[node.name] = node
        elif isinstance(node, ast.ImportFrom):
            if node.level == 1:
                for a in node.names:
                    local = a.asname or a.name
                    imports[local] = (node.module.split(".")[0], a.name) if node.module else (a.name, WHOLE)
            elif (node.module or "").startswith(REF_PREFIX) or node.module == "llmcourse.reference":
                for a in node.names:
                    mod = _ref_module(node.module + ".")
                    imports[a.asname or a.name] = (mod, a.name) if mod else (a.name, WHOLE)
    return _Module(tree, text.splitlines(keepends=True), defs, imports)


def _used_names(node: ast.AST) -> set[tuple[str, str | None]]:
    """(name, attribute or None) for every name the node reads."""
    out, bases = set(), set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name):
            out.add((sub.value.id, sub.attr))
            bases.add(id(sub.value))
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name) and id(sub) not in bases:
            out.add((sub.id, None))
    return out


def _closure(modules: dict[str, _Module], needs: set[tuple[str, str]]) -> dict[str, set[str]]:
    """{module: names of its top-level definitions to keep} (WHOLE in it: every one)."""
    keep: dict[str, set[str]] = {}
    todo = list(needs)
    while todo:
        mod, name = todo.pop()
        m = modules.get(mod)
        if m is None:
            continue
        if mod not in keep:  # the module's own top-level statements (constants, ...) come too
            keep[mod] = set()
            for node in m.tree.body:
                if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef,
                                         ast.Import, ast.ImportFrom)):
                    todo += _resolve(m, mod, _used_names(node))
        if name == WHOLE:
            todo += [(mod, n) for n in m.defs if n not in keep[mod]]
            continue
        if name in keep[mod]:
            continue
        if name in m.defs:
            keep[mod].add(name)
            todo += _resolve(m, mod, _used_names(m.defs[name]))
            for sub in ast.walk(m.defs[name]):  # imports inside a function
                if isinstance(sub, ast.ImportFrom) and sub.level == 1:
                    todo += [(sub.module.split(".")[0], a.name) if sub.module else (a.name, WHOLE)
                             for a in sub.names]
        elif name in m.imports:  # a re-export
            keep[mod].add(name)
            todo.append(m.imports[name])
    return keep


def _resolve(m: _Module, mod: str, used) -> list[tuple[str, str]]:
    out = []
    for name, attr in used:
        if name in m.defs:
            out.append((mod, name))
        elif name in m.imports:
            src, what = m.imports[name]
            out.append((src, attr if what == WHOLE and attr else what))
            if what == WHOLE and attr is None:
                out.append((src, WHOLE))
    return out


def _write_pruned(m: _Module, names: set[str], dest: Path) -> None:
    """The module with only the kept definitions (source text unchanged) and the imports
    they use."""
    kept_nodes = [n for n in m.tree.body if not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                               ast.ClassDef)) or n.name in names]
    used = set()
    for node in kept_nodes:
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            used |= {n for n, _ in _used_names(node)}
    out = []
    for node in kept_nodes:
        start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        text = "".join(m.lines[start - 1:node.end_lineno])
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("llmcourse")):
            aliases = [a for a in node.names if (a.asname or a.name) in used or
                       (a.asname or a.name) in names]
            if not aliases:
                continue
            text = ast.unparse(ast.ImportFrom(node.module, aliases, node.level)) + "\n"
        out.append(text)
    dest.write_text("\n".join(out), encoding="utf-8")


def prune_reference(src: Path, dest: Path, needs: set[tuple[str, str]]) -> list[str]:
    """Write into ``dest`` (a ``reference`` package) only what ``needs`` uses; return the
    modules written. Nothing is written when nothing is needed (no package at all)."""
    modules = {p.stem: _parse(p) for p in sorted(src.glob("*.py")) if p.stem != "__init__"}
    keep = _closure(modules, needs)
    if not keep:
        return []
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "__init__.py").write_text('"""Learner build: only the parts of the reference this '
                                      'notebook needs (no answers)."""\n')
    for mod, names in sorted(keep.items()):
        _write_pruned(modules[mod], names, dest / f"{mod}.py")
    return sorted(keep)


# ---------------------------------------------------------------------------------------
# The builds


def _base(pristine: Path, pkg: Path, chapter: str, public_dir: Path, info: dict, full: bool) -> None:
    shutil.copytree(pristine / "llmcourse", pkg, ignore=_ignore, symlinks=False)
    for name in INSTRUCTOR_ONLY:
        target = pkg / name
        shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    for p in (pkg / "grading").iterdir():
        if p.name not in SANDBOX_GRADING:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    checks = pkg / "checks"
    for p in checks.iterdir():
        is_chapter = p.name.startswith("ch") and p.name[2:4].isdigit()
        if is_chapter and not (full and p.name.split(".")[0] == f"ch{chapter}"):
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    if full:
        return
    shutil.rmtree(pkg / "reference")
    data = checks / f"ch{chapter}"
    data.mkdir()
    shutil.copy(Path(__file__).with_name("learner_specs.py"), checks / "_public.py")
    from .learner_specs import CHAPTER_INIT

    (data / "__init__.py").write_text(CHAPTER_INIT.format(chapter=chapter))
    for exid in info:
        f = public_dir / f"{safe_name(exid)}.bin"
        if f.exists():
            shutil.copy(f, data / f.name)


def _glue_names(public_dir: Path, exercise_ids) -> set[str]:
    from . import codec

    names = set()
    for exid in exercise_ids:
        f = public_dir / f"{safe_name(exid)}.bin"
        if f.exists():
            spec = codec.load(f)[1]
            names |= {spec.get("call"), spec.get("build")} - {None}
    return names


def _allowed(info: dict, exercise_ids) -> set[tuple[str, str]]:
    out = set()
    for exid in exercise_ids:
        for m in info.get(exid, {}).get("allow_reference", []):
            mod, _, name = m.partition(".")
            out.add((mod, name or WHOLE))
    return out


def learner_build(pristine: Path, dest: Path, chapter: str, public_dir: Path,
                  info: dict[str, dict], lab_modules: set[str] = frozenset()) -> LearnerBuild:
    """Make ``dest/llmcourse`` (and ``dest/notebooks/<nb>/llmcourse`` for each notebook that
    ``lab_modules`` describes, see :class:`LabImports`) for chapter ``chapter`` (``NN``).

    ``lab_modules``: what :func:`notebook_reference_imports` returns; a plain set of module
    names makes one build that keeps those modules' every definition the lab may use."""
    import compileall

    # The project's own tests grade "mistake packs" whose answers call the catalog's
    # implementations inside the notebook: they need the spec modules and the reference
    # (never set this for real submissions).
    full = os.environ.get("LLMCOURSE_FULL_LEARNER_BUILD", "") not in ("", "0")
    base = dest / "llmcourse"
    _base(pristine, base, chapter, public_dir, info, full)
    ref_src = pristine / "llmcourse" / "reference"
    calls_py = pristine / "llmcourse" / "checks" / "calls.py"
    kept: set[str] = set()
    notebooks: dict[str, Path] = {}
    per_nb = getattr(lab_modules, "notebooks", None)
    if not full:
        every = set(info)
        default = calls_needs(calls_py, _glue_names(public_dir, every))
        if per_nb is None:  # one build: the chapter's exercises' and lab cells' needs
            default |= _allowed(info, every) | {(m, WHOLE) for m in lab_modules}
        kept |= set(prune_reference(ref_src, base / "reference", default))
    compileall.compile_dir(str(base), quiet=2, workers=1)  # the sandbox cannot write caches
    for name, nb in sorted((per_nb or {}).items()) if not full else ():
        exids = sorted(e for e in nb["exercises"] if e in info)
        needs = set(nb["needs"]) | _allowed(info, exids)
        needs |= calls_needs(calls_py, _glue_names(public_dir, exids))
        root = dest / "notebooks" / safe_name(name)
        pkg = root / "llmcourse"
        shutil.copytree(base, pkg, ignore=lambda d, n: ["reference"] if Path(d) == base else [])
        mods = prune_reference(ref_src, pkg / "reference", needs)
        kept |= set(mods)
        if mods:
            compileall.compile_dir(str(pkg / "reference"), quiet=2, workers=1)
        (pkg / "LEARNER_BUILD.json").write_text(json.dumps({"chapter": chapter, "notebook": name,
                                                             "full": False, "reference": mods}))
        notebooks[name] = root
    if full:
        kept = {p.stem for p in (base / "reference").glob("*.py") if p.stem != "__init__"}
    (base / "LEARNER_BUILD.json").write_text(json.dumps({"chapter": chapter, "full": full,
                                                          "reference": sorted(kept)}))
    return LearnerBuild(dest, full, sorted(kept), notebooks)


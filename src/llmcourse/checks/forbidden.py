"""Find forbidden shortcuts in a learner's code by reading it (never by running it).

The same function serves the in-notebook ``check()`` (which reads the cells the learner
executed) and the grader (which reads the submitted notebook's cells), so both say the
same thing: which rule was broken, by which name, on which line.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

from .core import Rule

# Names a learner may use without importing them in the same cell.
DEFAULT_ALIASES = {
    "torch": "torch",
    "F": "torch.nn.functional",
    "nn": "torch.nn",
    "np": "numpy",
    "llmcourse": "llmcourse",
}


@dataclass(frozen=True)
class Violation:
    rule: Rule
    name: str  # what the code used, resolved (e.g. torch.nn.functional.softmax)
    line: int  # line in the snippet it was found in
    where: str  # label of the snippet (cell or function name)

    def __str__(self) -> str:
        return (f"forbidden shortcut: `{self.name}` ({self.where}, line {self.line}) - "
                f"{self.rule.why}")


def strip_magics(source: str) -> str:
    """Turn IPython-only lines (``%pip``, ``!ls``) into blank lines so ``ast`` can parse."""
    out = []
    for line in source.splitlines():
        out.append("" if line.lstrip().startswith(("%", "!")) else line)
    return "\n".join(out)


def parse(source: str) -> ast.Module | None:
    try:
        return ast.parse(strip_magics(source))
    except SyntaxError:
        return None


def collect_aliases(trees: list[tuple[str, ast.AST]]) -> dict[str, str]:
    """Names bound by imports anywhere in ``trees`` -> the dotted name they stand for."""
    aliases = dict(DEFAULT_ALIASES)
    for _, tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.asname:
                        aliases[a.asname] = a.name
                    else:
                        root = a.name.split(".")[0]
                        aliases[root] = root
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for a in node.names:
                    aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    return aliases


def _dotted(node: ast.AST, aliases: dict[str, str]) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name) and node.id in aliases:
        return ".".join([aliases[node.id]] + parts[::-1])
    return None


def _matches(name: str, rule: Rule) -> bool:
    t = rule.target
    if t.startswith("."):
        return name.rsplit(".", 1)[-1] == t[1:]
    if any(name == f"{t}.{a}" or name.startswith(f"{t}.{a}.") for a in rule.allow):
        return False
    return name == t or name.startswith(t + ".")


def find_violations(tree: ast.AST, rules: tuple[Rule, ...], aliases: dict[str, str],
                    where: str) -> list[Violation]:
    found: list[Violation] = []
    if not rules:
        return found

    def hit(name: str, line: int):
        for rule in rules:
            if _matches(name, rule):
                found.append(Violation(rule, name, line, where))
                return

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                hit(a.name, node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                hit(f"{node.module}.{a.name}", node.lineno)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
            name = _dotted(node, aliases)
            if name is not None:
                hit(name, node.lineno)
            else:  # a method on some value, e.g. x.softmax(-1)
                hit("?." + node.attr, node.lineno)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            if node.id in aliases and aliases[node.id] != node.id:
                hit(aliases[node.id], node.lineno)
        elif isinstance(node, ast.Call) and node.args:
            # getattr(torch, "softmax"), importlib.import_module("llmcourse.reference")
            func = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            first = node.args[0]
            if func == "getattr" and len(node.args) > 1 and isinstance(
                    node.args[1], ast.Constant) and isinstance(node.args[1].value, str):
                base = _dotted(first, aliases) or "?"
                hit(f"{base}.{node.args[1].value}", node.lineno)
            elif func in ("__import__", "import_module") and isinstance(
                    first, ast.Constant) and isinstance(first.value, str):
                hit(first.value, node.lineno)
    # one report per (rule, line)
    seen, unique = set(), []
    for v in found:
        if (v.rule, v.line, v.where) not in seen:
            seen.add((v.rule, v.line, v.where))
            unique.append(v)
    return unique


def _locals(node: ast.AST) -> set[str]:
    """Names a function binds itself (arguments, assignments, loop variables): a local
    ``x`` is not the notebook's top-level ``x``."""
    if isinstance(node, ast.ClassDef):  # a method's arguments and locals are its own
        return set().union(*(_locals(f) for f in ast.walk(node)
                             if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))))
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        return set()
    names = {a.arg for a in ast.walk(node.args) if isinstance(a, ast.arg)}
    for n in ast.walk(node):
        if isinstance(n, ast.Name) and isinstance(n.ctx, (ast.Store, ast.Del)):
            names.add(n.id)
    return names - _globals(node)


def _globals(node: ast.AST) -> set[str]:
    return {name for n in ast.walk(node) if isinstance(n, (ast.Global, ast.Nonlocal))
            for name in n.names}


def module_statements(body: list[ast.stmt]):
    """The statements that run at a cell's top level, also inside ``if``/``try``/``with``/
    loops (a ``def`` under ``if True:`` defines a top-level name as well)."""
    for node in body:
        yield node
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        for field in ("body", "orelse", "finalbody"):
            yield from module_statements(getattr(node, field, []) or [])
        for handler in getattr(node, "handlers", []) or []:
            yield from module_statements(handler.body)
        for case in getattr(node, "cases", []) or []:
            yield from module_statements(case.body)


def definitions(cells: list[tuple[str, str]]) -> tuple[dict[str, tuple[ast.AST, str]], list]:
    """Top-level names defined in ``cells`` (label, source) -> (node, label); later wins.

    Returns the definitions and the parsed trees (for the alias table).
    """
    defs: dict[str, tuple[ast.AST, str]] = {}
    trees = []
    for label, src in cells:
        tree = parse(src)
        if tree is None:
            continue
        trees.append((label, tree))
        for node in module_statements(tree.body):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                defs[node.name] = (node, label)
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for t in targets:
                    for n in ast.walk(t):
                        if isinstance(n, ast.Name) and n.id != "_":
                            defs[n.id] = (node, label)
    return defs, trees


def violations_for(entry: str, rules: tuple[Rule, ...], cells: list[tuple[str, str]]
                   ) -> list[Violation]:
    """Violations in the definition of ``entry`` and every top-level helper it reaches."""
    if not rules:
        return []
    defs, trees = definitions(cells)
    aliases = collect_aliases(trees)
    found, todo, done = [], [entry], set()
    while todo:
        name = todo.pop()
        if name in done or name not in defs:
            continue
        done.add(name)
        node, label = defs[name]
        found += find_violations(node, rules, aliases, label)
        found += dynamic_code(node, aliases, label)
        local = _locals(node)
        for n in ast.walk(node):
            if isinstance(n, ast.Name) and n.id in defs and n.id not in done and n.id not in local:
                todo.append(n.id)
    # An import elsewhere in the notebook counts when it can stand in for the answer: a
    # star import, or one that binds the entry itself or a name the answer uses. Lab cells
    # may import the reference (later chapters build on earlier ones' references).
    used = {entry} | {n.id for name in done for n in ast.walk(defs[name][0])
                      if isinstance(n, ast.Name)}
    for label, tree in trees:
        for node in module_statements(tree.body):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                bound = {(a.asname or a.name).split(".")[0] for a in node.names}
                if "*" in bound or bound & used:
                    found += [v for v in find_violations(node, rules, aliases, label)
                              if not v.rule.target.startswith(".")]
    seen, unique = set(), []
    for v in found:
        key = (v.rule.target, v.name, v.where, v.line)
        if key not in seen:
            seen.add(key)
            unique.append(v)
    return unique


# Code that builds code or names at run time, so that no reading of the source can say what
# it calls: never part of an answer (the grader gives the exercise 0).
DYNAMIC = Rule("dynamic code", "an answer must not build or load code at run time (exec, eval, "
               "compile, __import__, importlib, pickle, marshal, sys.modules, reading .py or "
               ".ipynb files): write the code itself")
DYNAMIC_CALLS = {"exec", "eval", "compile", "__import__", "globals", "vars", "breakpoint"}
DYNAMIC_MODULES = ("importlib", "pickle", "marshal", "dill", "cloudpickle", "ctypes", "builtins",
                   "types.FunctionType", "types.CodeType", "sys.modules", "runpy", "zipimport")
DYNAMIC_ATTRS = {"__import__", "__builtins__", "__globals__", "__code__", "__dict__",
                 "__getattribute__", "__subclasses__", "import_module", "f_globals",
                 "f_locals"}


def dynamic_code(tree: ast.AST, aliases: dict[str, str], where: str) -> list[Violation]:
    """Uses of run-time code or names inside ``tree`` (a definition an answer reaches)."""
    found = []

    def hit(name: str, line: int) -> None:
        found.append(Violation(DYNAMIC, name, line, where))

    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            target = aliases.get(node.id, node.id)
            if node.id in DYNAMIC_CALLS or node.id == "__builtins__" or any(
                    target == m or target.startswith(m + ".") for m in DYNAMIC_MODULES):
                hit(target if node.id in aliases else node.id, node.lineno)
        elif isinstance(node, ast.Attribute):
            name = _dotted(node, aliases)
            if name and any(name == m or name.startswith(m + ".") for m in DYNAMIC_MODULES):
                hit(name, node.lineno)
            elif node.attr in DYNAMIC_ATTRS and (name is None or node.attr.startswith("__")
                                                 or name.split(".")[0] in ("sys", "pickle",
                                                                           "marshal", "importlib")):
                hit(name or "?." + node.attr, node.lineno)
        elif isinstance(node, ast.Call):
            func = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            if func == "getattr" and len(node.args) > 1 and not (
                    isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)):
                hit("getattr(..., <a name made at run time>)", node.lineno)
        if isinstance(node, ast.Call):
            for arg in node.args:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and (
                        arg.value.endswith((".py", ".ipynb", ".pyc")) or ".ipynb" in arg.value):
                    hit(f"{arg.value[:40]!r} (reading course or notebook files)", node.lineno)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for n in names:
                if any(n == m or n.startswith(m + ".") for m in DYNAMIC_MODULES):
                    hit(n, node.lineno)
    seen, unique = set(), []
    for v in found:
        if v.line not in seen:
            seen.add(v.line)
            unique.append(v)
    return unique

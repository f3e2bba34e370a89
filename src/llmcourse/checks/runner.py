"""The runner behind ``check()``: the registry of exercise specs, running a spec's cases
against a learner's function, and naming the mistake when one fails.

``check`` runs the exercise's cases against the reference, prints a short verdict and, on
failure, raises :class:`CheckFailed` whose message says which case failed, how (shape,
dtype, max abs error and where) and, when the output matches a known mistake, names it.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import sys
import traceback

from .core import Case, Exercise, Mistake, compare, flatten, tolerance
from .forbidden import violations_for

_PACKAGE = __name__.rpartition(".")[0]
PUBLIC_SEED = 0  # the seed of the cases a learner sees; hidden tests pass their own


def _discover() -> dict[str, str]:
    """chapter prefix -> module holding that chapter's specs: every ``chNN`` package (or
    ``chNN.py`` module) next to this file."""
    found = {}
    for info in pkgutil.iter_modules(sys.modules[_PACKAGE].__path__):
        if len(info.name) == 4 and info.name.startswith("ch") and info.name[2:].isdigit():
            found[info.name[2:]] = f"{_PACKAGE}.{info.name}"
    return dict(sorted(found.items()))


CHAPTERS = _discover()

_REGISTRY: dict[str, Exercise] = {}


def register(cls):
    """Class decorator used by the chapter modules."""
    inst = cls()
    _REGISTRY[inst.id] = inst
    return cls


def get(exercise_id: str) -> Exercise:
    chapter = exercise_id.split(".")[0]
    if exercise_id not in _REGISTRY and chapter in CHAPTERS:
        importlib.import_module(CHAPTERS[chapter])
    try:
        return _REGISTRY[exercise_id]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "none loaded"
        raise KeyError(f"unknown exercise {exercise_id!r} (known: {known})") from None


def all_exercises(chapter: str | None = None) -> list[Exercise]:
    for ch in ([chapter] if chapter else CHAPTERS):
        if ch in CHAPTERS:
            importlib.import_module(CHAPTERS[ch])
    return [e for i, e in sorted(_REGISTRY.items()) if chapter is None or i.startswith(chapter + ".")]


class CheckFailed(AssertionError):
    """Raised by ``check`` so that a failing test cell fails (and nbgrader gives 0)."""


class Result:
    """The verdict of one check. ``bool(result)`` is True when every case passed."""

    def __init__(self, exercise: Exercise, status: str, n_cases: int, passed: int,
                 detail: str = "", diagnosis: Mistake | None = None):
        self.exercise, self.status, self.n_cases, self.passed = exercise, status, n_cases, passed
        self.detail, self.diagnosis = detail, diagnosis

    def __bool__(self) -> bool:
        return self.status == "pass"

    def __str__(self) -> str:
        head = f"{self.exercise.id} ({self.exercise.entry})"
        if self.status == "pass":
            return f"PASS {head}: all {self.n_cases} cases match the reference."
        if self.status == "not implemented":
            return (f"TODO {head}: not implemented yet - replace `raise NotImplementedError()` "
                    "with your code, run that cell, then this one.")
        lines = [f"FAIL {head}: {self.detail}"]
        if self.diagnosis is not None:
            lines.append(f"  Diagnosis - {self.diagnosis.name}: {self.diagnosis.explain}")
        return "\n".join(lines)

    __repr__ = __str__


def _learner_cells(fn) -> list[tuple[str, str]]:
    """The code the learner ran: IPython's input history, else the function's own source."""
    try:
        ip = get_ipython()  # type: ignore[name-defined]  # noqa: F821
        history = ip.user_ns.get("In", [])
        if history:
            return [(f"cell In[{i}]", src) for i, src in enumerate(history) if src]
    except NameError:
        pass
    for obj in (sys.modules.get(getattr(fn, "__module__", "")), fn):
        try:
            return [(f"`{getattr(obj, '__name__', 'code')}`", inspect.getsource(obj))]
        except (OSError, TypeError):
            continue
    return []


def _error_line(exc: BaseException) -> str:
    """One line for an exception raised by learner code, with the learner's line number."""
    frames = traceback.extract_tb(exc.__traceback__)
    mine = [f for f in frames if "llmcourse" not in f.filename and "torch" not in f.filename]
    where = ""
    if mine:
        f = mine[-1]
        where = f" (in `{f.name}`, line {f.lineno}: {f.line.strip()})" if f.line else ""
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {msg}{where}"


def _clone(value):
    if isinstance(value, Case):
        return Case(value.label, _clone(value.args), _clone(value.kwargs), value.rtol, value.atol)
    if hasattr(value, "clone") and hasattr(value, "dtype"):
        return value.clone()
    if isinstance(value, (list, tuple)):
        return type(value)(_clone(v) for v in value)
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    return value


def _same_inputs(a: Case, b: Case) -> bool:
    ia, ib = flatten(list(a.args) + [a.kwargs]), flatten(list(b.args) + [b.kwargs])
    return compare(ia, ib, 0.0, 0.0) is None


def run(exercise: Exercise, fn, *, seed: int | None = None, hidden: bool = False) -> Result:
    """Run every case; stop at the first failure and try to name the mistake."""
    violations = violations_for(exercise.entry, exercise.rules, _learner_cells(fn))
    if violations:
        return Result(exercise, "forbidden", 0, 0, str(violations[0]))
    cases = exercise.cases(PUBLIC_SEED if seed is None else seed, hidden)
    for i, case in enumerate(cases, 1):
        label = f"case {i}/{len(cases)} '{case.label}'"
        expected = flatten(exercise.expected(_clone(case)))
        mine = _clone(case)
        try:
            got = flatten(exercise.call(fn, mine))
        except NotImplementedError:
            return Result(exercise, "not implemented", len(cases), 0)
        except Exception as exc:  # the learner's bug, reported in one line
            return Result(exercise, "error", len(cases), i - 1, f"{label} raised {_error_line(exc)}",
                          diagnose(exercise, case, exc))
        rtol, atol = tolerance(case, expected)
        problem = compare(expected, got, rtol, atol)
        if problem is not None:
            return Result(exercise, "fail", len(cases), i - 1, f"{label}: {problem}",
                          diagnose(exercise, case, got))
        if not _same_inputs(case, mine):
            return Result(exercise, "fail", len(cases), i - 1, f"{label}: your function changed "
                          "its input tensors in place; compute new tensors instead (no `-=`, `exp_()`)")
    return Result(exercise, "pass", len(cases), len(cases))


def diagnose(exercise: Exercise, case: Case, got) -> Mistake | None:
    """The first cataloged mistake whose output on ``case`` matches the learner's.

    ``got`` is the learner's flattened output, or the exception their code raised (a mistake
    that raises the same exception type with the same message matches it)."""
    for mistake in exercise.mistakes:
        try:
            wrong = flatten(exercise.call(mistake.impl, _clone(case)))
        except Exception as exc:
            if isinstance(got, BaseException) and type(got) is type(exc) and str(got) == str(exc):
                return mistake
            continue
        if isinstance(got, BaseException):
            continue
        rtol, atol = tolerance(case, wrong)
        if compare(wrong, got, rtol, atol) is None:
            return mistake
    return None


def check(exercise_id: str, fn, *, seed: int | None = None, hidden: bool = False) -> Result:
    """Check ``fn`` against the reference for ``exercise_id``; raise CheckFailed if it fails."""
    __tracebackhide__ = True  # noqa: F841  (IPython hides this frame in tracebacks)
    result = run(get(exercise_id), fn, seed=seed, hidden=hidden)
    if not result:
        raise CheckFailed(str(result)) from None
    print(result)
    return result


def check_all(chapter: str | None = None, namespace: dict | None = None) -> dict[str, Result]:
    """Check every exercise whose function is defined in the notebook; print a summary."""
    if namespace is None:
        try:
            namespace = get_ipython().user_ns  # type: ignore[name-defined]  # noqa: F821
        except NameError:
            namespace = sys.modules["__main__"].__dict__
    results = {}
    for ex in all_exercises(chapter):
        fn = namespace.get(ex.entry)
        if fn is None or getattr(fn, "__module__", "__main__") != "__main__":
            continue
        results[ex.id] = run(ex, fn)
    for r in results.values():
        print(r)
    done = sum(bool(r) for r in results.values())
    print(f"{done}/{len(results)} exercises pass their public checks.")
    return results

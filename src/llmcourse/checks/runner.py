"""The runner behind ``check()``: the registry of exercise specs, running a spec's cases
against a learner's function, and naming the mistake when one fails.

``check`` runs every case of the exercise against the reference, prints one short verdict
and, on failure, raises :class:`CheckFailed` whose message says which case failed first, how
(shape, dtype, max abs error and where) and, when a known mistake explains the learner's
outputs on EVERY case that was run (passing and failing alike), names it; when several do,
it says "consistent with: A, or B". When the learner's function calls another of their
exercise functions that fails its own check, the message says so first.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import sys
import traceback
import types

from .core import ALIAS_NOTE, Case, Exercise, Mistake, compare, flatten, shared_input, tolerance
from .diagnosis import (_clone, _expected, _matches, _mistake_output, _same_inputs,  # noqa: F401 (re-exported)
                        _slot, diagnose)
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
    """Raised by ``check`` so that a failing test cell fails (and nbgrader gives 0).

    IPython (and so Jupyter, ``nbgrader validate`` and the feedback pages) shows only the
    message: ``_render_traceback_`` replaces the traceback into the checker's internals. Its
    lines are wrapped at 83 columns, so ``nbgrader validate`` (90 columns, 4 of indent, longer
    lines cut with "...") shows the whole message too."""

    WIDTH = 83

    def _render_traceback_(self) -> list[str]:
        import textwrap

        out = []
        for line in str(self).splitlines():
            lead = line[:len(line) - len(line.lstrip())]
            out += textwrap.wrap(line, self.WIDTH, subsequent_indent=lead + "  ",
                                 break_long_words=False, break_on_hyphens=False) or [""]
        return out


class Summary(dict):
    """``check_all``'s results ({exercise id: Result}); shows nothing when it is the last
    expression of a cell (the summary was printed once already)."""

    def _ipython_display_(self) -> None:
        pass


class Result:
    """The verdict of one check. ``bool(result)`` is True when every case passed.

    ``diagnoses`` holds every cataloged mistake consistent with all the cases run (usually
    none or one); ``diagnosis`` is that mistake when exactly one fits, else None. ``uses``
    is the line naming a failing dependency (the learner's earlier function), or ""."""

    def __init__(self, exercise: Exercise, status: str, n_cases: int, passed: int,
                 detail: str = "", diagnoses: tuple[Mistake, ...] | Mistake | None = (),
                 uses: str = ""):
        self.exercise, self.status, self.n_cases, self.passed = exercise, status, n_cases, passed
        if diagnoses is None:
            diagnoses = ()
        elif isinstance(diagnoses, Mistake):
            diagnoses = (diagnoses,)
        self.detail, self.diagnoses, self.uses = detail, tuple(diagnoses), uses
        self.note = ""  # on a pass: a slip that leaves the values right

    @property
    def diagnosis(self) -> Mistake | None:
        return self.diagnoses[0] if len(self.diagnoses) == 1 else None

    def __bool__(self) -> bool:
        return self.status == "pass"

    def __str__(self) -> str:
        head = f"{self.exercise.id} ({self.exercise.entry})"
        if self.status == "pass":
            text = f"PASS {head}: all {self.n_cases} cases match the reference."
            return text + (f"\n  {self.note}" if self.note else "")
        if self.status == "not implemented":
            return (f"TODO {head}: not implemented yet - replace `raise NotImplementedError()` "
                    "with your code, run that cell, then this one.")
        lines = [f"FAIL {head}: {self.detail}"]
        if self.uses:
            lines.append(f"  {self.uses}")
        if len(self.diagnoses) == 1:
            m = self.diagnoses[0]
            lines.append(f"  Diagnosis - {m.name}: {m.explain}")
        elif self.diagnoses:
            lines.append("  Diagnosis - consistent with: "
                         + ", or ".join(m.name for m in self.diagnoses) + ".")
            lines += [f"    {m.name}: {m.explain}" for m in self.diagnoses]
        return "\n".join(lines)

    def _repr_pretty_(self, p, cycle) -> None:
        p.text(str(self))

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


# ---------------------------------------------------------------------------------------
# Dependencies: the learner's function calls another of their exercise functions.

def _names_used(obj, depth: int = 0) -> set[str]:
    """Global names a function (or a class's methods) refers to, nested code included."""
    names: set[str] = set()
    if isinstance(obj, type):
        for v in vars(obj).values():
            v = getattr(v, "__func__", v)
            if isinstance(v, types.FunctionType):
                names |= _names_used(v, depth)
        return names
    code = getattr(getattr(obj, "__func__", obj), "__code__", None)
    stack = [code] if code is not None else []
    while stack:
        c = stack.pop()
        names |= set(c.co_names)
        stack += [k for k in c.co_consts if isinstance(k, types.CodeType)]
    return names


def _learner_globals(fn) -> dict:
    if isinstance(fn, type):
        for v in vars(fn).values():
            g = getattr(getattr(v, "__func__", v), "__globals__", None)
            if g is not None:
                return g
        return {}
    return getattr(getattr(fn, "__func__", fn), "__globals__", {}) or {}


def dependencies(exercise: Exercise) -> list[Exercise]:
    """The exercises whose functions this one may call: those it declares in ``uses``, then
    the other exercises of its chapter (a learner may reuse any of them)."""
    chapter = exercise.id.split(".")[0]
    deps = []
    for dep_id in getattr(exercise, "uses", ()):
        try:
            deps.append(get(dep_id))
        except KeyError:
            continue
    deps += [e for i, e in sorted(_REGISTRY.items())
             if i.startswith(chapter + ".") and e is not exercise and e not in deps]
    return deps


def _failing_dependency(exercise: Exercise, fn, depth: int) -> str:
    """"uses your `f`, which fails NN.id: fix that first" when ``fn`` calls the learner's
    own ``f`` (an earlier exercise's function) and that one fails its public check."""
    if depth > 1:
        return ""
    used, env = _names_used(fn), _learner_globals(fn)
    for dep in dependencies(exercise):
        mine = env.get(dep.entry)
        if dep.entry not in used or mine is None or mine is fn or dep.entry == exercise.entry:
            continue
        if getattr(mine, "__module__", "") and str(getattr(mine, "__module__", "")).startswith("llmcourse"):
            continue  # the course's own function, not the learner's
        r = run(dep, mine, _depth=depth + 1)
        if r.status == "not implemented":
            return f"uses your `{dep.entry}`, which is not implemented yet ({dep.id}): do that first."
        if not r:
            return f"uses your `{dep.entry}`, which fails {dep.id}: fix that first."
    return ""


# ---------------------------------------------------------------------------------------
# Slips the runner recognises for every exercise.

def _reruns_differ(exercise: Exercise, fn, case: Case, got) -> bool:
    """True when the same case (same seed) gives another output on a second call: the
    function's random draws do not all come from the generator it was given."""
    if not _takes_generator(exercise):
        return False
    try:
        again = flatten(exercise.call(fn, _clone(case)))
    except Exception:  # noqa: BLE001
        return False
    return compare(got, again, 0.0, 0.0) is not None


def _takes_generator(exercise: Exercise) -> bool:
    from .kit import SeededExercise

    return isinstance(exercise, SeededExercise) or getattr(exercise, "seeded", False)


GENERATOR_SLIP = ("random draws ignore `generator`: the same seed gave two different outputs. "
                  "Pass `generator=generator` to EVERY random call (torch.rand, torch.randint, "
                  "torch.bernoulli, torch.multinomial, torch.randperm), in the order the task gives.")


def run(exercise: Exercise, fn, *, seed: int | None = None, hidden: bool = False,
        _depth: int = 0) -> Result:
    """Run every case (a failing function costs no more than a passing one); report the
    first failure, and name the mistakes consistent with all the cases. A challenge is
    measured and banded instead (:mod:`.challenge`)."""
    if getattr(exercise, "kind", "") == "challenge":
        from .challenge import run_challenge

        return run_challenge(exercise, fn, seed=PUBLIC_SEED if seed is None else seed, hidden=hidden)
    violations = violations_for(exercise.entry, exercise.rules, _learner_cells(fn))
    if violations:
        return Result(exercise, "forbidden", 0, 0, str(violations[0]))
    seed = PUBLIC_SEED if seed is None else seed
    cases = exercise.cases(seed, hidden)
    slot = _slot(exercise, seed, hidden, cases)
    outcomes: list = []
    note = None  # a slip that does not change the values (an output that aliases an input)
    first: tuple[int, str, str] | None = None  # (index, status, detail)
    passed = 0
    for i, case in enumerate(cases):
        label = f"case {i + 1}/{len(cases)} '{case.label}'"
        expected = _expected(exercise, slot, i, case)
        mine = _clone(case)
        try:
            known = [mi for mi, m in enumerate(exercise.mistakes) if m.impl is fn]
            if known:  # a cataloged mistake checked as a learner (the rails): computed once
                got = _mistake_output(exercise, slot, known[0], i, case)
                if isinstance(got, BaseException):
                    raise got
            else:
                raw = exercise.call(fn, mine)
                got = flatten(raw)
        except NotImplementedError:
            return Result(exercise, "not implemented", len(cases), 0)
        except Exception as exc:  # noqa: BLE001 - the learner's bug, reported in one line
            outcomes.append(exc)
            if first is None:
                first = (i, "error", f"{label} raised {_error_line(exc)}")
            continue
        outcomes.append(got)
        rtol, atol = tolerance(case, expected)
        problem = compare(expected, got, rtol, atol)
        if problem is not None:
            if first is None:
                if _reruns_differ(exercise, fn, case, got):
                    problem += f"\n  Slip - {GENERATOR_SLIP}"
                first = (i, "fail", f"{label}: {problem}")
        elif not _same_inputs(case, mine):
            if first is None:
                first = (i, "fail", f"{label}: your function changed its input tensors in place; "
                                    "compute new tensors instead (no `-=`, `exp_()`, `x[...] = `)")
        else:
            passed += 1
            if note is None and not known:
                name = shared_input(raw, mine)
                if name and not exercise.reference_shares_input(case):
                    note = ALIAS_NOTE.format(name=name)
    if first is None:
        r = Result(exercise, "pass", len(cases), len(cases))
        r.note = note or ""
        return r
    index, status, detail = first
    uses = _failing_dependency(exercise, fn, _depth)
    found = () if "Slip - " in detail or "in place" in detail else diagnose(
        exercise, cases, outcomes, index, slot)
    return Result(exercise, status, len(cases), passed, detail, found, uses)


def check(exercise_id: str, fn, *, seed: int | None = None, hidden: bool = False) -> None:
    """Check ``fn`` against the reference for ``exercise_id``: print one verdict when it
    passes, raise :class:`CheckFailed` (shown without a traceback) when it does not."""
    __tracebackhide__ = True  # noqa: F841  (IPython hides this frame in tracebacks)
    result = run(get(exercise_id), fn, seed=seed, hidden=hidden)
    if not result:
        raise CheckFailed(str(result)) from None
    print(result)


def check_all(chapter: str | None = None, namespace: dict | None = None) -> Summary:
    """Check every exercise whose function is defined in the notebook; print a summary once."""
    if namespace is None:
        try:
            namespace = get_ipython().user_ns  # type: ignore[name-defined]  # noqa: F821
        except NameError:
            namespace = sys.modules["__main__"].__dict__
    results = Summary()
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

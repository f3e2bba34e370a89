"""The evidence behind a verdict: the learner's inputs cloned for each call, the reference's
and every cataloged mistake's outputs on a set of cases (cached for the most recent
exercise, seed and hidden flag), and :func:`diagnose`, which keeps the mistakes that
reproduce the learner's outcome on every case that was run."""

from __future__ import annotations

from .core import Case, Exercise, Mistake, compare, flatten, tolerance


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


# ---------------------------------------------------------------------------------------
# Outputs of the reference and of each mistake on one set of cases, kept for the most
# recent (exercise, seed, hidden): checking one exercise again (a learner re-running a cell,
# the catalog rails running every mistake) computes them once. Cases are made from a seed,
# so the same key always means the same cases.

_CACHE: dict = {"key": None, "slot": None}


def _slot(exercise: Exercise, seed: int, hidden: bool, cases: list[Case]) -> dict:
    key = (exercise.id, id(exercise), seed, hidden, tuple(c.label for c in cases))
    if _CACHE["key"] != key:
        _CACHE.update(key=key, slot={"expected": {}, "mistakes": {}})
    return _CACHE["slot"]


def _expected(exercise, slot, i, case):
    if i not in slot["expected"]:
        slot["expected"][i] = flatten(exercise.expected(_clone(case)))
    return slot["expected"][i]


def _mistake_output(exercise, slot, mi, i, case):
    """A mistake's flattened output on case ``i``, or the exception it raised."""
    k = (mi, i)
    if k not in slot["mistakes"]:
        try:
            slot["mistakes"][k] = flatten(exercise.call(exercise.mistakes[mi].impl, _clone(case)))
        except Exception as exc:  # noqa: BLE001 - a mistake may crash; that is its output
            slot["mistakes"][k] = exc
    return slot["mistakes"][k]


def _matches(exercise, case, wrong, got) -> bool:
    """Does a mistake's output (or exception) reproduce the learner's on this case?"""
    if isinstance(wrong, BaseException) or isinstance(got, BaseException):
        return (isinstance(wrong, BaseException) and isinstance(got, BaseException)
                and type(got) is type(wrong) and str(got) == str(wrong))
    rtol, atol = tolerance(case, wrong)
    return compare(wrong, got, rtol, atol) is None


def diagnose(exercise: Exercise, cases: list[Case], outcomes: list, first: int = 0,
             slot: dict | None = None) -> tuple[Mistake, ...]:
    """Every cataloged mistake that reproduces the learner's outcome on EVERY case run.

    ``outcomes[i]`` is the learner's flattened output on ``cases[i]``, or the exception
    their code raised (a mistake matches it by raising the same type with the same message).
    ``first`` is the failing case tried first (it rules out most mistakes at once); the
    passing cases count as much as the failing ones."""
    if slot is None:
        slot = {"expected": {}, "mistakes": {}}
    alive = list(range(len(exercise.mistakes)))
    order = [first] + [i for i in range(len(outcomes)) if i != first]
    for i in order:
        alive = [mi for mi in alive
                 if _matches(exercise, cases[i], _mistake_output(exercise, slot, mi, i, cases[i]),
                             outcomes[i])]
        if not alive:
            break
    return tuple(exercise.mistakes[mi] for mi in alive)

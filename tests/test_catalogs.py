"""Rails for every exercise of every chapter: the reference passes, each cataloged mistake
fails and is named (and only mistakes consistent with every case run are named), every pair
of mistakes is told apart by a public case, a stub is 'not implemented', and every case can
travel to the grader."""

import io

import numpy as np
import pytest

from llmcourse.checks import CHAPTERS, all_exercises, run
from llmcourse.grading import codec

# Challenges are graded by outcome, not by equality: tests/test_challenges.py holds their rails.
EXERCISES = [e for e in all_exercises() if getattr(e, "kind", "") != "challenge"]


def ids(e):
    return e.id


def test_every_chapter_has_exercises():
    """Every chapter package under llmcourse/checks registers exercises, every exercise
    belongs to one, and every chapter of the course (solutions/NN-slug) has its package."""
    from conftest import chapter_names

    assert CHAPTERS, "no chapter packages found"
    assert {e.id.split(".")[0] for e in EXERCISES} == set(CHAPTERS)
    numbered = {name[:2] for name in chapter_names() if name[:2].isdigit()}
    assert set(CHAPTERS) == numbered, f"chapters without exercise specs: {numbered - set(CHAPTERS)}"


@pytest.mark.parametrize("ex", EXERCISES, ids=ids)
def test_reference_passes_public_and_hidden(ex):
    assert run(ex, ex.reference).status == "pass"
    r = run(ex, ex.reference, seed=987, hidden=True)
    assert r.status == "pass", str(r)


def _group(ex, m) -> set[str]:
    """The mistakes ``m`` is declared indistinguishable from (itself included)."""
    return set().union({m.name}, *(set(g) for g in ex.indistinguishable if m.name in g))


@pytest.mark.parametrize("ex", EXERCISES, ids=ids)
def test_each_mistake_fails_and_is_named(ex):
    """Every cataloged mistake fails the hidden check and is named; the diagnosis holds only
    mistakes consistent with every case run (itself, or the ones declared indistinguishable
    from it). On the public cases the same holds by test_mistakes_are_told_apart."""
    assert ex.mistakes, f"{ex.id} has no mistake catalog"
    for m in ex.mistakes:
        r = run(ex, m.impl, hidden=True)
        assert r.status in ("fail", "error"), f"{ex.id}: mistake {m.name!r} passes"
        named = {d.name for d in r.diagnoses}
        assert m in r.diagnoses and named <= _group(ex, m), (
            f"{ex.id}: {m.name!r} diagnosed as {sorted(named)}")
        assert m.name in str(r)


@pytest.mark.parametrize("ex", EXERCISES, ids=ids)
def test_mistakes_are_told_apart(ex):
    """Every pair of cataloged mistakes gives different outputs on some PUBLIC case (so a
    learner's public check names one, not a guess), unless the spec declares the pair in
    ``indistinguishable`` - then the verdict lists both."""
    from itertools import combinations

    from llmcourse.checks.runner import _matches, _mistake_output, _slot

    names = [m.name for m in ex.mistakes]
    assert len(set(names)) == len(names), f"{ex.id}: two mistakes share a name"
    for group in ex.indistinguishable:
        assert len(group) > 1 and set(group) <= set(names), f"{ex.id}: unknown names in {group}"
    cases = ex.cases(0, False)
    slot = _slot(ex, 0, False, cases)
    outs = [[_mistake_output(ex, slot, mi, i, c) for i, c in enumerate(cases)]
            for mi in range(len(ex.mistakes))]
    for a, b in combinations(range(len(ex.mistakes)), 2):
        same = all(_matches(ex, c, outs[a][i], outs[b][i]) and _matches(ex, c, outs[b][i], outs[a][i])
                   for i, c in enumerate(cases))
        if same:
            assert names[b] in _group(ex, ex.mistakes[a]), (
                f"{ex.id}: no public case tells {names[a]!r} from {names[b]!r}: add a case that "
                "does, or declare them in `indistinguishable`")


@pytest.mark.parametrize("ex", EXERCISES, ids=ids)
def test_stub_is_not_implemented(ex):
    ns = {}
    exec("def stub(*args, **kwargs):\n    raise NotImplementedError()", ns)  # no source file
    r = run(ex, ns["stub"])
    assert r.status == "not implemented" and "not implemented yet" in str(r)


@pytest.mark.parametrize("ex", EXERCISES, ids=ids)
def test_cases_are_seeded_and_travel(ex):
    a, b = ex.cases(5, True), ex.cases(5, True)
    arrays_a, arrays_b = {}, {}
    meta_a = [codec.encode((c.args, c.kwargs), arrays_a, str(i)) for i, c in enumerate(a)]
    meta_b = [codec.encode((c.args, c.kwargs), arrays_b, str(i)) for i, c in enumerate(b)]
    assert meta_a == meta_b and all(np.array_equal(arrays_a[k], arrays_b[k], equal_nan=True)
                                    for k in arrays_a)
    buf = io.BytesIO()
    codec.save(buf, arrays_a, meta_a)
    arrays, meta = codec.loads(buf.getvalue())
    assert meta == meta_a
    assert len(ex.cases(5, True)) > len(ex.cases(5, False)), "hidden cases must add cases"

"""Rails for every exercise of every chapter: the reference passes, each cataloged mistake
fails and is named, a stub is 'not implemented', and every case can travel to the grader."""

import io

import numpy as np
import pytest

from llmcourse.checks import CHAPTERS, all_exercises, run
from llmcourse.grading import codec

EXERCISES = all_exercises()


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


@pytest.mark.parametrize("ex", EXERCISES, ids=ids)
def test_each_mistake_fails_and_is_named(ex):
    assert ex.mistakes, f"{ex.id} has no mistake catalog"
    for m in ex.mistakes:
        r = run(ex, m.impl, hidden=True)
        assert r.status in ("fail", "error"), f"{ex.id}: mistake {m.name!r} passes"
        assert r.diagnosis is m, f"{ex.id}: {m.name!r} diagnosed as {r.diagnosis and r.diagnosis.name}"
        assert m.name in str(r)


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

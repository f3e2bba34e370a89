"""Exercise specs of the LEARNER BUILD: the public cases with their answers precomputed.

The grader's sandbox carries a copy of ``llmcourse`` without ``reference`` and without the
instructor's spec modules. In their place each chapter package ``checks/chNN`` holds
precomputed data, one file per exercise (made by the grader before any learner code runs,
from a pristine copy of the course): the public cases' inputs, the expected outputs, each
cataloged mistake's outputs, the rules and how the learner's function is called. This module
(copied into the build as ``llmcourse/checks/_public.py``) turns those files back into
:class:`~llmcourse.checks.core.Exercise` objects, so the ordinary runner - ``check()``,
``check_all()``, the messages and the named diagnosis - works unchanged in the sandbox.

Hidden cases are not in the build: ``check(..., hidden=True)`` inside the sandbox runs no
case, and the hidden verdict is made by the grader outside the sandbox.
"""

from __future__ import annotations

import ast
import builtins
import json
from pathlib import Path

import numpy as np

from llmcourse.checks.challenge import Band, Challenge
from llmcourse.checks.core import Case, Exercise, Mistake, Rule
from llmcourse.checks.kit import ModuleExercise, SeededExercise

KINDS = {"plain": Exercise, "module": ModuleExercise, "seeded": SeededExercise,
         "challenge": Challenge}


def _rebuild(items: list, i: int = 0):
    """Inverse of ``core.flatten`` (pre-order items) -> (value, next index)."""
    import torch

    where, arr, tag = items[i]
    if tag.startswith("torch."):
        dtype = getattr(torch, tag.split(".", 1)[1])
        return torch.from_numpy(np.array(arr)).to(dtype), i + 1
    if tag.startswith("numpy."):
        return np.array(arr), i + 1
    if tag == "bool":
        return bool(arr), i + 1
    if tag == "number":
        return float(arr), i + 1
    for kind in ("tuple", "list"):
        if tag.startswith(kind + "["):
            n, out, j = int(tag[len(kind) + 1:-1]), [], i + 1
            for _ in range(n):
                v, j = _rebuild(items, j)
                out.append(v)
            return (tuple(out) if kind == "tuple" else out), j
    if tag.startswith("dict["):
        out, j = {}, i + 1
        while j < len(items) and items[j][0].startswith(where + "["):  # deeper ones recurse
            raw = items[j][0][len(where) + 1:-1]
            try:
                k = ast.literal_eval(raw)
            except (ValueError, SyntaxError):
                k = raw
            out[k], j = _rebuild(items, j)
        return out, j
    if tag == "NoneType":
        return None, i + 1
    if tag == "str":
        return "", i + 1
    return type(tag, (), {})(), i + 1  # compared by type name only


class _Precomputed:
    """A mistake's output on each public case, standing in for its implementation."""

    def __init__(self, outputs: dict[str, object]):
        self.outputs = outputs  # case label -> items, or "Type: message"


def _exception(line: str) -> BaseException:
    name, _, msg = line.partition(": ")
    cls = getattr(builtins, name, None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            return cls(msg)
        except TypeError:  # e.g. UnicodeDecodeError takes 5 arguments
            pass
    return type(name, (Exception,), {})(msg)


def make_exercise(spec: dict, arrays: dict) -> Exercise:
    from llmcourse.grading import codec, protocol

    base = KINDS[spec["kind"]]

    from llmcourse.checks import calls

    glue_call = getattr(calls, spec["call"]) if spec.get("call") else None

    class PublicExercise(base):  # type: ignore[misc, valid-type]
        id, entry = spec["id"], spec["entry"]
        init, optional = tuple(spec.get("init", ())), tuple(spec.get("optional", ()))
        allow_reference = tuple(spec.get("allow_reference", ()))
        if spec.get("build"):
            build = getattr(calls, spec["build"])

        @property
        def rules(self):
            return tuple(Rule(t, w, tuple(a)) for t, w, a in spec["rules"])

        def cases(self, seed, hidden):
            if hidden:
                return []
            return [Case(c["label"], tuple(codec.decode(c["args"], arrays)),
                         codec.decode(c["kwargs"], arrays), c["rtol"], c["atol"])
                    for c in spec["cases"]]

        def reference_shares_input(self, case):
            return bool(spec["cases"][self._index[case.label]].get("ref_shares", False))

        def expected(self, case):
            ci = self._index[case.label]
            items = protocol.expected_items(arrays, self.id, ci, spec["cases"][ci]["expected"])
            return _rebuild(items)[0]

        def call(self, fn, case):
            if isinstance(fn, _Precomputed):
                got = fn.outputs[case.label]
                if isinstance(got, BaseException):
                    raise got
                return _rebuild(got)[0]
            if glue_call is not None:  # the spec's own call, shipped in checks/calls.py
                return glue_call(self, fn, case)
            return super().call(fn, case)

    if spec["kind"] == "challenge":  # the measurement and the bands, as the spec says
        c = spec["challenge"]
        PublicExercise.metric, PublicExercise.unit = c["metric"], c["unit"]
        PublicExercise.lower_is_better = c["lower_is_better"]
        PublicExercise.relative_to_floor, PublicExercise.budget_s = c["relative_to_floor"], c["budget_s"]
        PublicExercise.bands = tuple(Band(*b) for b in c["bands"])
    ex = PublicExercise()
    ex._index = {c["label"]: i for i, c in enumerate(spec["cases"])}
    mistakes = []
    for mi, (name, explain) in enumerate(spec["mistakes"]):
        outs = {}
        for ci, c in enumerate(spec["cases"]):
            m = c["mistakes"][mi]
            outs[c["label"]] = (_exception(m) if isinstance(m, str)
                                else protocol.mistake_items(arrays, ex.id, ci, mi, m))
        mistakes.append(Mistake(name, explain, _Precomputed(outs)))
    ex.mistakes = tuple(mistakes)
    return ex


def load_chapter(package: str, folder: str | Path) -> None:
    """Register every exercise whose data file is in ``folder`` (called by ``chNN/__init__``)."""
    from llmcourse.grading import codec
    from llmcourse.checks.runner import _REGISTRY

    for path in sorted(Path(folder).glob("*.bin")):
        arrays, spec = codec.load(path)
        ex = make_exercise(spec, arrays)
        _REGISTRY[ex.id] = ex


CHAPTER_INIT = '''"""Learner build: the public cases of chapter {chapter}, precomputed (no reference here)."""
from pathlib import Path as _Path

from .._public import load_chapter as _load

_load(__name__, _Path(__file__).parent)
'''


def glue(ex) -> tuple[str | None, str | None]:
    """The names in ``checks/calls.py`` of the exercise's own ``call`` and ``build`` (None:
    the base class's); raises when either is defined anywhere else (the learner build could
    not call the learner's function: move it to checks/calls.py)."""
    from llmcourse.checks import calls

    names = []
    for attr in ("call", "build"):
        fn = getattr(type(ex), attr, None)
        base = next((getattr(c, attr, None) for c in KINDS.values() if isinstance(ex, c)
                     and getattr(c, attr, None) is fn), None)
        if fn is None or base is not None:
            names.append(None)
        elif getattr(calls, getattr(fn, "__name__", ""), None) is fn:
            names.append(fn.__name__)
        else:
            raise TypeError(f"{ex.id}: its {attr} is {fn.__qualname__} in {fn.__module__}; a "
                            f"custom {attr} goes in llmcourse/checks/calls.py (the learner build "
                            "ships that module, not the spec modules)")
    return names[0], names[1]


def spec_kind(ex) -> str | None:
    """How the learner's function is called: the base kind; its own ``call`` / ``build``, if
    any, come from ``checks/calls.py`` (:func:`glue`). None when neither works."""
    try:
        custom = glue(ex) != (None, None)
    except TypeError:
        return None
    if custom and getattr(ex, "kind", "") != "challenge":
        for kind in ("module", "seeded", "plain"):
            if isinstance(ex, KINDS[kind]):
                return kind
    if getattr(ex, "kind", "") == "challenge":
        return "challenge" if type(ex).call is Exercise.call else None
    for kind, cls in KINDS.items():
        if type(ex).call is cls.call and getattr(type(ex), "build", None) is getattr(cls, "build", None):
            return kind
    return None


def public_data(ex, seed: int) -> tuple[dict, dict]:
    """The data file of one exercise (in the trusted case maker)."""
    from llmcourse.grading import codec, protocol
    from llmcourse.checks.core import exception_line, flatten, tolerance
    from llmcourse.checks.runner import _clone

    arrays, cases = {}, []
    challenge = getattr(ex, "kind", "") == "challenge"  # measured by the grader only
    for ci, case in enumerate([] if challenge else ex.cases(seed, False)):
        expected = flatten(ex.expected(_clone(case)))
        rtol, atol = tolerance(case, expected)
        a, meta = protocol.pack(expected)
        arrays.update({protocol.expected_key(ex.id, ci, k): v for k, v in a.items()})
        ms = []
        for mi, m in enumerate(ex.mistakes):
            try:
                a, m_meta = protocol.pack(flatten(ex.call(m.impl, _clone(case))))
            except Exception as exc:
                ms.append(exception_line(exc))
                continue
            arrays.update({protocol.mistake_key(ex.id, ci, mi, k): v for k, v in a.items()})
            ms.append(m_meta)
        cases.append({"label": case.label, "rtol": case.rtol, "atol": case.atol,
                      "args": codec.encode(tuple(case.args), arrays, protocol.key(ex.id, ci, "a")),
                      "kwargs": codec.encode(case.kwargs, arrays, protocol.key(ex.id, ci, "k")),
                      "expected": meta, "mistakes": ms,
                      "ref_shares": bool(ex.reference_shares_input(case))})
    spec = {"id": ex.id, "entry": ex.entry, "kind": spec_kind(ex),
            "init": list(getattr(ex, "init", ())), "optional": list(getattr(ex, "optional", ())),
            "allow_reference": list(ex.allow_reference),
            "rules": [[r.target, r.why, list(r.allow)] for r in ex.rules],
            "mistakes": [[m.name, m.explain] for m in ex.mistakes], "cases": cases}
    spec["call"], spec["build"] = glue(ex)
    if getattr(ex, "kind", "") == "challenge":
        spec["challenge"] = ex.describe()
    json.dumps(spec)
    return arrays, spec

"""Challenges: exercises graded by what the learner's code achieves, not by equality.

A :class:`Challenge` gives an interface (``entry`` and its arguments) and an outcome target.
Its cases are the inputs the learner's function gets (training data, contexts to predict);
its "expected" value is the **truth** the outcome is measured against (the exact next-byte
distributions, labels, a shipped loss), which never enters the learner's kernel during
grading: the grader measures the outputs in its own process with a NumPy-only metric from
:data:`METRICS`, and maps the figure to a band of partial credit.

The bands, the reference solution's own figure and the floor (the limit nobody can pass,
e.g. the entropy of the truth) are written in the task, so a learner knows where they
stand; ``check()`` reports the figure and the band on the public cases before submitting.

This module must stay importable without torch: the grader's own process uses
:func:`score` and :data:`METRICS`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .core import Exercise, Item
from .metrics import (METRICS, ChallengeError, abs_log_error, accuracy,  # noqa: F401 (re-exported)
                      bits_vs_baseline, cross_entropy_bits, expected_calibration_error,
                      relative_error, relative_error_float16)
from .runner import Result


@dataclass(frozen=True)
class Band:
    """Partial credit: a figure at most ``limit`` (at least, when higher is better) earns
    ``credit`` (a fraction of the cell's points). Bands are listed best first."""

    limit: float
    credit: float
    name: str


@dataclass(frozen=True)
class Attempt:
    """A known weak attempt (a constant predictor, the naive baseline): the rails prove it
    earns at most ``credit``."""

    name: str
    impl: Callable
    credit: float = 0.0


@dataclass
class Score:
    """A challenge's figure on a set of cases, and the band it reaches."""

    figure: float | None
    floor: float | None
    credit: float
    band: str
    message: str


class Challenge(Exercise):
    """Base class of an outcome-graded exercise; subclasses set the class attributes and
    ``cases`` (inputs) and ``truth`` (what the figure is measured against)."""

    kind = "challenge"
    metric: str = ""  # a key of METRICS
    unit: str = ""  # e.g. "bits/char"
    lower_is_better: bool = True
    # The bands apply to the figure minus the floor ("0.31 above the floor") when True.
    relative_to_floor: bool = False
    bands: tuple[Band, ...] = ()
    budget_s: int = 60  # the wall-clock budget of one call on the grader's inputs
    attempts: tuple[Attempt, ...] = ()

    def truth(self, case):  # pragma: no cover - abstract
        raise NotImplementedError

    def expected(self, case):
        return self.truth(case)

    def reference(self, *args, **kwargs):  # the instructor's solution, in the spec
        raise NotImplementedError

    def remember(self, case, secret):
        """Keep what the truth needs but the learner must not learn (the seed of a hidden law,
        of hidden labels) in this process only, keyed by the case's inputs: a case's label
        and inputs go to the learner's kernel, and code there can read them (its own stack)."""
        self.__dict__.setdefault("_secrets", {})[_digest(case.args)] = secret
        return case

    def recall(self, case):
        return self.__dict__.get("_secrets", {})[_digest(case.args)]

    def describe(self) -> dict:
        """What the grader needs to measure and band (JSON, no code)."""
        return {"metric": self.metric, "unit": self.unit, "lower_is_better": self.lower_is_better,
                "relative_to_floor": self.relative_to_floor, "budget_s": int(self.budget_s),
                "bands": [[b.limit, b.credit, b.name] for b in self.bands]}


def _digest(value) -> str:
    import hashlib

    h = hashlib.sha256()

    def walk(v):
        if hasattr(v, "detach") and hasattr(v, "dtype"):
            t = v.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.numpy().tobytes() if str(t.dtype) != "torch.bfloat16" else t.float().numpy().tobytes())
        elif isinstance(v, np.ndarray):
            h.update(f"A{v.dtype}{v.shape}".encode() + np.ascontiguousarray(v).tobytes())
        elif isinstance(v, (list, tuple)):
            h.update(f"L{len(v)}".encode())
            for x in v:
                walk(x)
        elif isinstance(v, dict):
            h.update(f"D{len(v)}".encode())
            for k in sorted(v, key=str):
                h.update(repr(k).encode())
                walk(v[k])
        else:
            h.update(repr(v).encode("utf-8", "backslashreplace"))

    walk(value)
    return h.hexdigest()


def band(meta: dict, figure: float, floor: float | None) -> tuple[float, str]:
    """(credit, band name) of a figure; the bottom band is (0, "below every band")."""
    x = figure - floor if (meta["relative_to_floor"] and floor is not None) else figure
    for limit, credit, name in meta["bands"]:
        if (x <= limit) if meta["lower_is_better"] else (x >= limit):
            return float(credit), str(name)
    return 0.0, "below every band"


def fmt(x: float | None) -> str:
    return "n/a" if x is None else ("inf" if math.isinf(x) else f"{x:.4g}")


def score(meta: dict, truths: list[list[Item]], outputs: list) -> Score:
    """Measure the learner's outputs (one per case: items, or an error line) and band the
    mean figure. Any output that cannot be measured gives credit 0 and says why."""
    metric = METRICS[meta["metric"]]
    figures, floors = [], []
    for ci, (truth, got) in enumerate(zip(truths, outputs)):
        if isinstance(got, str):
            return Score(None, None, 0.0, "no result", f"case {ci + 1} raised {got}")
        try:
            f, fl = metric(truth, got)
        except ChallengeError as exc:
            return Score(None, None, 0.0, "no result", f"case {ci + 1}: {exc}")
        figures.append(f)
        floors.append(fl)
    if not figures or len(outputs) < len(truths):
        return Score(None, None, 0.0, "no result", "no output")
    figure = float(np.mean(figures))
    floor = None if any(f is None for f in floors) else float(np.mean(floors))
    credit, name = band(meta, figure, floor)
    unit = meta["unit"]
    text = f"{fmt(figure)} {unit}"
    if floor is not None:
        text += f" ({fmt(figure - floor)} above the floor of {fmt(floor)})"
    text += f": band '{name}', {credit:.0%} of the points"
    return Score(figure, floor, credit, name, text)


def bands_line(meta: dict) -> str:
    rel = " above the floor" if meta["relative_to_floor"] else ""
    op = "<=" if meta["lower_is_better"] else ">="
    return "; ".join(f"{name}: {op} {limit:g}{rel} -> {credit:.0%}"
                     for limit, credit, name in meta["bands"])


# ---------------------------------------------------------------------------------------
# In the notebook: ``check("NN.id", fn)`` on a challenge measures the public cases.


def run_challenge(ex: Challenge, fn, *, seed: int, hidden: bool):
    """Run ``fn`` on every case, measure, band; a Result whose status is "pass" when the
    figure earns credit, "fail" when it earns none or cannot be measured."""
    import time

    from .core import exception_line, flatten
    from .forbidden import violations_for
    from .runner import _clone, _error_line, _failing_dependency, _learner_cells

    violations = violations_for(ex.entry, ex.rules, _learner_cells(fn))
    if violations:
        return ChallengeResult(ex, "forbidden", 0, 0, str(violations[0]))
    import os

    if os.environ.get("LLMCOURSE_SANDBOX"):  # grading: the grader runs the hidden cases in
        # a step of their own with the challenge's time budget, and measures them itself
        return ChallengeResult(ex, "pass", 0, 0, "measured by the grader, outside this notebook")
    cases = ex.cases(seed, hidden)
    if not cases:  # the learner build holds no hidden cases: the grader measures those
        return ChallengeResult(ex, "pass", 0, 0, "measured by the grader, outside this notebook")
    truths, outputs, seconds = [], [], 0.0
    for case in cases:
        truths.append(flatten(ex.expected(_clone(case))))
        t0 = time.perf_counter()
        try:
            outputs.append(flatten(ex.call(fn, _clone(case))))
        except NotImplementedError:
            return ChallengeResult(ex, "not implemented", len(cases), 0)
        except Exception as exc:  # noqa: BLE001 - the learner's bug, in one line
            outputs.append(_error_line(exc) or exception_line(exc))
        seconds += time.perf_counter() - t0
    s = score(ex.describe(), truths, outputs)
    if seconds > ex.budget_s * max(1, len(cases)):
        s = Score(s.figure, s.floor, 0.0, "over budget", s.message + " - but over the time budget, "
                  "so it scores 0")
    ok = s.credit > 0
    uses = _failing_dependency(ex, fn, 0) if s.credit < 1 else ""  # "fix that first"
    r = ChallengeResult(ex, "pass" if ok else "fail", len(cases), len(cases) if ok else 0, s.message,
                        uses=uses)
    r.score, r.seconds = s, seconds
    return r


class ChallengeResult(Result):
    """A challenge's verdict: the figure, the band and the budget used."""

    score: Score | None = None
    seconds: float = 0.0

    @property
    def credit(self) -> float:
        return self.score.credit if self.score is not None else 0.0

    def __str__(self) -> str:
        ex, head = self.exercise, f"{self.exercise.id} ({self.exercise.entry})"
        if self.status == "not implemented":
            return (f"TODO {head}: not implemented yet - replace `raise NotImplementedError()` "
                    "with your code, run that cell, then this one.")
        if self.status == "pass" and self.score is None:
            return f"CHALLENGE {head}: {self.detail}."
        if self.status == "forbidden" or self.score is None:
            return f"FAIL {head}: {self.detail}"
        meta = ex.describe()
        word = "CHALLENGE" if self.score.credit > 0 else "FAIL"
        lines = [f"{word} {head}: {self.detail}."]
        if self.uses:
            lines.append(f"  {self.uses}")
        over = self.seconds > ex.budget_s
        lines.append(f"  Time: {self.seconds:.1f} s of the {ex.budget_s} s budget"
                     + (" - OVER BUDGET: the grader stops your function at the budget and "
                        "scores it 0" if over else "") + ".")
        lines.append(f"  Bands - {bands_line(meta)}.")
        return "\n".join(lines)

    __repr__ = __str__

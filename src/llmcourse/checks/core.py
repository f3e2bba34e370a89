"""The engine behind ``check()``: exercise specs, cases, comparison and named diagnosis.

An :class:`Exercise` says what the learner builds (``entry``, the name they define), how
to make test cases from a seed, the reference answer, the known mistakes (each one a
small wrong implementation, so a learner's output can be matched against it), and the
shortcuts that are not allowed. Comparison works on NumPy arrays so that the grader can
compare outputs outside the learner's kernel without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

# Default tolerances (rtol, atol) by dtype; a case may set its own, next to its inputs.
TOLERANCES: dict[str, tuple[float, float]] = {
    "torch.float64": (1e-7, 1e-10),
    "torch.float32": (1e-5, 1e-6),
    "torch.float16": (1e-2, 1e-3),
    "torch.bfloat16": (2e-2, 1e-2),
}


@dataclass
class Case:
    """One test input. ``args``/``kwargs`` hold tensors or plain Python values."""

    label: str
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    rtol: float | None = None
    atol: float | None = None


@dataclass(frozen=True)
class Mistake:
    """A known wrong answer: ``impl`` has the entry's signature and makes that mistake."""

    name: str
    explain: str
    impl: Callable


@dataclass(frozen=True)
class Rule:
    """A forbidden shortcut. ``target`` is a dotted name (``torch.nn.functional.softmax``),
    a module prefix (``llmcourse.reference``) or ``.name`` for any method/attribute ``name``."""

    target: str
    why: str
    allow: tuple[str, ...] = ()  # names under a module target that stay allowed


# Forbidden in every exercise, on top of each exercise's own rules.
GLOBAL_RULES = (
    Rule("llmcourse.reference", "write it yourself instead of calling the course's reference"),
    Rule("llmcourse.checks", "the checker's internals are not part of an answer",
         allow=("check", "check_all", "CheckFailed", "Result")),
)


class Exercise:
    """Base class of every exercise spec; subclasses set the class attributes."""

    id: str = ""
    entry: str = ""  # the function/class name the learner defines
    forbid: tuple[Rule, ...] = ()
    mistakes: tuple[Mistake, ...] = ()
    # Parts of ``llmcourse.reference`` a notebook may import (modules, e.g. ("training", "gpt")
    # where it trains with the course's trainer, or names, "training.train_lm"); every other
    # part of the reference stays off limits.
    allow_reference: tuple[str, ...] = ()
    # The message when the reference is called anyway; by default the global rule's, plus
    # "(only its training and gpt modules are allowed here)" when ``allow_reference`` is set.
    reference_why: str = ""
    # Exercises whose functions the task tells the learner to call (e.g. ("06.kd_kl",)):
    # when the learner's one fails its own check, the verdict says "fix that first".
    uses: tuple[str, ...] = ()
    # Groups of mistake names that no public case tells apart (the same outputs on every
    # case): the verdict lists all of them ("consistent with: A, or B"). Every other pair of
    # cataloged mistakes must differ on some public case (a rail checks it).
    indistinguishable: tuple[tuple[str, ...], ...] = ()

    def reference(self, *args, **kwargs):  # pragma: no cover - abstract
        raise NotImplementedError

    def cases(self, seed: int, hidden: bool) -> list[Case]:  # pragma: no cover - abstract
        raise NotImplementedError

    def call(self, fn: Callable, case: Case):
        """Run an implementation (learner's, reference or mistake) on a case."""
        return fn(*case.args, **case.kwargs)

    def expected(self, case: Case):
        return self.call(self.reference, case)

    def reference_shares_input(self, case: Case) -> bool:
        """Does the reference's output share memory with an input on this case (a view of
        it)? Then a learner's view is no slip (see :func:`shared_input`)."""
        from .diagnosis import _clone

        c = _clone(case)
        return shared_input(self.call(self.reference, c), c) is not None

    @property
    def rules(self) -> tuple[Rule, ...]:
        """The forbidden shortcuts, in the order they are tried on each name the code uses:
        calling the course's reference first, then this exercise's own, then the checker's
        internals."""
        course, *others = GLOBAL_RULES
        why = self.reference_why or course.why
        if self.allow_reference and not self.reference_why:
            why += f" (only its {' and '.join(self.allow_reference)} modules are allowed here)"
        course = Rule(course.target, why, tuple(self.allow_reference))
        return tuple(dict.fromkeys((course,) + self.forbid + tuple(others)))


# ---------------------------------------------------------------------------------------
# Turning outputs into arrays, and comparing them.

Item = tuple[str, Any, str]  # (where, array or None, type tag)


def type_tag(value) -> str:
    mod = type(value).__module__
    if mod.startswith("torch") and hasattr(value, "dtype") and hasattr(value, "shape"):
        return str(value.dtype)
    if isinstance(value, np.ndarray):
        return f"numpy.{value.dtype}"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return type(value).__name__


def flatten(value, where: str = "output") -> list[Item]:
    """Flatten a (possibly nested) output into ``(where, array, tag)`` items."""
    tag = type_tag(value)
    if tag.startswith("torch."):
        t = value.detach().cpu()
        if t.dtype.is_complex:
            arr = t.resolve_conj().numpy()
        elif t.dtype in (_torch().bfloat16,) or str(t.dtype).startswith("torch.float8"):
            arr = t.float().numpy()
        else:
            arr = t.resolve_neg().resolve_conj().numpy()
        return [(where, np.array(arr), tag)]
    if tag.startswith("numpy."):
        return [(where, np.array(value), tag)]
    if tag in ("bool", "number"):
        return [(where, np.array(value, dtype=np.float64), tag)]
    if isinstance(value, (tuple, list)):
        items = [(where, None, f"{type(value).__name__}[{len(value)}]")]
        for i, v in enumerate(value):
            items += flatten(v, f"{where}[{i}]")
        return items
    if isinstance(value, dict):
        items = [(where, None, "dict[" + ",".join(sorted(map(str, value))) + "]")]
        for k in sorted(value, key=str):
            items += flatten(value[k], f"{where}[{k!r}]")
        return items
    return [(where, None, tag)]


def _torch():
    import torch

    return torch


def _fmt_index(idx) -> str:
    return "[" + ", ".join(str(int(i)) for i in idx) + "]"


def _fmt_num(x) -> str:
    return f"{x:.6g}" if isinstance(x, (float, np.floating)) else str(x)


def compare(expected: list[Item], got: list[Item], rtol: float, atol: float) -> str | None:
    """Return ``None`` when ``got`` matches ``expected``, else one line saying how it differs."""
    if len(expected) != len(got) or any(e[0] != g[0] for e, g in zip(expected, got)):
        return f"expected {describe(expected)}, got {describe(got)}"
    for (where, e_arr, e_tag), (_, g_arr, g_tag) in zip(expected, got):
        if e_tag != g_tag and not (e_tag == "number" and g_tag in ("number", "bool")):
            hint = ""
            if (e_arr is not None and g_arr is not None and e_arr.shape == g_arr.shape
                    and e_tag.startswith("torch.") and g_tag.startswith("torch.")
                    and _compare_values(where, e_arr, g_arr, 1e-2, 1e-3) is None):
                hint = (" (the values are right: a dtype slip, e.g. a new tensor made without "
                        "`dtype=x.dtype`, or a float64 constant tensor)")
            return f"{where}: expected {_kind(e_tag)}, got {_kind(g_tag)}{hint}"
        if e_arr is None:
            continue
        if e_arr.shape != g_arr.shape:
            return f"{where}: expected shape {tuple(e_arr.shape)}, got {tuple(g_arr.shape)}"
        msg = _compare_values(where, e_arr, g_arr, rtol, atol)
        if msg:
            return msg
    return None


def _compare_values(where, e, g, rtol, atol) -> str | None:
    with np.errstate(all="ignore"):
        return _compare_values_quiet(where, e, g, rtol, atol)


def _compare_values_quiet(where, e, g, rtol, atol) -> str | None:
    if e.ndim == 0:  # a scalar: "got 2.34, expected 3.78"
        ev, gv = e[()], g[()]
        if ev == gv or (np.isnan(ev) and np.isnan(gv)):
            return None
        if np.isfinite(ev) and np.isfinite(gv):
            err = abs(complex(ev) - complex(gv))
            if err <= atol + rtol * abs(ev):
                return None
            if err <= 1e-2 * max(abs(ev), abs(gv)):  # close: the tolerance is the news
                return (f"{where}: got {_fmt_num(gv)}, expected {_fmt_num(ev)} (off by "
                        f"{err:.3g}; tolerance atol={atol:g}, rtol={rtol:g})")
        return f"{where}: got {_fmt_num(gv)}, expected {_fmt_num(ev)}"
    if e.dtype.kind in "biu" and g.dtype.kind in "biu":
        bad = e != g
        if not bad.any():
            return None
        idx = np.argwhere(bad)[0]
        return (f"{where}: {int(bad.sum())} of {bad.size} values differ; first at "
                f"{_fmt_index(idx)}: expected {e[tuple(idx)]}, got {g[tuple(idx)]}")
    e = e.astype(np.complex128 if e.dtype.kind == "c" else np.float64)
    g = g.astype(np.complex128 if g.dtype.kind == "c" else np.float64)
    e_nan, g_nan = np.isnan(e), np.isnan(g)
    if (g_nan & ~e_nan).any():
        idx = np.argwhere(g_nan & ~e_nan)[0]
        return (f"{where}: got nan at {_fmt_index(idx)} where {_fmt_num(e[tuple(idx)])} was "
                f"expected ({int((g_nan & ~e_nan).sum())} nan values in all)")
    if (e_nan & ~g_nan).any():
        idx = np.argwhere(e_nan & ~g_nan)[0]
        return f"{where}: expected nan at {_fmt_index(idx)}, got {_fmt_num(g[tuple(idx)])}"
    e_inf, g_inf = np.isinf(e), np.isinf(g)
    bad_inf = (e_inf | g_inf) & ~(e_nan | g_nan) & (e != g)
    if bad_inf.any():
        idx = tuple(np.argwhere(bad_inf)[0])
        return (f"{where}: at {_fmt_index(idx)} expected {_fmt_num(e[idx])}, "
                f"got {_fmt_num(g[idx])}")
    finite = ~(e_nan | e_inf)
    err = np.where(finite, np.abs(e - g), 0.0)
    limit = atol + rtol * np.abs(np.where(finite, e, 0.0))
    bad = err > limit
    if not bad.any():
        return None
    idx = tuple(np.unravel_index(int(np.argmax(np.where(bad, err, -1.0))), e.shape))
    return (f"{where}: {int(bad.sum())} of {bad.size} values differ; max abs error "
            f"{float(err[idx]):.3g} at {_fmt_index(idx)} (expected {_fmt_num(e[idx])}, "
            f"got {_fmt_num(g[idx])}; tolerance atol={atol:g}, rtol={rtol:g})")


def _kind(tag: str) -> str:
    if tag.startswith("torch."):
        return f"a tensor of dtype {tag}"
    if tag.startswith("numpy."):
        return f"a NumPy array of dtype {tag[6:]}"
    if tag == "NoneType":
        return "None (did you forget to `return`?)"
    return {"number": "a Python number", "bool": "a bool"}.get(tag, f"a {tag}")


def describe(items: list[Item]) -> str:
    if not items:
        return "nothing"
    where, arr, tag = items[0]
    if arr is None and ("[" in tag):
        return f"a {tag}"
    if arr is not None and tag.startswith("torch."):
        return f"a tensor of shape {tuple(arr.shape)} and dtype {tag}"
    return _kind(tag)


def tolerance(case: Case, expected: list[Item]) -> tuple[float, float]:
    """The case's own tolerance, else the loosest default among the output dtypes."""
    rtol, atol = 1e-7, 1e-10
    for _, _, tag in expected:
        r, a = TOLERANCES.get(tag, (1e-7, 1e-10))
        rtol, atol = max(rtol, r), max(atol, a)
    return (case.rtol if case.rtol is not None else rtol,
            case.atol if case.atol is not None else atol)


def exception_line(exc: BaseException) -> str:
    """An exception as one short line: ``TypeError: message``."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


# ---------------------------------------------------------------------------------------
# Outputs that alias inputs


def _tensors(value):
    if hasattr(value, "untyped_storage") and hasattr(value, "dtype"):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)


def shared_input(output, case: Case) -> str | None:
    """The input (``"argument 2"``, ``"`mask`"``) that a tensor of ``output`` shares memory
    with, e.g. a slice or a ``.view`` of it; None when every output tensor is new."""
    def ptr(t):
        try:
            return t.untyped_storage().data_ptr() if t.numel() else None
        except (RuntimeError, AttributeError):  # a tensor without storage (meta, sparse, ...)
            return None

    inputs = [(f"argument {i + 1}", a) for i, a in enumerate(case.args)]
    inputs += [(f"`{k}`", v) for k, v in case.kwargs.items()]
    owners = {}
    for name, value in inputs:
        for t in _tensors(value):
            p = ptr(t)
            if p is not None:
                owners.setdefault(p, name)
    for t in _tensors(output):
        p = ptr(t)
        if p is not None and p in owners:
            return owners[p]
    return None


ALIAS_NOTE = ("Note - your output shares memory with {name} (it is a view of it: a slice, "
              "`.view`, `.T`, ...), so changing either in place later changes the other; the "
              "reference returns a new tensor (`.clone()` makes one).")

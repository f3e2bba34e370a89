"""challenge.ipynb: softmax of long rows in float16 arithmetic only, as close as you can get
to the float64 truth (an outcome-graded challenge).

Why precision and not speed: a speed measured inside the learner's kernel can be forged (the
kernel can patch the clock), so the chapter's challenge is an outcome the grader measures in
its own process; the lab's timings stay measured by ``make bench`` and the GPU report.

"float16 only" is enforced outside the kernel: the metric refuses an output that is not
float16, and the rules below forbid the names that would compute in a wider dtype (a cast,
a wider dtype's name, tensor factories that take the default float32, Python numbers,
NumPy) or that reduce with a wider accumulator inside (torch's ``sum``/``softmax``/``matmul``
accumulate in float32 on the CPU). The grader's run-time operator record
(``grading/opsmode.py``) records operator NAMES, not dtypes, so it adds evidence for the named
operators (e.g. ``aten::sum``, ``aten::_local_scalar_dense`` behind ``float(t)``); a float32
intermediate made by promotion is caught by the rules only.
"""

from __future__ import annotations

import torch

from ...reference import fp16_softmax as ref
from .. import register
from ..challenge import Attempt, Band, Challenge
from ..core import Case, Rule

ROWS, N = 8, 131072
_WIDE = "compute in float16 only: no wider dtype, anywhere in the answer"
_REDUCE = ("torch's reductions accumulate in float32 behind float16's back: add the terms "
           "yourself with float16 operations")
_FACTORY = ("a new tensor would take the default dtype (float32): make it from one you have, "
            "e.g. torch.zeros_like(x) or x.new_zeros(shape), which keep float16")
_SCALAR = "keep every value in a float16 tensor: no Python numbers (float(), .item(), .tolist())"

FORBID = (
    *(Rule(f"torch.{d}", _WIDE) for d in ("float32", "float64", "float", "double", "cfloat",
                                          "cdouble", "complex64", "complex128", "int32",
                                          "int64", "int", "long")),
    *(Rule(f".{m}", _WIDE) for m in ("float", "double", "long", "int", "to", "type", "cfloat",
                                     "cdouble", "set_default_dtype")),
    *(Rule(f".{r}", _REDUCE) for r in ("sum", "nansum", "mean", "nanmean", "cumsum", "prod",
                                       "cumprod", "logsumexp", "softmax", "log_softmax",
                                       "softmin", "matmul", "mm", "bmm", "mv", "dot", "vdot",
                                       "inner", "einsum", "tensordot", "addmm", "addmv",
                                       "baddbmm", "norm", "var", "std", "trapz", "trapezoid",
                                       "sum_to_size", "logcumsumexp", "conv1d", "avg_pool1d")),
    Rule("torch.nn", _REDUCE), Rule("torch.linalg", _REDUCE), Rule("torch.fft", _REDUCE),
    *(Rule(f"torch.{f}", _FACTORY) for f in ("zeros", "ones", "full", "empty", "tensor",
                                             "as_tensor", "asarray", "from_numpy", "arange",
                                             "linspace", "logspace", "eye", "rand", "randn",
                                             "scalar_tensor")),
    *(Rule(f".{s}", _SCALAR) for s in ("item", "tolist", "numpy", "_local_scalar_dense")),
    Rule("numpy", "compute with float16 torch tensors only, not NumPy"),
    Rule("math.fsum", _SCALAR), Rule("decimal", _SCALAR), Rule("fractions", _SCALAR),
)


def _no_shift(x):
    """The textbook formula: exp overflows float16 above 11.09."""
    e = torch.exp(x)
    return e / ref.pairwise_sum(e, compensated=False)


def _sequential(x):
    """Max-shift, then one float16 accumulator adding the terms one by one."""
    e = torch.exp(x - x.amax(dim=-1, keepdim=True))
    acc = torch.zeros_like(e[:, 0])
    for j in range(e.shape[-1]):
        acc = acc + e[:, j]
    return e / acc[:, None]


def _blocked(x, block: int = 128):
    """Max-shift, then sequential float16 sums of blocks of 128, then of the block sums."""
    e = torch.exp(x - x.amax(dim=-1, keepdim=True))
    r = e.reshape(e.shape[0], -1, block)
    part = torch.zeros_like(r[..., 0])
    for j in range(block):
        part = part + r[..., j]
    acc = torch.zeros_like(part[:, 0])
    for j in range(part.shape[-1]):
        acc = acc + part[:, j]
    return e / acc[:, None]


def logits(seed: int, rows: int = ROWS, n: int = N) -> torch.Tensor:
    """float16 logits (rows, n): each row N(offset, scale^2) with offset in [-20, 20] (above
    11.09 exp overflows float16) and scale in [0.75, 1.25] (every row spreads its mass)."""
    g = torch.Generator().manual_seed(seed)
    off = (torch.rand(rows, 1, generator=g, dtype=torch.float64) * 2 - 1) * 20
    scale = 0.75 + 0.5 * torch.rand(rows, 1, generator=g, dtype=torch.float64)
    return (off + scale * torch.randn(rows, n, generator=g, dtype=torch.float64)).to(torch.float16)


@register
class Float16Softmax(Challenge):
    """Softmax of long float16 rows in float16 arithmetic, measured against float64."""
    id = "09.softmax_fp16"
    entry = "softmax_fp16"
    metric = "relative_error_float16"
    unit = "relative error"
    bands = (Band(1.2e-3, 1.0, "A"), Band(5e-3, 0.75, "B"), Band(5e-2, 0.5, "C"), Band(0.2, 0.25, "D"))
    budget_s = 30
    forbid = FORBID
    attempts = (Attempt("no max-shift (exp overflows)", _no_shift, 0.0),
                Attempt("max-shift, one sequential float16 accumulator", _sequential, 0.0),
                Attempt("max-shift, sequential sums of blocks of 128", _blocked, 0.5))

    def cases(self, seed: int, hidden: bool) -> list[Case]:
        return [Case(f"{ROWS} rows of {N} float16 logits", (logits(7000 + seed),))]

    def truth(self, case: Case):
        return torch.softmax(case.args[0].double(), dim=-1)

    def reference(self, x):
        return ref.softmax_fp16(x)

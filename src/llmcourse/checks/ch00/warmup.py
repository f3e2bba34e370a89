"""warmup.ipynb: stable softmax, log-softmax and cross-entropy."""

from __future__ import annotations

import torch

from ...reference import basics as ref
from .. import register
from ..core import Case, Exercise, Mistake, Rule
from ..kit import INF, generator, randn

NO_BUILTIN_SOFTMAX = (
    Rule(".softmax", "build it from exp and sum; PyTorch's softmax is what you are re-implementing"),
    Rule("torch.nn.Softmax", "build it from exp and sum instead of torch.nn.Softmax"),
    Rule(".log_softmax", "build it yourself; PyTorch's log_softmax is what you are re-implementing"),
    Rule("torch.nn.LogSoftmax", "build it yourself instead of torch.nn.LogSoftmax"),
    Rule(".logsumexp", "do the max trick yourself instead of calling logsumexp"),
)


def _logit_cases(seed: int, hidden: bool) -> list[Case]:
    """Inputs shared by softmax and log_softmax: shapes, axes, and the numerically nasty ones."""
    g = generator(seed)
    cases = [
        Case("1-D vector", (randn(g, 5),)),
        Case("2-D batch, dim=-1", (randn(g, 3, 4),), {"dim": -1}),
        Case("2-D, dim=0", (randn(g, 4, 3),), {"dim": 0}),
        Case("square matrix (4, 4)", (randn(g, 4, 4, scale=3.0),)),
        Case("huge logits (+1000)", (torch.tensor([[1000.0, 1001.0, 1002.0], [1000.0, 1000.0, 1000.0]]),)),
        Case("rows on very different scales", (torch.tensor([[1000.0, 1001.0], [-1000.0, -999.0]]),)),
        Case("tiny logits (-1000)", (torch.tensor([[0.0, -1000.0, -1000.0], [-1000.0, -1001.0, -999.0]]),)),
        Case("-inf entries (masked positions)", (torch.tensor([[0.0, -INF, 1.0], [-INF, 2.0, 2.0]]),)),
    ]
    if hidden:
        cases += [
            Case("4-D float64, dim=1", (randn(g, 2, 3, 4, 5, dtype=torch.float64),), {"dim": 1}),
            Case("3-D, dim=-2, large scale", (randn(g, 2, 5, 3, scale=300.0),), {"dim": -2}),
            Case("size-1 axis", (randn(g, 3, 1),), {"dim": -1}),
            Case("float64 around +-1e4", (randn(g, 6, 7, dtype=torch.float64, scale=1e4),)),
            Case("square float64, dim=0", (randn(g, 5, 5, dtype=torch.float64, scale=50.0),), {"dim": 0}),
        ]
    return cases


# -- known mistakes (each is a small wrong implementation) ----------------------------------

def _softmax_no_shift(x, dim=-1):
    e = torch.exp(x)
    return e / e.sum(dim=dim, keepdim=True)


def _softmax_global_max(x, dim=-1):
    e = torch.exp(x - x.max())
    return e / e.sum(dim=dim, keepdim=True)


def _softmax_max_no_keepdim(x, dim=-1):
    e = torch.exp(x - x.amax(dim=dim))
    return e / e.sum(dim=dim, keepdim=True)


def _softmax_all_elements(x, dim=-1):
    e = torch.exp(x - x.amax(dim=dim, keepdim=True))
    return e / e.sum()


def _softmax_last_axis(x, dim=-1):
    return ref.softmax(x, dim=-1)


@register
class Softmax(Exercise):
    """Numerically stable softmax."""
    id = "00.softmax"
    entry = "softmax"
    forbid = NO_BUILTIN_SOFTMAX
    mistakes = (
        Mistake("no max subtraction", "exp(1000) overflows to inf and inf/inf is nan; "
                "subtract the maximum along `dim` before exp.", _softmax_no_shift),
        Mistake("global max instead of per-row max", "subtracting one max for the whole tensor "
                "lets a row far below it underflow to 0/0; take the max along `dim` with keepdim=True.",
                _softmax_global_max),
        Mistake("max without keepdim", "x.amax(dim) drops the axis, so `x - m` broadcasts along the "
                "wrong axis; use keepdim=True.", _softmax_max_no_keepdim),
        Mistake("normalised over all elements", "the denominator must sum along `dim` only "
                "(keepdim=True), not over the whole tensor.", _softmax_all_elements),
        Mistake("ignores `dim`", "the function always works on the last axis; use the `dim` argument.",
                _softmax_last_axis),
    )

    def reference(self, x, dim=-1):
        return ref.softmax(x, dim=dim)

    def cases(self, seed, hidden):
        return _logit_cases(seed, hidden)


def _log_softmax_of_softmax(x, dim=-1):
    return torch.log(ref.softmax(x, dim=dim))


def _log_softmax_no_shift(x, dim=-1):
    return x - torch.log(torch.exp(x).sum(dim=dim, keepdim=True))


def _log_softmax_forgot_max(x, dim=-1):
    m = x.amax(dim=dim, keepdim=True)
    return x - torch.log(torch.exp(x - m).sum(dim=dim, keepdim=True))


def _log_softmax_last_axis(x, dim=-1):
    return ref.log_softmax(x, dim=-1)


@register
class LogSoftmax(Exercise):
    """Numerically stable log-softmax."""
    id = "00.log_softmax"
    entry = "log_softmax"
    forbid = NO_BUILTIN_SOFTMAX
    mistakes = (
        Mistake("log of softmax", "log(softmax(x)) gives -inf once a probability underflows to 0; "
                "use x - m - log(sum(exp(x - m))) directly.", _log_softmax_of_softmax),
        Mistake("no max subtraction", "exp(1000) overflows to inf; subtract the maximum along `dim` "
                "inside the exp.", _log_softmax_no_shift),
        Mistake("max not added back", "log(sum(exp(x))) = m + log(sum(exp(x - m))): the m must be "
                "subtracted from x too.", _log_softmax_forgot_max),
        Mistake("ignores `dim`", "the function always works on the last axis; use the `dim` argument.",
                _log_softmax_last_axis),
    )

    def reference(self, x, dim=-1):
        return ref.log_softmax(x, dim=dim)

    def cases(self, seed, hidden):
        return _logit_cases(seed, hidden)


def _ce_sum(logits, targets):
    return -ref.log_softmax(logits).gather(-1, targets.unsqueeze(-1)).sum()


def _ce_no_minus(logits, targets):
    return ref.log_softmax(logits).gather(-1, targets.unsqueeze(-1)).mean()


def _ce_log_of_softmax(logits, targets):
    return -torch.log(ref.softmax(logits)).gather(-1, targets.unsqueeze(-1)).mean()


def _ce_mean_over_classes(logits, targets):
    return -ref.log_softmax(logits).mean()


def _ce_columns(logits, targets):
    return -ref.log_softmax(logits)[..., targets].mean()


@register
class CrossEntropy(Exercise):
    """Cross-entropy from logits."""
    id = "00.cross_entropy"
    entry = "cross_entropy"
    uses = ("00.log_softmax",)
    forbid = NO_BUILTIN_SOFTMAX + (
        Rule(".cross_entropy", "compute it from your own log_softmax instead of F.cross_entropy"),
        Rule(".nll_loss", "pick the target log-probabilities yourself instead of F.nll_loss"),
        Rule("torch.nn.CrossEntropyLoss", "compute it yourself instead of nn.CrossEntropyLoss"),
        Rule("torch.nn.NLLLoss", "compute it yourself instead of nn.NLLLoss"),
    )
    mistakes = (
        Mistake("sum instead of mean", "average the per-example losses (divide by the number of "
                "targets), do not sum them.", _ce_sum),
        Mistake("missing minus sign", "cross-entropy is the NEGATIVE mean log-probability of the "
                "targets; yours is negative.", _ce_no_minus),
        Mistake("log of softmax", "log(softmax(logits)) is -inf when a probability underflows; "
                "use your stable log_softmax.", _ce_log_of_softmax),
        Mistake("mean over all classes", "pick each row's target log-probability (gather along the "
                "last axis) before averaging, instead of averaging every class.", _ce_mean_over_classes),
        Mistake("targets indexed as columns for every row", "logp[:, targets] takes every target for "
                "every row; take one entry per row, e.g. logp.gather(-1, targets[..., None]).",
                _ce_columns),
    )

    def reference(self, logits, targets):
        return ref.cross_entropy(logits, targets)

    def cases(self, seed, hidden):
        g = generator(seed)

        def targets(*shape, c):
            return torch.randint(0, c, shape, generator=g)

        cases = [
            Case("batch of 4, 5 classes", (randn(g, 4, 5), targets(4, c=5))),
            Case("single example", (randn(g, 1, 3), targets(1, c=3))),
            Case("huge logits (+-1000)", (torch.tensor([[1000.0, 0.0, -1000.0], [0.0, 1000.0, 0.0]]),
                                         torch.tensor([2, 1]))),
            Case("uniform logits: loss = log(C)", (torch.zeros(3, 8), torch.tensor([0, 3, 7]))),
        ]
        if hidden:
            cases += [
                Case("3-D (batch, seq, vocab)", (randn(g, 2, 3, 7), targets(2, 3, c=7))),
                Case("float64, 50 classes", (randn(g, 6, 50, dtype=torch.float64, scale=20.0),
                                             targets(6, c=50))),
                Case("confident and right", (torch.tensor([[30.0, -30.0], [-30.0, 30.0]]),
                                             torch.tensor([0, 1]))),
            ]
        return cases

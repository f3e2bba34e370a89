"""calibration.ipynb: reliability bins and ECE (equal-width and equal-mass), temperature scaling.

Tolerances: the ECE and the bins are sums of at most a few thousand terms, compared at the
default float32/float64 tolerances. The fitted temperature is the minimiser of a smooth convex
function (in 1/T); any method that converges to 1e-6 relative passes ``rtol = 1e-4``.
"""

from __future__ import annotations

import math

import torch

from ...reference import calibration as ref
from .. import calls, register
from ..core import Case, Exercise, Mistake
from ..kit import F32, F64, generator, knob, randn


def _bins(conf, n_bins, scheme, *, closed="right", big_first=True):
    n = conf.shape[0]
    if scheme == "width":
        if closed == "left":
            return (torch.floor(conf.double() * n_bins)).clamp(0, n_bins - 1).long()
        return ref.bin_index(conf, n_bins, scheme)
    if big_first:
        return ref.bin_index(conf, n_bins, scheme)
    order = torch.sort(conf, stable=True).indices
    sizes = [n // n_bins + (1 if m >= n_bins - n % n_bins else 0) for m in range(n_bins)]
    ids = torch.repeat_interleave(torch.arange(n_bins), torch.tensor(sizes))
    return torch.empty(n, dtype=torch.int64).scatter_(0, order, ids)


def _reliability(confidence, correct, n_bins=10, scheme="width", *, weight="share",
                 closed="right", big_first=True):
    idx = _bins(confidence, n_bins, scheme, closed=closed, big_first=big_first)
    counts = torch.bincount(idx, minlength=n_bins)
    safe = counts.clamp_min(1).double()
    acc = torch.zeros(n_bins, dtype=F64).index_add_(0, idx, correct.double()) / safe
    conf = torch.zeros(n_bins, dtype=F64).index_add_(0, idx, confidence.double()) / safe
    gap = (acc - conf).abs()
    if weight == "share":
        ece = (counts.double() / confidence.shape[0] * gap).sum()
    elif weight == "count":
        ece = (counts.double() * gap).sum()
    elif weight == "bins":
        ece = gap[counts > 0].mean()
    else:  # every bin, empty ones too
        ece = gap.mean()
    dtype = confidence.dtype
    return ece.to(dtype), counts, acc.to(dtype), conf.to(dtype)


def _predictions(g, n, dtype=F32, over=1.5):
    """Confidences of an over-confident classifier and whether each was right."""
    conf = torch.rand(n, generator=g, dtype=F64) * 0.9 + 0.1
    correct = torch.rand(n, generator=g, dtype=F64) < conf ** over
    return conf.to(dtype), correct


@register
class Reliability(Exercise):
    """Reliability bins and the expected calibration error."""
    id = "10.reliability"
    entry = "reliability"
    mistakes = (
        Mistake("ECE averaged over bins instead of weighted", "weight each bin's gap by its share "
                "of the predictions, n_m / n: a bin with 2 predictions must not count as much as "
                "one with 2000.", knob(_reliability, weight="bins")),
        Mistake("ECE weighted by bin counts but not divided by n", "the weights are n_m / n (they "
                "sum to 1), not n_m.", knob(_reliability, weight="count")),
        Mistake("ECE averaged over all bins, empty ones too", "weight each gap by n_m / n: empty "
                "bins weigh 0.", knob(_reliability, weight="all")),
        Mistake("equal-width bins closed on the left", "bin m holds m/M < c <= (m+1)/M (Guo et "
                "al.): a confidence of exactly 0.5 with M = 4 belongs to bin 1, not 2 "
                "(ceil(c * M) - 1, clamped to 0).", knob(_reliability, closed="left")),
        Mistake("equal-mass: the larger chunks last", "cut the sorted predictions like "
                "numpy.array_split: when n is not a multiple of M, the FIRST n % M bins get one "
                "more.", knob(_reliability, big_first=False)),
    )

    def reference(self, confidence, correct, n_bins=10, scheme="width"):
        return ref.reliability(confidence, correct, n_bins, scheme)

    def cases(self, seed, hidden):
        g = generator(seed)
        edges = torch.tensor([0.25, 0.5, 0.5, 0.75, 1.0, 0.3, 0.9, 0.6])
        edge_ok = torch.tensor([True, False, True, True, True, False, True, False])
        cases = [
            Case("200 predictions, 10 equal-width bins", _predictions(g, 200)),
            Case("sparse bins: 30 predictions, 15 bins", _predictions(g, 30), {"n_bins": 15}),
            Case("confidences on the bin edges, 4 bins", (edges, edge_ok), {"n_bins": 4}),
            Case("equal-mass, 103 predictions, 10 bins", _predictions(g, 103), {"scheme": "mass"}),
        ]
        if hidden:
            cases += [
                Case("float64, 1000 predictions, 20 bins", _predictions(g, 1000, F64), {"n_bins": 20}),
                Case("equal-mass float64, 57 predictions, 5 bins", _predictions(g, 57, F64),
                     {"n_bins": 5, "scheme": "mass"}),
                Case("correct given as 0/1 floats", (_predictions(g, 80)[0],
                                                     _predictions(g, 80)[1].float()), {"n_bins": 8}),
                Case("a perfectly calibrated bin layout", (torch.tensor([0.5] * 4 + [1.0] * 2),
                                                          torch.tensor([1, 0, 1, 0, 1, 1]).bool()),
                     {"n_bins": 2}),
            ]
        return cases


# ---------------------------------------------------------------------------------------
# 10.temperature_scaling

def _golden(f, lo=math.log(1e-3), hi=math.log(1e3), iters=200):
    r = (math.sqrt(5) - 1) / 2
    a, b = lo, hi
    c, d = b - r * (b - a), a + r * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(iters):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - r * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + r * (b - a)
            fd = f(d)
    return math.exp((a + b) / 2)


def _fit_inverse(logits, labels):
    return 1.0 / ref.fit_temperature(logits, labels)


def _fit_wrong_axis(logits, labels):
    z = logits.double()

    def nll(log_t):
        logp = torch.log_softmax(z / math.exp(log_t), dim=0)
        return -logp.gather(-1, labels[:, None]).mean().item()
    return _golden(nll)


def _logits(g, n, C, T_true, dtype=F32, scale=3.0):
    z = randn(g, n, C, dtype=F64, scale=scale)
    labels = torch.multinomial(torch.softmax(z / T_true, -1), 1, generator=g).squeeze(-1)
    return z.to(dtype), labels


@register
class TemperatureScaling(Exercise):
    """Fit one temperature on held-out logits by minimising the NLL."""
    id = "10.temperature_scaling"
    entry = "fit_temperature"
    mistakes = (
        Mistake("returned 1/T", "return the temperature T that DIVIDES the logits (T > 1 for an "
                "over-confident model), not the factor 1/T that multiplies them.", _fit_inverse),
        Mistake("softmax over the examples", "the softmax runs over the CLASSES of each example "
                "(dim=-1), not over the batch.", _fit_wrong_axis),
    )

    def reference(self, logits, labels):
        return ref.fit_temperature(logits, labels)

    call = calls.scalar

    def cases(self, seed, hidden):
        g = generator(seed)
        tol = {"rtol": 1e-4, "atol": 1e-6}
        cases = [
            Case("over-confident model (true T = 2)", _logits(g, 400, 10, 2.0), **tol),
            Case("under-confident model (true T = 0.5)", _logits(g, 300, 5, 0.5, scale=1.0), **tol),
            Case("calibrated already (true T = 1)", _logits(g, 500, 8, 1.0), **tol),
        ]
        if hidden:
            cases += [
                Case("float64, 50 classes, true T = 3", _logits(g, 600, 50, 3.0, F64), **tol),
                Case("two classes, true T = 1.5", _logits(g, 200, 2, 1.5), **tol),
                Case("few examples", _logits(g, 30, 4, 2.5), **tol),
            ]
        return cases

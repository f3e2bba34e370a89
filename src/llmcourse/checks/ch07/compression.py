"""compression.ipynb: int8 absmax and zero-point quantization, magnitude pruning.
"""

from __future__ import annotations

import math

import torch

from ...reference import compression as compression_ref
from .. import register
from ..core import Case, Exercise, Mistake, Rule
from ..kit import F64, generator, randn

# The notebooks train with the course's trainer and GPT: those two reference modules may
# be imported; every other part of the reference stays off limits.
TRAINER = ("training", "gpt")


# ---------------------------------------------------------------------------------------
# 07.absmax_quantize, 07.zeropoint_quantize

NO_BUILTIN_QUANT = (
    Rule("torch.ao", "quantize with round and clamp yourself instead of torch.ao.quantization"),
    Rule("torch.quantization", "quantize with round and clamp yourself"),
    Rule(".quantize_per_tensor", "quantize with round and clamp yourself"),
    Rule(".quantize_per_channel", "quantize with round and clamp yourself"),
)


def _amax_of(x, dim):
    return x.abs().amax() if dim is None else x.abs().amax(dim=dim, keepdim=True)


def _absmax_trunc(x, dim=None):
    scale = _amax_of(x, dim) / 127
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    return (x / scale).to(torch.int8), scale


def _absmax_no_dim(x, dim=None):
    return compression_ref.absmax_quantize(x, None)


def _absmax_inverse(x, dim=None):
    q, scale = compression_ref.absmax_quantize(x, dim)
    return q, 1 / scale


def _quant_cases(seed, hidden):
    g = generator(seed)
    w = randn(g, 6, 10, dtype=F64, scale=0.05)
    w[2] = 0.0  # a row of zeros (scale 1 there)
    relu = randn(g, 3, 16, dtype=F64).relu() + 0.25  # all positive: 0 is outside [min, max]
    cases = [Case("weight (6, 10), one scale", (w,)),
             Case("weight (6, 10), a scale per row (dim=1), a zero row", (w,), {"dim": 1}),
             Case("positive activations (3, 16), per row", (relu,), {"dim": -1}),
             Case("small float32 vector", (torch.tensor([0.5, -1.25, 3.0, 0.0, 2.2]),))]
    if hidden:
        x3 = randn(g, 2, 5, 7, dtype=F64, scale=3.0)
        cases += [Case("3-D, a scale per slice along dim 0", (x3,), {"dim": 0}),
                  Case("outlier column", (torch.cat([randn(g, 8, 5, dtype=F64),
                                                      torch.full((8, 1), 60.0, dtype=F64)], 1),), {"dim": 1}),
                  Case("all negative, per column", (-(randn(g, 4, 6, dtype=F64).abs() + 0.1),), {"dim": 0}),
                  Case("all zeros", (torch.zeros(3, 4, dtype=F64),))]
    return cases


@register
class AbsmaxQuantize(Exercise):
    """int8 absmax (symmetric) quantization."""
    id = "07.absmax_quantize"
    entry = "absmax_quantize"
    allow_reference = TRAINER
    forbid = NO_BUILTIN_QUANT
    mistakes = (
        Mistake("truncation instead of rounding", ".to(torch.int8) truncates towards zero; "
                "round first (torch.round).", _absmax_trunc),
        Mistake("ignores `dim`", "with dim given, take max|x| along that axis (keepdim=True): "
                "one scale per slice.", _absmax_no_dim),
        Mistake("inverse scale returned", "return the step `scale = max|x| / 127`, so that "
                "x ~ q * scale (not 127 / max|x|).", _absmax_inverse),
    )

    def reference(self, x, dim=None):
        return compression_ref.absmax_quantize(x, dim)

    def cases(self, seed, hidden):
        return _quant_cases(seed, hidden)


def _zp_range(x, dim):
    if dim is None:
        return x.amin(), x.amax()
    return x.amin(dim=dim, keepdim=True), x.amax(dim=dim, keepdim=True)


def _zp_no_zero(x, dim=None):
    lo, hi = _zp_range(x, dim)
    scale = (hi - lo) / 255
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    z = (-128 - torch.round(lo / scale)).to(torch.int32)
    return (torch.round(x / scale) + z).clamp(-128, 127).to(torch.int8), scale, z


def _zp_trunc(x, dim=None):
    _, scale, z = compression_ref.zeropoint_quantize(x, dim)
    return ((x / scale).trunc() + z).clamp(-128, 127).to(torch.int8), scale, z


def _zp_float_z(x, dim=None):
    lo, hi = _zp_range(x, dim)
    lo, hi = lo.clamp(max=0), hi.clamp(min=0)
    scale = (hi - lo) / 255
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    z = -128 - lo / scale
    return torch.round(x / scale + z).clamp(-128, 127).to(torch.int8), scale, z


def _zp_no_dim(x, dim=None):
    return compression_ref.zeropoint_quantize(x, None)


@register
class ZeropointQuantize(Exercise):
    """int8 zero-point (asymmetric) quantization."""
    id = "07.zeropoint_quantize"
    entry = "zeropoint_quantize"
    allow_reference = TRAINER
    forbid = NO_BUILTIN_QUANT
    mistakes = (
        Mistake("range does not include 0", "extend [min, max] to contain 0 (lo = min(min, 0), "
                "hi = max(max, 0)) so that 0 is exactly representable.", _zp_no_zero),
        Mistake("truncation instead of rounding", "round x / scale (torch.round), do not "
                "truncate.", _zp_trunc),
        Mistake("zero point not rounded", "the zero point is an integer: "
                "z = -128 - round(lo / scale), stored as int32.", _zp_float_z),
        Mistake("ignores `dim`", "with dim given, take min and max along that axis "
                "(keepdim=True).", _zp_no_dim),
    )

    def reference(self, x, dim=None):
        return compression_ref.zeropoint_quantize(x, dim)

    def cases(self, seed, hidden):
        return _quant_cases(seed, hidden)


# ---------------------------------------------------------------------------------------
# 07.magnitude_prune

def _prune_k(w, k, key):
    flat = w.flatten().clone()
    if k > 0:
        flat[key(flat).argsort(stable=True)[:k]] = 0
    return flat.view_as(w)


def _prune_largest(w, sparsity):
    return _prune_k(w, math.floor(sparsity * w.numel()), lambda f: -f.abs())


def _prune_signed(w, sparsity):
    return _prune_k(w, math.floor(sparsity * w.numel()), lambda f: f)


def _prune_density(w, sparsity):
    return _prune_k(w, w.numel() - math.floor(sparsity * w.numel()), lambda f: f.abs())


def _prune_rows(w, sparsity):
    if w.ndim < 2:
        return compression_ref.magnitude_prune(w, sparsity)
    return torch.stack([compression_ref.magnitude_prune(r, sparsity) for r in w])


@register
class MagnitudePrune(Exercise):
    """Magnitude pruning."""
    id = "07.magnitude_prune"
    entry = "magnitude_prune"
    allow_reference = TRAINER
    forbid = (Rule("torch.nn.utils.prune", "zero the smallest weights yourself instead of "
                   "torch.nn.utils.prune"),)
    mistakes = (
        Mistake("pruned the largest weights", "sort by |w| ascending: the SMALLEST magnitudes "
                "go first.", _prune_largest),
        Mistake("signed values instead of magnitudes", "rank by |w|: -3 is a large weight, not "
                "a small one.", _prune_signed),
        Mistake("sparsity read as density", "sparsity is the fraction set to ZERO: prune "
                "floor(sparsity * numel) entries.", _prune_density),
        Mistake("pruned row by row", "rank all entries of the tensor together (one threshold "
                "for the whole tensor), not each row separately.", _prune_rows),
    )

    def reference(self, w, sparsity):
        return compression_ref.magnitude_prune(w, sparsity)

    def cases(self, seed, hidden):
        g = generator(seed)
        w = randn(g, 4, 10)
        w[0] *= 0.1  # one row of small weights: global and per-row pruning differ
        cases = [Case("(4, 10) at 50 %", (w, 0.5)),
                 Case("vector of 8 at 25 %", (randn(g, 8), 0.25)),
                 Case("(6, 5) at 60 %", (randn(g, 6, 5, dtype=F64) * torch.linspace(0.1, 2, 5, dtype=F64), 0.6))]
        if hidden:
            cases += [Case("sparsity 0: unchanged", (randn(g, 3, 3), 0.0)),
                      Case("sparsity 1: all zero", (randn(g, 2, 5), 1.0)),
                      Case("3-D float64 at 90 %", (randn(g, 2, 4, 5, dtype=F64), 0.9)),
                      Case("(7, 3) at 33 %: floor(6.93) = 6 entries", (randn(g, 7, 3), 0.33))]
        return cases

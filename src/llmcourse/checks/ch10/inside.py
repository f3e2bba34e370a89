"""inside.ipynb: ALiBi's bias (length generalisation), the logit lens and the induction-head
score (interpretability)."""

from __future__ import annotations

import math

import torch

from ...reference import interpret as iref
from ...reference import positions as pref
from ...reference.transformer import layer_norm
from .. import register
from ..core import Case, Exercise, Mistake, Rule
from ..kit import F32, F64, generator, randn

NO_HF = (Rule("transformers", "build the bias yourself; Hugging Face's BLOOM/MPT ALiBi tensor "
              "is what the tests compare it with"),)


# ---------------------------------------------------------------------------------------
# 10.alibi_bias

def _bias(slopes, T, dtype, sign=-1.0, causal=True):
    i = torch.arange(T, dtype=F64)
    dist = i[:, None] - i[None, :]
    bias = sign * slopes[:, None, None] * dist
    if causal:
        bias = bias.masked_fill(dist < 0, float("-inf"))
    return bias.to(dtype)


def _alibi_naive_slopes(n_heads, T):
    s = torch.tensor([2.0 ** (-8.0 * (h + 1) / n_heads) for h in range(n_heads)], dtype=F64)
    return _bias(s, T, F32)


def _alibi_even_extra(n_heads, T):
    n2 = 2 ** int(math.floor(math.log2(n_heads)))
    base = [2.0 ** (-8.0 * (h + 1) / n2) for h in range(n2)]
    extra = [2.0 ** (-8.0 * (h + 1) / (2 * n2)) for h in range(2 * n2)][1::2][:n_heads - n2]
    return _bias(torch.tensor(base + extra, dtype=F64), T, F32)


def _alibi_reversed(n_heads, T):
    return _bias(pref.alibi_slopes(n_heads).flip(0), T, F32)


def _alibi_sign(n_heads, T):
    return _bias(pref.alibi_slopes(n_heads), T, F32, sign=1.0)


def _alibi_no_mask(n_heads, T):
    return _bias(pref.alibi_slopes(n_heads), T, F32, causal=False)


@register
class AlibiBias(Exercise):
    """ALiBi's (n_heads, T, T) attention bias with the causal mask folded in."""

    id = "10.alibi_bias"
    entry = "alibi_bias"
    forbid = NO_HF
    mistakes = (
        Mistake("slopes for non-power-of-two heads", "2^(-8(h+1)/n) is the rule only when n is "
                "a power of two. Otherwise take the slopes of n' = 2^floor(log2 n) heads, then "
                "every other slope of 2n' heads (2^(-8/(2n')), 2^(-24/(2n')), ...) until there "
                "are n (the paper's code, BLOOM and MPT).", _alibi_naive_slopes),
        Mistake("extra slopes from the wrong half of the 2n' sequence", "the extra slopes are "
                "the EVEN-indexed (0, 2, 4, ...) ones of the 2n'-head sequence, 2^(-8 (2k+1) / "
                "(2n')): the ones that fall between the n' slopes.", _alibi_even_extra),
        Mistake("slopes in reverse order", "head 0 gets the LARGEST slope 2^(-8/n) (the most "
                "local head), the last head the smallest.", _alibi_reversed),
        Mistake("bias sign flipped", "the bias is a PENALTY, -m (i - j) <= 0: far keys get lower "
                "scores. A positive bias makes heads prefer the most distant tokens.", _alibi_sign),
        Mistake("no causal mask", "entries with j > i (future keys) must be -inf.", _alibi_no_mask),
    )

    def reference(self, n_heads, T):
        return pref.alibi_bias(n_heads, T)

    def cases(self, seed, hidden):
        g = generator(seed)
        T = int(torch.randint(5, 9, (1,), generator=g))
        cases = [Case("8 heads (a power of two), T = 6", (8, 6)),
                 Case(f"6 heads, T = {T}", (6, T)),
                 Case("12 heads, T = 5", (12, 5)),
                 Case("2 heads, T = 4", (2, 4))]
        if hidden:
            cases += [Case("1 head, T = 3", (1, 3)),
                      Case("5 heads, T = 7", (5, 7)),
                      Case("16 heads, T = 2", (16, 2)),
                      Case("3 heads, T = 1", (3, 1)),
                      Case("20 heads, T = 9", (20, 9))]
        return cases


# ---------------------------------------------------------------------------------------
# 10.logit_lens

def _lens_no_norm(resid, w, b, unembed, eps=1e-5):
    return resid @ unembed.T


def _lens_no_affine(resid, w, b, unembed, eps=1e-5):
    return layer_norm(resid, None, None, eps) @ unembed.T


def _lens_unbiased(resid, w, b, unembed, eps=1e-5):
    mean = resid.mean(-1, keepdim=True)
    var = resid.var(-1, keepdim=True, unbiased=True)
    return ((resid - mean) / torch.sqrt(var + eps) * w + b) @ unembed.T


def _lens_log_probs(resid, w, b, unembed, eps=1e-5):
    return torch.log_softmax(iref.logit_lens(resid, w, b, unembed, eps), -1)


@register
class LogitLens(Exercise):
    """Read residual vectors through the final LayerNorm and the unembedding."""

    id = "10.logit_lens"
    entry = "logit_lens"
    mistakes = (
        Mistake("final norm skipped", "the unembedding only ever reads ln_f's output: normalise "
                "the residual with ln_f (weight and bias) first.", _lens_no_norm),
        Mistake("norm without its weight and bias", "ln_f is LayerNorm(x) * weight + bias; the "
                "learned scale and shift are part of what the unembedding reads.", _lens_no_affine),
        Mistake("unbiased variance (divided by C - 1)", "LayerNorm uses the biased variance, "
                "the mean of (x - mean)^2 (torch.var's default unbiased=True is not it).",
                _lens_unbiased),
        Mistake("returned log-probabilities, not logits", "return the logits; apply "
                "log_softmax only where you need probabilities.", _lens_log_probs),
    )

    def reference(self, resid, ln_weight, ln_bias, unembed, eps=1e-5):
        return iref.logit_lens(resid, ln_weight, ln_bias, unembed, eps)

    def cases(self, seed, hidden):
        g = generator(seed)

        def case(label, lead, C, V, dtype=F32, eps=1e-5, scale=3.0):
            resid = randn(g, *lead, C, dtype=dtype, scale=scale) + randn(g, C, dtype=dtype)
            w = 1.0 + randn(g, C, dtype=dtype, scale=0.3)
            b = randn(g, C, dtype=dtype, scale=0.2)
            u = randn(g, V, C, dtype=dtype, scale=C ** -0.5)
            return Case(label, (resid, w, b, u), {"eps": eps}, 1e-4 if dtype == F32 else None,
                        1e-5 if dtype == F32 else None)

        cases = [case("(layers + 1, B, T, C) = (3, 2, 4, 8), V = 11", (3, 2, 4), 8, 11),
                 case("one vector (C,) = (16,), V = 5", (), 16, 5),
                 case("float64 (5, 3, 6), V = 20", (5, 3), 6, 20, dtype=F64),
                 case("eps = 0.1, large residual", (2, 3), 4, 7, eps=0.1, scale=10.0)]
        if hidden:
            cases += [case("(5, 1, 7, 32), V = 256", (5, 1, 7), 32, 256),
                      case("float64, tiny residual, eps = 1e-3", (4, 5), 8, 9, dtype=F64, eps=1e-3,
                           scale=0.01),
                      case("C = 2", (6,), 2, 3)]
        return cases


# ---------------------------------------------------------------------------------------
# 10.induction_score

def _diag_score(attn, offset_from_t, start_at=None):
    T = attn.shape[-1]
    n = T // 2
    t = torch.arange(n if start_at is None else start_at, 2 * n)
    return attn[..., t, t - offset_from_t].mean(-1)


def _ind_duplicate(attn):
    n = attn.shape[-1] // 2
    return _diag_score(attn, n)


def _ind_previous(attn):
    return _diag_score(attn, 1)


def _ind_whole_diagonal(attn):
    n = attn.shape[-1] // 2
    return _diag_score(attn, n - 1, start_at=n - 1)


def _ind_sum(attn):
    n = attn.shape[-1] // 2
    return _diag_score(attn, n - 1) * n


def _random_attention(g, *lead, T, dtype=F32, sharp=2.0):
    scores = randn(g, *lead, T, T, dtype=F64, scale=sharp)
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), -1).to(dtype)


def _perfect(n, dtype=F32, to=None):
    """Attention of a perfect induction head (or another head type) on 2n positions."""
    T = 2 * n
    a = torch.zeros(T, T, dtype=F64)
    a[0, 0] = 1.0
    for t in range(1, T):
        src = t - n + 1 if (t >= n and to is None) else (t - to if to is not None and t >= to else 0)
        a[t, src] = 1.0
    return a.to(dtype)


@register
class InductionScore(Exercise):
    """Mean attention from the second copy of a repeated sequence to "the token after the
    previous occurrence"."""

    id = "10.induction_score"
    entry = "induction_score"
    mistakes = (
        Mistake("attends to the previous occurrence itself (t - n)", "that is a "
                "duplicate-token head. An induction head at t looks one step further, at "
                "t - n + 1: the token that followed the earlier copy of the current one, which "
                "it predicts comes next.", _ind_duplicate),
        Mistake("previous-token offset (t - 1)", "t - 1 is a previous-token head's target; the "
                "induction target is t - n + 1 (n = T / 2).", _ind_previous),
        Mistake("included the first half's last position", "average over the n positions of the "
                "SECOND copy only, t = n, ..., 2n - 1.", _ind_whole_diagonal),
        Mistake("summed instead of averaged", "the score is a mean over the n positions, between "
                "0 and 1.", _ind_sum),
    )

    def reference(self, attn):
        return iref.induction_score(attn)

    def cases(self, seed, hidden):
        g = generator(seed)
        cases = [Case("(layers, heads, T, T) = (2, 3, 10, 10)", (_random_attention(g, 2, 3, T=10),)),
                 Case("a perfect induction head, n = 6", (_perfect(6),)),
                 Case("float64 (4, 2, 2, 16, 16)", (_random_attention(g, 4, 2, 2, T=16, dtype=F64),)),
                 Case("a previous-token head scores 0, n = 5", (_perfect(5, to=1),))]
        if hidden:
            cases += [Case("one map (8, 8)", (_random_attention(g, T=8, sharp=4.0),)),
                      Case("n = 2: (3, 4, 4)", (_random_attention(g, 3, T=4),)),
                      Case("float64, n = 20, sharp maps", (_random_attention(g, 2, T=40, dtype=F64,
                                                                             sharp=6.0),)),
                      Case("a perfect induction head, n = 3, float64", (_perfect(3, dtype=F64),))]
        return cases

"""sdpa.ipynb: scaled dot-product attention with masks, the causal and the padding mask.

Boolean masks are True where attention is allowed (see ``llmcourse.reference.attention``).
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F

from ...reference import attention as attention_ref
from .. import register
from ..core import Case, Exercise, Mistake, Rule
from ..kit import F32, F64, INF, generator, randn


NO_BUILTIN_ATTENTION = (
    Rule(".scaled_dot_product_attention", "compute softmax(q k^T / sqrt(d_k)) v yourself; "
         "F.scaled_dot_product_attention is what you are re-implementing"),
    Rule("torch.nn.MultiheadAttention", "build the heads yourself instead of nn.MultiheadAttention"),
    Rule(".multi_head_attention_forward", "build the heads yourself instead of PyTorch's "
         "multi_head_attention_forward"),
)


# ---------------------------------------------------------------------------------------
# Random inputs

def _lengths(g, batch: int, T: int) -> torch.Tensor:
    """Sequence lengths in [1, T], the first one T (one full sequence, the others padded)."""
    out = torch.randint(1, T + 1, (batch,), generator=g)
    out[0] = T
    return out


def _random_mask(g, *shape) -> torch.Tensor:
    """A random boolean mask (..., T_q, T_k) in which every query may attend to >= 1 key."""
    m = torch.rand(*shape, generator=g) < 0.5
    keep = torch.randint(0, shape[-1], shape[:-1], generator=g)
    return m | F.one_hot(keep, shape[-1]).bool()


# ---------------------------------------------------------------------------------------
# 02.sdpa

def _sdpa(q, k, v, mask=None, *, scale=None, dim=-1, mask_how="before", empty_rows="zero"):
    """Attention with knobs, to build the known mistakes from. mask_how: "before" (right),
    "after" (zero the weights after the softmax), "zero" (fill 0, not -inf), "inverted",
    anything else: the mask is ignored. empty_rows: "zero" (right: a query with no allowed
    key gets weights 0, as the task says) or "nan" (the plain softmax: 0/0)."""
    scores = q @ k.transpose(-2, -1) * (q.shape[-1] ** -0.5 if scale is None else scale)
    if mask is not None and mask_how == "before":
        scores = scores.masked_fill(~mask, -INF)
    elif mask is not None and mask_how == "zero":
        scores = scores.masked_fill(~mask, 0.0)
    elif mask is not None and mask_how == "inverted":
        scores = scores.masked_fill(mask, -INF)
    w = torch.softmax(scores, dim=dim)
    if mask is not None and mask_how == "after":
        w = w * mask
    if mask is not None and empty_rows == "zero":
        w = w.masked_fill(~mask.any(dim=-1, keepdim=True), 0.0)
    return w @ v


def _sdpa_no_scale(q, k, v, mask=None):
    return _sdpa(q, k, v, mask, scale=1.0)


def _sdpa_over_dk(q, k, v, mask=None):
    return _sdpa(q, k, v, mask, scale=1.0 / q.shape[-1])


def _sdpa_scale_dv(q, k, v, mask=None):
    return _sdpa(q, k, v, mask, scale=v.shape[-1] ** -0.5)


def _sdpa_wrong_axis(q, k, v, mask=None):
    return _sdpa(q, k, v, mask, dim=-2)


def _sdpa_mask_after(q, k, v, mask=None):
    return _sdpa(q, k, v, mask, mask_how="after")


def _sdpa_mask_zero(q, k, v, mask=None):
    return _sdpa(q, k, v, mask, mask_how="zero")


def _sdpa_mask_inverted(q, k, v, mask=None):
    return _sdpa(q, k, v, mask, mask_how="inverted")


def _sdpa_mask_ignored(q, k, v, mask=None):
    return _sdpa(q, k, v)


def _sdpa_nan_rows(q, k, v, mask=None):
    return _sdpa(q, k, v, mask, empty_rows="nan")


def _left_padded(g, batch: int, T: int) -> torch.Tensor:
    """(batch, T, T) causal & LEFT-padding mask: the padding comes first, so a padding query
    sees only padding keys and its row is all False."""
    lengths = _lengths(g, batch, T)
    lengths[-1] = min(int(lengths[-1]), T - 2)  # at least two padding positions
    keep = torch.arange(T) >= T - lengths[:, None]  # (batch, T): real tokens at the end
    return attention_ref.causal_mask(T) & keep[:, None, :]


def _sdpa_returns_weights(q, k, v, mask=None):
    return attention_ref.attention_weights(q, k, mask)


def _sdpa_k_not_transposed(q, k, v, mask=None):
    return torch.softmax(q @ k / math.sqrt(q.shape[-1]), dim=-1) @ v


def _sdpa_dot_T(q, k, v, mask=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kt = k.T
    return _sdpa(q, kt.transpose(-2, -1), v, mask)


SDPA_MISTAKES = (
    Mistake("no 1/sqrt(d_k) scale", "divide the scores q k^T by sqrt(d_k) before the softmax; "
            "without it large d_k makes the softmax nearly one-hot.", _sdpa_no_scale),
    Mistake("scaled by 1/d_k instead of 1/sqrt(d_k)", "the scale is 1/sqrt(d_k): dot products of "
            "d_k unit-variance terms have standard deviation sqrt(d_k).", _sdpa_over_dk),
    Mistake("scale uses d_v instead of d_k", "scale by sqrt of the query/key size q.shape[-1]; "
            "v may have a different last dimension.", _sdpa_scale_dv),
    Mistake("softmax over the wrong axis", "normalise each query's scores over the KEYS (the "
            "last axis, dim=-1): every row of the weights must sum to 1.", _sdpa_wrong_axis),
    Mistake("mask applied after softmax", "set masked scores to -inf BEFORE the softmax; zeroing "
            "weights afterwards leaves rows that no longer sum to 1.", _sdpa_mask_after),
    Mistake("masked scores set to 0 instead of -inf", "a score of 0 still gets weight exp(0); "
            "use masked_fill(~mask, float('-inf')).", _sdpa_mask_zero),
    Mistake("mask inverted", "True in the mask means MAY attend: fill the scores where the mask "
            "is False (masked_fill(~mask, -inf)).", _sdpa_mask_inverted),
    Mistake("mask ignored", "when a mask is given, scores where it is False must become -inf "
            "before the softmax.", _sdpa_mask_ignored),
    Mistake("NaN from a fully masked row", "a query whose mask row is all False has no key to "
            "attend to: softmax of all -inf is 0/0 = NaN. Give it zero weights (as PyTorch's "
            "SDPA does): weights.masked_fill(~mask.any(dim=-1, keepdim=True), 0.0).",
            _sdpa_nan_rows),
    Mistake("returned the attention weights", "return weights @ v, shape (..., T_q, d_v), not "
            "the (..., T_q, T_k) weights.", _sdpa_returns_weights),
    Mistake("keys not transposed", "scores are q @ k^T: use k.transpose(-2, -1).",
            _sdpa_k_not_transposed),
    Mistake("k.T on a batched tensor", ".T reverses ALL axes of a 3-D or 4-D tensor; use "
            "k.transpose(-2, -1) (or k.mT).", _sdpa_dot_T),
)


@register
class ScaledDotProductAttention(Exercise):
    """Scaled dot-product attention with masks."""
    id = "02.sdpa"
    entry = "scaled_dot_product_attention"
    forbid = NO_BUILTIN_ATTENTION
    mistakes = SDPA_MISTAKES

    def reference(self, q, k, v, mask=None):
        return attention_ref.scaled_dot_product_attention(q, k, v, mask)

    def cases(self, seed, hidden):
        g = generator(seed)
        X = torch.tensor([[.1, .2, .3, .4], [.5, .6, .7, .8], [.9, 1.0, 1.1, 1.2]])
        QKV = X @ torch.eye(4, 3)  # the source's W_Q = W_K = W_V: first three unit columns

        def qkv(*lead, tq, tk, dk, dv, dtype=F32, scale=1.0):
            return (randn(g, *lead, tq, dk, dtype=dtype, scale=scale),
                    randn(g, *lead, tk, dk, dtype=dtype, scale=scale),
                    randn(g, *lead, tk, dv, dtype=dtype))

        pad = attention_ref.padding_mask(_lengths(g, 2, 5), 5)[:, None, :]
        cases = [
            Case("the source's worked example (X W, W = first 3 unit columns)", (QKV, QKV, QKV)),
            Case("one sequence (T, d), no mask", qkv(tq=4, tk=4, dk=8, dv=8)),
            Case("batch (2, 5, 4) with a causal mask (5, 5)", qkv(2, tq=5, tk=5, dk=4, dv=4),
                 {"mask": attention_ref.causal_mask(5)}),
            Case("cross-attention: T_q=3, T_k=5, d_k=4, d_v=2", qkv(2, tq=3, tk=5, dk=4, dv=2)),
            Case("key padding mask (2, 1, 5)", qkv(2, tq=5, tk=5, dk=6, dv=3), {"mask": pad}),
            Case("heads (2, 3, 5, 4), causal & padding mask", qkv(2, 3, tq=5, tk=5, dk=4, dv=4),
                 {"mask": (attention_ref.causal_mask(5) & pad)[:, None]}),
            Case("left padding & causal: padding queries attend to nothing (zeros)",
                 qkv(2, tq=5, tk=5, dk=4, dv=3), {"mask": _left_padded(g, 2, 5)}),
        ]
        if hidden:
            tail = torch.ones(3, 7, dtype=torch.bool).tril(4)  # 3 new queries after 4 cached keys
            cases += [
                Case("float64 heads, random mask", qkv(2, 3, tq=6, tk=6, dk=16, dv=16, dtype=F64),
                     {"mask": _random_mask(g, 2, 3, 6, 6)}),
                Case("three leading dims", qkv(2, 2, 2, tq=3, tk=4, dk=5, dv=3)),
                Case("d_k = 64, float64 (the scale matters)", qkv(2, tq=4, tk=4, dk=64, dv=8,
                                                                  dtype=F64)),
                Case("a single token", qkv(1, tq=1, tk=1, dk=4, dv=4), {"mask": attention_ref.causal_mask(1)}),
                Case("rectangular causal mask (3 queries, 7 keys)", qkv(2, tq=3, tk=7, dk=4, dv=6),
                     {"mask": tail}),
                Case("keys broadcast over the batch", (randn(g, 2, 3, 4, 4), randn(g, 1, 3, 5, 4),
                                                       randn(g, 1, 3, 5, 2))),
                Case("float64 heads, left padding & causal (fully masked rows)",
                     qkv(3, 2, tq=6, tk=6, dk=8, dv=4, dtype=F64),
                     {"mask": _left_padded(g, 3, 6)[:, None]}),
            ]
        return cases


# ---------------------------------------------------------------------------------------
# 02.causal_mask, 02.padding_mask

def _causal_upper(T):
    return torch.ones(T, T, dtype=torch.bool).triu()


def _causal_no_diagonal(T):
    return torch.ones(T, T, dtype=torch.bool).tril(-1)


def _causal_blocked(T):
    return torch.ones(T, T, dtype=torch.bool).triu(1)


def _causal_float(T):
    return torch.ones(T, T).tril()


def _causal_additive(T):
    return torch.zeros(T, T).masked_fill(~attention_ref.causal_mask(T), -INF)


@register
class CausalMask(Exercise):
    """Causal (look-ahead) mask."""
    id = "02.causal_mask"
    entry = "causal_mask"
    forbid = (
        Rule(".generate_square_subsequent_mask", "build it with torch.tril yourself"),
    )
    mistakes = (
        Mistake("mask shows the future", "position i may see positions 0..i: True on and BELOW "
                "the diagonal (torch.tril), not above it.", _causal_upper),
        Mistake("diagonal excluded", "each position may attend to itself: keep the diagonal "
                "(tril with diagonal=0).", _causal_no_diagonal),
        Mistake("True = blocked (PyTorch's convention)", "this course's masks say True = MAY "
                "attend; yours is the boolean mask nn.MultiheadAttention takes (True = blocked, "
                "triu(1)). Return its complement: torch.ones(T, T, dtype=torch.bool).tril().",
                _causal_blocked),
        Mistake("float mask instead of bool", "return a torch.bool tensor (True = may attend), "
                "e.g. torch.ones(T, T, dtype=torch.bool).tril().", _causal_float),
        Mistake("additive -inf mask instead of bool", "this course's masks are boolean, True = "
                "may attend; the 0/-inf float form is what the attention adds internally.",
                _causal_additive),
    )

    def reference(self, T):
        return attention_ref.causal_mask(T)

    def cases(self, seed, hidden):
        cases = [Case(f"T = {T}", (T,)) for T in (1, 2, 4, 7)]
        if hidden:
            cases += [Case(f"T = {T}", (T,)) for T in (3, 16, 33)]
        return cases


def _padding_inverted(lengths, T):
    return torch.arange(T) >= lengths[:, None]


def _padding_off_by_one(lengths, T):
    return torch.arange(T) <= lengths[:, None]


@register
class PaddingMask(Exercise):
    """Padding mask from sequence lengths."""
    id = "02.padding_mask"
    entry = "padding_mask"
    mistakes = (
        Mistake("mask inverted", "True marks REAL tokens (may be attended to); PyTorch's "
                "key_padding_mask uses the opposite convention.", _padding_inverted),
        Mistake("off by one", "a sequence of length L has real tokens at positions 0..L-1: "
                "use t < L, not t <= L.", _padding_off_by_one),
    )

    def reference(self, lengths, T):
        return attention_ref.padding_mask(lengths, T)

    def cases(self, seed, hidden):
        g = generator(seed)
        cases = [
            Case("lengths [3, 1, 4], T = 4", (torch.tensor([3, 1, 4]), 4)),
            Case("one sequence, T longer than it", (torch.tensor([2]), 5)),
            Case("random lengths", (_lengths(g, 5, 6), 6)),
        ]
        if hidden:
            cases += [
                Case("an empty sequence", (torch.tensor([0, 3]), 3)),
                Case("all full", (torch.tensor([4, 4, 4]), 4)),
                Case("random lengths, T = 20", (_lengths(g, 8, 20), 20)),
            ]
        return cases

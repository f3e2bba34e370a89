"""Chapter 02 exercises: attention, masks, multi-head attention, positional encodings,
LayerNorm, the feed-forward network, encoder and decoder layers, and a GPT.

Two kinds of exercise:

* Functions (``scaled_dot_product_attention``, the masks, the positional encodings,
  ``layer_norm``, ``feed_forward``): the case's args are passed as they are.
* Modules (``MultiHeadAttention``, ``EncoderLayer``, ``DecoderLayer``, ``GPT``): the learner
  writes an ``nn.Module`` class whose parameters carry the names the task gives. A case holds
  the constructor's arguments (the names in ``ModuleExercise.init``), every weight as a
  ``"param.<name>"`` keyword, and forward's inputs. The check builds the learner's module
  (without touching the global random state), copies the weights in by name, and runs forward
  in eval mode without gradients. A module whose parameter names or shapes differ from the
  task gets a one-line message naming the first one.

Boolean masks are True where attention is allowed (see ``llmcourse.reference.attention``).
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ..reference import attention as A
from ..reference import gpt as G
from ..reference import transformer as TR
from . import register
from .core import Case, Exercise, Mistake, Rule
from .kit import PARAM, ModuleExercise, SpecError, load_params, random_params, randn as _randn

F32, F64 = torch.float32, torch.float64
INF = float("inf")

NO_COURSE_ANSWERS = (
    Rule("llmcourse.reference", "write it yourself instead of calling the course's reference"),
)
NO_BUILTIN_ATTENTION = (
    Rule(".scaled_dot_product_attention", "compute softmax(q k^T / sqrt(d_k)) v yourself; "
         "F.scaled_dot_product_attention is what you are re-implementing"),
    Rule("torch.nn.MultiheadAttention", "build the heads yourself instead of nn.MultiheadAttention"),
    Rule(".multi_head_attention_forward", "build the heads yourself instead of PyTorch's "
         "multi_head_attention_forward"),
)
NO_BUILTIN_LAYERS = NO_BUILTIN_ATTENTION + tuple(
    Rule(f"torch.nn.{name}", f"wire the layer yourself instead of nn.{name}")
    for name in ("Transformer", "TransformerEncoder", "TransformerEncoderLayer",
                 "TransformerDecoder", "TransformerDecoderLayer"))


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

def _sdpa(q, k, v, mask=None, *, scale=None, dim=-1, mask_how="before"):
    """Attention with knobs, to build the known mistakes from. mask_how: "before" (right),
    "after" (zero the weights after the softmax), "zero" (fill 0, not -inf), "inverted",
    anything else: the mask is ignored."""
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


def _sdpa_returns_weights(q, k, v, mask=None):
    return A.attention_weights(q, k, mask)


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
    forbid = NO_COURSE_ANSWERS + NO_BUILTIN_ATTENTION
    mistakes = SDPA_MISTAKES

    def reference(self, q, k, v, mask=None):
        return A.scaled_dot_product_attention(q, k, v, mask)

    def cases(self, seed, hidden):
        g = torch.Generator().manual_seed(seed)
        X = torch.tensor([[.1, .2, .3, .4], [.5, .6, .7, .8], [.9, 1.0, 1.1, 1.2]])
        QKV = X @ torch.eye(4, 3)  # the source's W_Q = W_K = W_V: first three unit columns

        def qkv(*lead, tq, tk, dk, dv, dtype=F32, scale=1.0):
            return (_randn(g, *lead, tq, dk, dtype=dtype, scale=scale),
                    _randn(g, *lead, tk, dk, dtype=dtype, scale=scale),
                    _randn(g, *lead, tk, dv, dtype=dtype))

        pad = A.padding_mask(_lengths(g, 2, 5), 5)[:, None, :]
        cases = [
            Case("the source's worked example (X W, W = first 3 unit columns)", (QKV, QKV, QKV)),
            Case("one sequence (T, d), no mask", qkv(tq=4, tk=4, dk=8, dv=8)),
            Case("batch (2, 5, 4) with a causal mask (5, 5)", qkv(2, tq=5, tk=5, dk=4, dv=4),
                 {"mask": A.causal_mask(5)}),
            Case("cross-attention: T_q=3, T_k=5, d_k=4, d_v=2", qkv(2, tq=3, tk=5, dk=4, dv=2)),
            Case("key padding mask (2, 1, 5)", qkv(2, tq=5, tk=5, dk=6, dv=3), {"mask": pad}),
            Case("heads (2, 3, 5, 4), causal & padding mask", qkv(2, 3, tq=5, tk=5, dk=4, dv=4),
                 {"mask": (A.causal_mask(5) & pad)[:, None]}),
        ]
        if hidden:
            tail = torch.ones(3, 7, dtype=torch.bool).tril(4)  # 3 new queries after 4 cached keys
            cases += [
                Case("float64 heads, random mask", qkv(2, 3, tq=6, tk=6, dk=16, dv=16, dtype=F64),
                     {"mask": _random_mask(g, 2, 3, 6, 6)}),
                Case("three leading dims", qkv(2, 2, 2, tq=3, tk=4, dk=5, dv=3)),
                Case("d_k = 64, float64 (the scale matters)", qkv(2, tq=4, tk=4, dk=64, dv=8,
                                                                  dtype=F64)),
                Case("a single token", qkv(1, tq=1, tk=1, dk=4, dv=4), {"mask": A.causal_mask(1)}),
                Case("rectangular causal mask (3 queries, 7 keys)", qkv(2, tq=3, tk=7, dk=4, dv=6),
                     {"mask": tail}),
                Case("keys broadcast over the batch", (_randn(g, 2, 3, 4, 4), _randn(g, 1, 3, 5, 4),
                                                       _randn(g, 1, 3, 5, 2))),
            ]
        return cases


# ---------------------------------------------------------------------------------------
# 02.causal_mask, 02.padding_mask

def _causal_upper(T):
    return torch.ones(T, T, dtype=torch.bool).triu()


def _causal_no_diagonal(T):
    return torch.ones(T, T, dtype=torch.bool).tril(-1)


def _causal_float(T):
    return torch.ones(T, T).tril()


def _causal_additive(T):
    return torch.zeros(T, T).masked_fill(~A.causal_mask(T), -INF)


@register
class CausalMask(Exercise):
    """Causal (look-ahead) mask."""
    id = "02.causal_mask"
    entry = "causal_mask"
    forbid = NO_COURSE_ANSWERS + (
        Rule(".generate_square_subsequent_mask", "build it with torch.tril yourself"),
    )
    mistakes = (
        Mistake("mask shows the future", "position i may see positions 0..i: True on and BELOW "
                "the diagonal (torch.tril), not above it.", _causal_upper),
        Mistake("diagonal excluded", "each position may attend to itself: keep the diagonal "
                "(tril with diagonal=0).", _causal_no_diagonal),
        Mistake("float mask instead of bool", "return a torch.bool tensor (True = may attend), "
                "e.g. torch.ones(T, T, dtype=torch.bool).tril().", _causal_float),
        Mistake("additive -inf mask instead of bool", "this course's masks are boolean, True = "
                "may attend; the 0/-inf float form is what the attention adds internally.",
                _causal_additive),
    )

    def reference(self, T):
        return A.causal_mask(T)

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
    forbid = NO_COURSE_ANSWERS
    mistakes = (
        Mistake("mask inverted", "True marks REAL tokens (may be attended to); PyTorch's "
                "key_padding_mask uses the opposite convention.", _padding_inverted),
        Mistake("off by one", "a sequence of length L has real tokens at positions 0..L-1: "
                "use t < L, not t <= L.", _padding_off_by_one),
    )

    def reference(self, lengths, T):
        return A.padding_mask(lengths, T)

    def cases(self, seed, hidden):
        g = torch.Generator().manual_seed(seed)
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


# ---------------------------------------------------------------------------------------
# 02.mha

def _heads_view(x, n_heads):  # (B, T, d) -> (B, H, T, d_head) WITHOUT the transpose
    *lead, T, d = x.shape
    return x.reshape(*lead, n_heads, T, d // n_heads)


def _unheads_view(x):  # its inverse: (B, H, T, d_head) -> (B, T, d)
    *lead, H, T, dh = x.shape
    return x.reshape(*lead, T, H * dh)


def _heads_strided(x, n_heads):  # head h gets features h, h + H, h + 2H, ...
    *lead, T, d = x.shape
    return x.reshape(*lead, T, d // n_heads, n_heads).permute(*range(len(lead)), -1, -3, -2)


def _unheads_strided(x):
    *lead, H, T, dh = x.shape
    return x.permute(*range(len(lead)), -2, -1, -3).reshape(*lead, T, dh * H)


def _mha(m, x_q, x_kv=None, mask=None, *, split=A.split_heads, merge=A.merge_heads,
         scale=None, dim=-1, mask_how="before", kv_from_q=False, out_proj=True, mask_dim=-3):
    """Multi-head attention with knobs, on the parameters of a reference module ``m``."""
    x_kv = x_q if (x_kv is None or kv_from_q) else x_kv
    q, k, v = (split(p(x), m.n_heads) for p, x in ((m.q_proj, x_q), (m.k_proj, x_kv),
                                                    (m.v_proj, x_kv)))
    mask = None if mask is None else mask.unsqueeze(mask_dim)
    y = merge(_sdpa(q, k, v, mask, scale=scale, dim=dim, mask_how=mask_how))
    return m.out_proj(y) if out_proj else y


def _wrong_mha(**how):
    class WrongMultiHeadAttention(A.MultiHeadAttention):
        def forward(self, x_q, x_kv=None, mask=None):
            d_model = self.q_proj.weight.shape[0]
            knobs = {**how, "scale": d_model ** -0.5} if how.get("scale") == "d_model" else how
            return _mha(self, x_q, x_kv, mask, **knobs)
    return WrongMultiHeadAttention


@register
class MultiHeadAttentionExercise(ModuleExercise):
    """Multi-head attention."""
    id = "02.mha"
    entry = "MultiHeadAttention"
    init = ("d_model", "n_heads")
    reference = A.MultiHeadAttention
    forbid = NO_COURSE_ANSWERS + NO_BUILTIN_ATTENTION
    mistakes = (
        Mistake("heads split along the wrong axis", "view (B, T, d) as (B, T, H, d_head) and THEN "
                "transpose to (B, H, T, d_head); viewing it directly as (B, H, T, d_head) mixes "
                "tokens across heads.", _wrong_mha(split=_heads_view, merge=_unheads_view)),
        Mistake("features dealt to heads with a stride", "head h owns the CONTIGUOUS features "
                "h*d_head:(h+1)*d_head: reshape to (B, T, H, d_head), not (B, T, d_head, H).",
                _wrong_mha(split=_heads_strided, merge=_unheads_strided)),
        Mistake("heads merged without transposing back", "undo the split: (B, H, T, d_head) -> "
                "transpose to (B, T, H, d_head) -> reshape to (B, T, d_model).",
                _wrong_mha(merge=_unheads_view)),
        Mistake("scaled by 1/sqrt(d_model) instead of 1/sqrt(d_head)", "each head is an attention "
                "of size d_head = d_model / n_heads: scale by 1/sqrt(d_head).",
                _wrong_mha(scale="d_model")),
        Mistake("no 1/sqrt(d_head) scale", "divide each head's scores by sqrt(d_head).",
                _wrong_mha(scale=1.0)),
        Mistake("softmax over the wrong axis", "normalise over the keys (the last axis).",
                _wrong_mha(dim=-2)),
        Mistake("mask applied after softmax", "set masked scores to -inf BEFORE the softmax.",
                _wrong_mha(mask_how="after")),
        Mistake("mask ignored", "pass the mask to every head (mask.unsqueeze(-3) adds the heads "
                "axis).", _wrong_mha(mask_how="ignored")),
        Mistake("heads axis added to the mask at dim 1", "a (T_q, T_k) mask becomes (T_q, 1, T_k) "
                "with unsqueeze(1); add the heads axis just before the last two: mask.unsqueeze(-3).",
                _wrong_mha(mask_dim=1)),
        Mistake("no output projection", "concatenate the heads and apply out_proj.",
                _wrong_mha(out_proj=False)),
        Mistake("keys and values taken from the query input", "in cross-attention k and v come "
                "from x_kv (use x_q only when x_kv is None).", _wrong_mha(kv_from_q=True)),
    )

    def cases(self, seed, hidden):
        g = torch.Generator().manual_seed(seed)

        def case(label, d, h, B, T, S=None, dtype=F32, **forward):
            args = (_randn(g, B, T, d, dtype=dtype),) + (() if S is None else
                                                        (_randn(g, B, S, d, dtype=dtype),))
            return self.case(g, label, {"d_model": d, "n_heads": h}, args, dtype, **forward)

        cases = [
            case("self-attention, d_model=8, 2 heads", 8, 2, B=2, T=4),
            case("causal mask, 4 heads", 16, 4, B=2, T=5, mask=A.causal_mask(5)),
            case("cross-attention T_q=3, T_k=5, key padding (2, 1, 5)", 12, 3, B=2, T=3, S=5,
                 mask=A.padding_mask(_lengths(g, 2, 5), 5)[:, None, :]),
            case("one head", 6, 1, B=1, T=4),
        ]
        if hidden:
            cases += [
                case("float64, 3 heads of 8", 24, 3, B=2, T=6, dtype=F64, mask=A.causal_mask(6)),
                case("d_head = 1", 4, 4, B=2, T=3),
                case("float64 cross-attention, random mask", 16, 2, B=3, T=4, S=6, dtype=F64,
                     mask=_random_mask(g, 3, 4, 6)),
                case("causal & padding, 8 heads", 32, 8, B=2, T=7,
                     mask=A.causal_mask(7) & A.padding_mask(_lengths(g, 2, 7), 7)[:, None, :]),
            ]
        return cases


# ---------------------------------------------------------------------------------------
# 02.sinusoidal

def _sin_angles(T, d, base, exponent=2):
    i = torch.arange(d // 2, dtype=F64)
    return torch.arange(T, dtype=F64)[:, None] / base ** (exponent * i / d)


def _sin_concat(T, d, base=10000.0):
    a = _sin_angles(T, d, base)
    return torch.cat([a.sin(), a.cos()], dim=-1).float()


def _sin_swapped(T, d, base=10000.0):
    a = _sin_angles(T, d, base)
    return torch.stack([a.cos(), a.sin()], dim=-1).reshape(T, d).float()


def _sin_exponent(T, d, base=10000.0):
    a = _sin_angles(T, d, base, exponent=1)
    return torch.stack([a.sin(), a.cos()], dim=-1).reshape(T, d).float()


def _sin_from_one(T, d, base=10000.0):
    return A.sinusoidal_positions(T + 1, d, base)[1:]


@register
class Sinusoidal(Exercise):
    """Sinusoidal positional encoding."""
    id = "02.sinusoidal"
    entry = "sinusoidal_positions"
    forbid = NO_COURSE_ANSWERS
    mistakes = (
        Mistake("sin and cos concatenated instead of interleaved", "even features 2i are sines, "
                "odd features 2i+1 cosines: PE[:, 0::2] = sin, PE[:, 1::2] = cos.", _sin_concat),
        Mistake("sin and cos swapped", "PE[p, 2i] = sin(...), PE[p, 2i+1] = cos(...).",
                _sin_swapped),
        Mistake("exponent i/d instead of 2i/d", "pair i (features 2i and 2i+1) has frequency "
                "base^(-2i/d).", _sin_exponent),
        Mistake("positions start at 1", "the first position is p = 0 (PE[0] = [0, 1, 0, 1, ...]).",
                _sin_from_one),
    )

    def reference(self, T, d, base=10000.0):
        return A.sinusoidal_positions(T, d, base)

    def cases(self, seed, hidden):
        # Tolerance: float32 angles p * w round to ~p * 6e-8 (any correct float32 formula),
        # so the error grows with the number of positions; atol is set per case from T.
        cases = [
            Case("T=4, d=8", (4, 8)),
            Case("T=10, d=16", (10, 16)),
            Case("one position, d=2", (1, 2)),
            Case("T=50, d=32, base=100", (50, 32), {"base": 100.0}, atol=2e-5),
        ]
        if hidden:
            cases += [
                Case("T=128, d=64", (128, 64), atol=5e-5),
                Case("T=7, d=6", (7, 6)),
                Case("T=20, d=12, base=1000", (20, 12), {"base": 1000.0}, atol=1e-5),
            ]
        return cases


# ---------------------------------------------------------------------------------------
# 02.rope

def _rope_with(x, positions=None, base=10000.0, *, layout="half", sign=1.0, exponent=2):
    T, d = x.shape[-2:]
    pos = torch.arange(T) if positions is None else positions
    a = pos.to(F64)[:, None] / base ** (exponent * torch.arange(d // 2, dtype=F64) / d)
    cos, sin = a.cos().to(x.dtype), (sign * a.sin()).to(x.dtype)
    if layout == "half":
        x1, x2 = x[..., : d // 2], x[..., d // 2:]
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)


def _rope_interleaved(x, positions=None, base=10000.0):
    return _rope_with(x, positions, base, layout="interleaved")


def _rope_backwards(x, positions=None, base=10000.0):
    return _rope_with(x, positions, base, sign=-1.0)


def _rope_exponent(x, positions=None, base=10000.0):
    return _rope_with(x, positions, base, exponent=1)


def _rope_ignores_positions(x, positions=None, base=10000.0):
    return _rope_with(x, None, base)


def _rope_float32_angles(x, positions=None, base=10000.0):
    T, d = x.shape[-2:]
    pos = torch.arange(T) if positions is None else positions
    inv_freq = 1.0 / (base ** (torch.arange(0, d, 2, dtype=F32) / d))  # as Hugging Face does
    angles = torch.cat([pos.float()[:, None] * inv_freq] * 2, dim=-1)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    return x * cos + torch.cat([-x[..., d // 2:], x[..., : d // 2]], dim=-1) * sin


@register
class Rope(Exercise):
    """Rotary position embedding (rotate-half layout)."""
    id = "02.rope"
    entry = "apply_rope"
    forbid = NO_COURSE_ANSWERS + (
        Rule("transformers", "write the rotation yourself instead of Hugging Face's RoPE"),
        Rule(".apply_rotary_pos_emb", "write the rotation yourself"),
    )
    mistakes = (
        Mistake("interleaved pairs instead of rotate-half", "this course pairs feature i with "
                "feature i + d/2 (GPT-NeoX / LLaMA layout), not 2i with 2i+1 (RoFormer's).",
                _rope_interleaved),
        Mistake("rotation in the wrong direction", "first half: x1 cos - x2 sin; second half: "
                "x1 sin + x2 cos.", _rope_backwards),
        Mistake("exponent i/d instead of 2i/d", "pair i rotates at frequency base^(-2i/d).",
                _rope_exponent),
        Mistake("positions ignored", "rotate by the given `positions`, using 0..T-1 only when "
                "positions is None.", _rope_ignores_positions),
        Mistake("angles computed in float32", "for a float64 input compute the angles in float64 "
                "(x.dtype): float32 angles are off by ~1e-6.", _rope_float32_angles),
    )

    def reference(self, x, positions=None, base=10000.0):
        return A.apply_rope(x, positions, base)

    def cases(self, seed, hidden):
        g = torch.Generator().manual_seed(seed)
        # float32: angles (up to ~100 rad) round to ~1e-5 relative in float32 arithmetic;
        # such cases get atol=1e-4. Small positions keep the default tolerance.
        cases = [
            Case("(T, d) = (4, 8), positions 0..3", (_randn(g, 4, 8),)),
            Case("batch (2, 5, 6)", (_randn(g, 2, 5, 6),)),
            Case("heads (2, 2, 3, 4), positions 10..12", (_randn(g, 2, 2, 3, 4),),
                 {"positions": torch.arange(10, 13)}, atol=1e-5),
            Case("d = 2: a plain rotation", (_randn(g, 5, 2),)),
        ]
        if hidden:
            cases += [
                Case("float64, positions 100..107", (_randn(g, 2, 8, 16, dtype=F64),),
                     {"positions": torch.arange(100, 108)}),
                Case("base 500, scattered positions", (_randn(g, 3, 4, 10),),
                     {"positions": torch.tensor([0, 7, 3, 90]), "base": 500.0}, atol=1e-4),
                Case("float64 (1, 1, 1, 32)", (_randn(g, 1, 1, 1, 32, dtype=F64),),
                     {"positions": torch.tensor([5])}),
            ]
        return cases


# ---------------------------------------------------------------------------------------
# 02.layer_norm

def _ln_unbiased(x, weight, bias, eps=1e-5):
    return (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, keepdim=True) + eps) * weight + bias


def _ln_eps_outside(x, weight, bias, eps=1e-5):
    mu, var = x.mean(-1, keepdim=True), x.var(-1, keepdim=True, unbiased=False)
    return (x - mu) / (torch.sqrt(var) + eps) * weight + bias


def _ln_first_axis(x, weight, bias, eps=1e-5):
    mu, var = x.mean(0, keepdim=True), x.var(0, keepdim=True, unbiased=False)
    return (x - mu) / torch.sqrt(var + eps) * weight + bias


def _ln_whole_tensor(x, weight, bias, eps=1e-5):
    return (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + eps) * weight + bias


def _ln_swapped(x, weight, bias, eps=1e-5):
    return TR.layer_norm(x, bias, weight, eps)


def _ln_no_affine(x, weight, bias, eps=1e-5):
    return TR.layer_norm(x, eps=eps)


def _ln_no_keepdim(x, weight, bias, eps=1e-5):
    mu, var = x.mean(-1), x.var(-1, unbiased=False)
    return (x - mu) / torch.sqrt(var + eps) * weight + bias


@register
class LayerNormExercise(Exercise):
    """Layer normalisation."""
    id = "02.layer_norm"
    entry = "layer_norm"
    forbid = NO_COURSE_ANSWERS + (
        Rule(".layer_norm", "compute mean and variance yourself; F.layer_norm is what you are "
             "re-implementing"),
        Rule("torch.nn.LayerNorm", "compute it yourself instead of nn.LayerNorm"),
        Rule(".native_layer_norm", "compute mean and variance yourself"),
        Rule(".group_norm", "compute mean and variance yourself"),
        Rule("torch.nn.GroupNorm", "compute mean and variance yourself"),
        Rule(".instance_norm", "compute mean and variance yourself"),
    )
    mistakes = (
        Mistake("unbiased variance", "LayerNorm divides by d, not d - 1: x.var(-1, keepdim=True, "
                "unbiased=False) (torch.var's default is unbiased).", _ln_unbiased),
        Mistake("eps added outside the sqrt", "divide by sqrt(var + eps), not sqrt(var) + eps.",
                _ln_eps_outside),
        Mistake("statistics over the batch axis", "mean and variance run over the LAST axis "
                "(the features of one position), not over the batch.", _ln_first_axis),
        Mistake("statistics over the whole tensor", "each position is normalised on its own: "
                "mean(dim=-1, keepdim=True).", _ln_whole_tensor),
        Mistake("weight and bias swapped", "scale by weight (gamma), then add bias (beta).",
                _ln_swapped),
        Mistake("weight and bias not applied", "after normalising, multiply by weight and add "
                "bias.", _ln_no_affine),
        Mistake("mean/var without keepdim", "x.mean(-1) drops the axis so x - mean broadcasts "
                "the wrong way; use keepdim=True.", _ln_no_keepdim),
    )

    def reference(self, x, weight, bias, eps=1e-5):
        return TR.layer_norm(x, weight, bias, eps)

    def cases(self, seed, hidden):
        g = torch.Generator().manual_seed(seed)

        def args(*shape, dtype=F32, scale=1.0, shift=0.0):
            d = shape[-1]
            return (_randn(g, *shape, dtype=dtype, scale=scale) + shift,
                    1.0 + _randn(g, d, dtype=dtype, scale=0.5), _randn(g, d, dtype=dtype, scale=0.5))

        const = args(3, 5)
        const = (torch.tensor([[2.0] * 5, [-1.0, 0.0, 1.0, 0.0, -1.0], [0.0] * 5]),) + const[1:]
        cases = [
            Case("(4, 8)", args(4, 8)),
            Case("(2, 3, 6), eps=0.1", args(2, 3, 6), {"eps": 0.1}),
            Case("a constant row (variance 0)", const),
            Case("values around 1000", args(3, 10, scale=5.0, shift=1000.0), atol=1e-4),
        ]
        if hidden:
            cases += [
                Case("float64 (2, 2, 3, 7)", args(2, 2, 3, 7, dtype=F64)),
                Case("square (5, 5)", args(5, 5)),
                Case("d = 1: the output is the bias", args(4, 1)),
                Case("float64, tiny values, eps=1.0", args(3, 9, dtype=F64, scale=1e-3), {"eps": 1.0}),
            ]
        return cases


# ---------------------------------------------------------------------------------------
# 02.ffn

def _ffn_relu_twice(x, w1, b1, w2, b2):
    return torch.relu(TR.feed_forward(x, w1, b1, w2, b2))


def _ffn_no_activation(x, w1, b1, w2, b2):
    return (x @ w1.T + b1) @ w2.T + b2


def _ffn_gelu(x, w1, b1, w2, b2):
    return TR.feed_forward(x, w1, b1, w2, b2, "gelu")


def _ffn_not_transposed(x, w1, b1, w2, b2):
    return torch.relu(x @ w1 + b1) @ w2 + b2


@register
class FeedForwardExercise(Exercise):
    """Position-wise feed-forward network."""
    id = "02.ffn"
    entry = "feed_forward"
    forbid = NO_COURSE_ANSWERS
    mistakes = (
        Mistake("ReLU after the second layer too", "FFN(x) = relu(x W1^T + b1) W2^T + b2: the "
                "output layer is linear.", _ffn_relu_twice),
        Mistake("no activation", "without the ReLU two linear layers collapse into one.",
                _ffn_no_activation),
        Mistake("GELU instead of ReLU", "the original Transformer's FFN uses ReLU.", _ffn_gelu),
        Mistake("weights not transposed", "weights are in nn.Linear layout (out, in): compute "
                "x @ w1.T + b1.", _ffn_not_transposed),
    )

    def reference(self, x, w1, b1, w2, b2):
        return TR.feed_forward(x, w1, b1, w2, b2)

    def cases(self, seed, hidden):
        g = torch.Generator().manual_seed(seed)

        def args(*lead, d, d_ff, dtype=F32):
            return (_randn(g, *lead, d, dtype=dtype), _randn(g, d_ff, d, dtype=dtype, scale=d ** -0.5),
                    _randn(g, d_ff, dtype=dtype, scale=0.5),
                    _randn(g, d, d_ff, dtype=dtype, scale=d_ff ** -0.5), _randn(g, d, dtype=dtype))

        cases = [
            Case("(4, 8) -> 32 -> 8", args(4, d=8, d_ff=32)),
            Case("batch (2, 5, 6) -> 24 -> 6", args(2, 5, d=6, d_ff=24)),
            Case("one position", args(1, d=4, d_ff=16)),
        ]
        if hidden:
            cases += [
                Case("float64 (2, 3, 4, 10) -> 40", args(2, 3, 4, d=10, d_ff=40, dtype=F64)),
                Case("d_ff < d_model", args(3, 7, d=12, d_ff=5)),
            ]
        return cases


# ---------------------------------------------------------------------------------------
# 02.encoder_layer, 02.decoder_layer

def _wrong_encoder(pre_ln=False, attn_residual=True, ffn_residual=True, norm_inside=False,
                   swap_norms=False, use_mask=True):
    class WrongEncoderLayer(TR.EncoderLayer):
        def forward(self, x, mask=None):
            n1, n2 = (self.norm2, self.norm1) if swap_norms else (self.norm1, self.norm2)
            mask = mask if use_mask else None
            sublayers = ((n1, lambda h: self.self_attn(h, h, mask), attn_residual),
                         (n2, self.ffn, ffn_residual))
            for norm, f, residual in sublayers:
                if pre_ln:
                    x = x + f(norm(x))
                elif norm_inside:
                    x = x + norm(f(x))
                else:
                    x = norm(x + f(x) if residual else f(x))
            return x
    return WrongEncoderLayer


def _layer_case(ex, g, label, B, T, d=16, h=2, d_ff=32, S=None, dtype=F32, **forward):
    args = (_randn(g, B, T, d, dtype=dtype),) + (() if S is None else (_randn(g, B, S, d, dtype=dtype),))
    # float32: outputs are O(1) after two or three LayerNorms; correct implementations that
    # order the operations differently agree to ~4e-6, so atol=1e-5 (float64: the default).
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == F32 else {}
    return ex.case(g, label, {"d_model": d, "n_heads": h, "d_ff": d_ff}, args, dtype, **tol,
                   **forward)


@register
class EncoderLayerExercise(ModuleExercise):
    """Transformer encoder layer (post-LN)."""
    id = "02.encoder_layer"
    entry = "EncoderLayer"
    init = ("d_model", "n_heads", "d_ff")
    reference = TR.EncoderLayer
    forbid = NO_COURSE_ANSWERS + NO_BUILTIN_LAYERS
    mistakes = (
        Mistake("pre-LN where post-LN is asked", "the original Transformer normalises AFTER the "
                "residual add: x = norm1(x + attn(x)), then x = norm2(x + ffn(x)).",
                _wrong_encoder(pre_ln=True)),
        Mistake("no residual around attention", "add the input back: norm1(x + attn(x)).",
                _wrong_encoder(attn_residual=False)),
        Mistake("no residual around the feed-forward", "add the input back: norm2(x + ffn(x)).",
                _wrong_encoder(ffn_residual=False)),
        Mistake("normalised the sublayer, not the sum", "post-LN is norm(x + sublayer(x)), not "
                "x + norm(sublayer(x)).", _wrong_encoder(norm_inside=True)),
        Mistake("norm1 and norm2 swapped", "norm1 follows attention, norm2 the feed-forward.",
                _wrong_encoder(swap_norms=True)),
        Mistake("mask ignored", "pass the mask to self-attention.", _wrong_encoder(use_mask=False)),
    )

    def cases(self, seed, hidden):
        g = torch.Generator().manual_seed(seed)
        cases = [
            _layer_case(self, g, "(2, 5, 16), 2 heads, no mask", 2, 5),
            _layer_case(self, g, "key padding mask (2, 1, 6)", 2, 6, d=12, h=3, d_ff=20,
                        mask=A.padding_mask(_lengths(g, 2, 6), 6)[:, None, :]),
        ]
        if hidden:
            cases += [
                _layer_case(self, g, "float64, causal mask, 4 heads", 3, 4, d=8, h=4, d_ff=16,
                            dtype=F64, mask=A.causal_mask(4)),
                _layer_case(self, g, "one token", 1, 1, d=8, h=2, d_ff=8),
            ]
        return cases


def _wrong_decoder(pre_ln=False, causal=True, cross=True, swap_cross=False, use_memory_mask=True,
                   swap_masks=False):
    class WrongDecoderLayer(TR.DecoderLayer):
        def forward(self, x, memory, tgt_mask=None, memory_mask=None):
            tm, mm = tgt_mask if causal else None, memory_mask if use_memory_mask else None
            if swap_masks:
                tm, mm = mm, tm
            steps = [(self.norm1, lambda h: self.self_attn(h, h, tm))]
            if cross:
                steps.append((self.norm2, lambda h: self.cross_attn(memory, h, mm) if swap_cross
                              else self.cross_attn(h, memory, mm)))
            steps.append((self.norm3, self.ffn))
            for norm, f in steps:
                x = x + f(norm(x)) if pre_ln else norm(x + f(x))
            return x
    return WrongDecoderLayer


@register
class DecoderLayerExercise(ModuleExercise):
    """Transformer decoder layer with cross-attention (post-LN)."""
    id = "02.decoder_layer"
    entry = "DecoderLayer"
    init = ("d_model", "n_heads", "d_ff")
    reference = TR.DecoderLayer
    forbid = NO_COURSE_ANSWERS + NO_BUILTIN_LAYERS
    mistakes = (
        Mistake("pre-LN where post-LN is asked", "normalise AFTER each residual add: "
                "x = norm(x + sublayer(x)).", _wrong_decoder(pre_ln=True)),
        Mistake("tgt_mask ignored: the decoder sees the future", "pass tgt_mask (the causal mask) "
                "to the masked self-attention.", _wrong_decoder(causal=False)),
        Mistake("no cross-attention", "between self-attention and the feed-forward, attend from "
                "x to the encoder's memory: norm2(x + cross_attn(x, memory, memory_mask)).",
                _wrong_decoder(cross=False)),
        Mistake("cross-attention queries from memory", "queries come from the decoder (x), keys "
                "and values from the encoder's memory.", _wrong_decoder(swap_cross=True)),
        Mistake("memory_mask ignored", "pass memory_mask to the cross-attention.",
                _wrong_decoder(use_memory_mask=False)),
        Mistake("masks swapped", "tgt_mask (T, T) goes to self-attention, memory_mask (T, S) to "
                "cross-attention.", _wrong_decoder(swap_masks=True)),
    )

    def cases(self, seed, hidden):
        g = torch.Generator().manual_seed(seed)
        cases = [
            _layer_case(self, g, "T=4, S=6, causal tgt_mask", 2, 4, S=6, tgt_mask=A.causal_mask(4)),
            _layer_case(self, g, "causal + memory padding (2, 1, 5)", 2, 3, d=12, h=3, d_ff=24, S=5,
                        tgt_mask=A.causal_mask(3),
                        memory_mask=A.padding_mask(_lengths(g, 2, 5), 5)[:, None, :]),
        ]
        if hidden:
            cases += [
                _layer_case(self, g, "float64, T = S = 5", 2, 5, d=8, h=2, d_ff=16, S=5, dtype=F64,
                            tgt_mask=A.causal_mask(5),
                            memory_mask=_random_mask(g, 2, 5, 5)),
                _layer_case(self, g, "no masks, 4 heads", 1, 3, d=16, h=4, d_ff=16, S=2),
            ]
        return cases


# ---------------------------------------------------------------------------------------
# 02.gpt

def _wrong_gpt(pre_ln=True, causal=True, positions=True, final_ln=True,
               act=lambda h: F.gelu(h, approximate="tanh"), split=A.split_heads,
               merge=A.merge_heads, scale=None):
    class WrongGPT(G.GPT):
        def forward(self, idx):
            T = idx.shape[-1]
            x = self.transformer.wte(idx)
            if positions:
                x = x + self.transformer.wpe(torch.arange(T))
            mask = A.causal_mask(T) if causal else None
            for blk in self.transformer.h:
                def attn(h, a=blk.attn):
                    q, k, v = (split(t, a.n_head) for t in a.c_attn(h).split(h.shape[-1], -1))
                    return a.c_proj(merge(_sdpa(q, k, v, mask, scale=scale)))

                def mlp(h, m=blk.mlp):
                    return m.c_proj(act(m.c_fc(h)))
                for norm, f in ((blk.ln_1, attn), (blk.ln_2, mlp)):
                    x = x + f(norm(x)) if pre_ln else norm(x + f(x))
            return self.lm_head(self.transformer.ln_f(x) if final_ln else x)
    return WrongGPT


GPT_INIT = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd")


@register
class GPTExercise(ModuleExercise):
    """A GPT-2 language model."""
    id = "02.gpt"
    entry = "GPT"
    init = GPT_INIT
    optional = ("lm_head.weight",)  # tied to transformer.wte.weight; x @ wte.weight.T is fine
    reference = G.GPT
    forbid = NO_COURSE_ANSWERS + NO_BUILTIN_LAYERS + (
        Rule("transformers", "build the model yourself instead of Hugging Face's GPT-2"),
    )
    mistakes = (
        Mistake("post-LN blocks where GPT-2 is pre-LN", "GPT-2 normalises the INPUT of each "
                "sublayer: x = x + attn(ln_1(x)); x = x + mlp(ln_2(x)).", _wrong_gpt(pre_ln=False)),
        Mistake("no causal mask: tokens see the future", "mask attention so position t only sees "
                "positions <= t.", _wrong_gpt(causal=False)),
        Mistake("position embeddings not added", "x = wte(idx) + wpe(positions 0..T-1).",
                _wrong_gpt(positions=False)),
        Mistake("no final LayerNorm", "apply transformer.ln_f before lm_head.",
                _wrong_gpt(final_ln=False)),
        Mistake("exact GELU instead of the tanh approximation", "GPT-2 uses "
                "F.gelu(x, approximate='tanh') (Hugging Face's 'gelu_new').", _wrong_gpt(act=F.gelu)),
        Mistake("ReLU instead of GELU", "GPT-2's MLP uses GELU (tanh approximation).",
                _wrong_gpt(act=F.relu)),
        Mistake("heads split along the wrong axis", "view (B, T, C) as (B, T, n_head, C/n_head), "
                "then transpose(1, 2).", _wrong_gpt(split=_heads_view, merge=_unheads_view)),
        Mistake("no 1/sqrt(d_head) scale", "divide the scores by sqrt(n_embd / n_head).",
                _wrong_gpt(scale=1.0)),
    )

    def build(self, cls, init):
        return cls(G.GPTConfig(**init))

    def cases(self, seed, hidden):
        g = torch.Generator().manual_seed(seed)

        def case(label, B, T, vocab=23, block=16, layers=2, heads=2, d=16, dtype=F32):
            cfg = dict(zip(GPT_INIT, (vocab, block, layers, heads, d)))
            idx = torch.randint(0, vocab, (B, T), generator=g)
            # float32: logits are O(1) after 2-3 blocks of matmuls and LayerNorms, where
            # correct implementations differ by ~1e-6: atol=1e-5. float64: the default.
            tol = dict(rtol=1e-5, atol=1e-5) if dtype == F32 else {}
            return self.case(g, label, cfg, (idx,), dtype, **tol)

        cases = [
            case("2 layers, 2 heads, (B, T) = (2, 8)", 2, 8),
            case("1 layer, 4 heads, one sequence", 1, 5, layers=1, heads=4, d=8, vocab=11),
        ]
        if hidden:
            cases += [
                case("float64, 3 layers, full block", 2, 12, block=12, layers=3, heads=4, d=16,
                     dtype=F64),
                case("a single token", 3, 1),
            ]
        return cases

"""multihead.ipynb: multi-head attention, sinusoidal positions, RoPE, LayerNorm and the
feed-forward network.

``MultiHeadAttention`` is a :class:`~llmcourse.checks.kit.ModuleExercise`: the learner writes an
``nn.Module`` whose parameters carry the names the task gives; the others are functions.
"""

from __future__ import annotations

import torch

from ...reference import attention as attention_ref
from ...reference import transformer as transformer_ref
from .. import register
from ..core import Case, Exercise, Mistake, Rule
from ..kit import F32, F64, ModuleExercise, generator, randn
from .sdpa import NO_BUILTIN_ATTENTION, _lengths, _random_mask, _sdpa


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


def _mha(m, x_q, x_kv=None, mask=None, *, split=attention_ref.split_heads, merge=attention_ref.merge_heads,
         scale=None, dim=-1, mask_how="before", kv_from_q=False, out_proj=True, mask_dim=-3):
    """Multi-head attention with knobs, on the parameters of a reference module ``m``."""
    x_kv = x_q if (x_kv is None or kv_from_q) else x_kv
    q, k, v = (split(p(x), m.n_heads) for p, x in ((m.q_proj, x_q), (m.k_proj, x_kv),
                                                    (m.v_proj, x_kv)))
    mask = None if mask is None else mask.unsqueeze(mask_dim)
    y = merge(_sdpa(q, k, v, mask, scale=scale, dim=dim, mask_how=mask_how))
    return m.out_proj(y) if out_proj else y


def _wrong_mha(**how):
    class WrongMultiHeadAttention(attention_ref.MultiHeadAttention):
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
    reference = attention_ref.MultiHeadAttention
    forbid = NO_BUILTIN_ATTENTION
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
        g = generator(seed)

        def case(label, d, h, B, T, S=None, dtype=F32, **forward):
            args = (randn(g, B, T, d, dtype=dtype),) + (() if S is None else
                                                        (randn(g, B, S, d, dtype=dtype),))
            return self.case(g, label, {"d_model": d, "n_heads": h}, args, dtype, **forward)

        cases = [
            case("self-attention, d_model=8, 2 heads", 8, 2, B=2, T=4),
            case("causal mask, 4 heads", 16, 4, B=2, T=5, mask=attention_ref.causal_mask(5)),
            case("cross-attention T_q=3, T_k=5, key padding (2, 1, 5)", 12, 3, B=2, T=3, S=5,
                 mask=attention_ref.padding_mask(_lengths(g, 2, 5), 5)[:, None, :]),
            case("one head", 6, 1, B=1, T=4),
        ]
        if hidden:
            cases += [
                case("float64, 3 heads of 8", 24, 3, B=2, T=6, dtype=F64, mask=attention_ref.causal_mask(6)),
                case("d_head = 1", 4, 4, B=2, T=3),
                case("float64 cross-attention, random mask", 16, 2, B=3, T=4, S=6, dtype=F64,
                     mask=_random_mask(g, 3, 4, 6)),
                case("causal & padding, 8 heads", 32, 8, B=2, T=7,
                     mask=attention_ref.causal_mask(7) & attention_ref.padding_mask(_lengths(g, 2, 7), 7)[:, None, :]),
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
    return attention_ref.sinusoidal_positions(T + 1, d, base)[1:]


@register
class Sinusoidal(Exercise):
    """Sinusoidal positional encoding."""
    id = "02.sinusoidal"
    entry = "sinusoidal_positions"
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
        return attention_ref.sinusoidal_positions(T, d, base)

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
    forbid = (
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
        return attention_ref.apply_rope(x, positions, base)

    def cases(self, seed, hidden):
        g = generator(seed)
        # float32: angles (up to ~100 rad) round to ~1e-5 relative in float32 arithmetic;
        # such cases get atol=1e-4. Small positions keep the default tolerance.
        cases = [
            Case("(T, d) = (4, 8), positions 0..3", (randn(g, 4, 8),)),
            Case("batch (2, 5, 6)", (randn(g, 2, 5, 6),)),
            Case("heads (2, 2, 3, 4), positions 10..12", (randn(g, 2, 2, 3, 4),),
                 {"positions": torch.arange(10, 13)}, atol=1e-5),
            Case("d = 2: a plain rotation", (randn(g, 5, 2),)),
        ]
        if hidden:
            cases += [
                Case("float64, positions 100..107", (randn(g, 2, 8, 16, dtype=F64),),
                     {"positions": torch.arange(100, 108)}),
                Case("base 500, scattered positions", (randn(g, 3, 4, 10),),
                     {"positions": torch.tensor([0, 7, 3, 90]), "base": 500.0}, atol=1e-4),
                Case("float64 (1, 1, 1, 32)", (randn(g, 1, 1, 1, 32, dtype=F64),),
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
    return transformer_ref.layer_norm(x, bias, weight, eps)


def _ln_no_affine(x, weight, bias, eps=1e-5):
    return transformer_ref.layer_norm(x, eps=eps)


def _ln_no_keepdim(x, weight, bias, eps=1e-5):
    mu, var = x.mean(-1), x.var(-1, unbiased=False)
    return (x - mu) / torch.sqrt(var + eps) * weight + bias


@register
class LayerNormExercise(Exercise):
    """Layer normalisation."""
    id = "02.layer_norm"
    entry = "layer_norm"
    forbid = (
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
        return transformer_ref.layer_norm(x, weight, bias, eps)

    def cases(self, seed, hidden):
        g = generator(seed)

        def args(*shape, dtype=F32, scale=1.0, shift=0.0):
            d = shape[-1]
            return (randn(g, *shape, dtype=dtype, scale=scale) + shift,
                    1.0 + randn(g, d, dtype=dtype, scale=0.5), randn(g, d, dtype=dtype, scale=0.5))

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
    return torch.relu(transformer_ref.feed_forward(x, w1, b1, w2, b2))


def _ffn_no_activation(x, w1, b1, w2, b2):
    return (x @ w1.T + b1) @ w2.T + b2


def _ffn_gelu(x, w1, b1, w2, b2):
    return transformer_ref.feed_forward(x, w1, b1, w2, b2, "gelu")


def _ffn_not_transposed(x, w1, b1, w2, b2):
    return torch.relu(x @ w1 + b1) @ w2 + b2


@register
class FeedForwardExercise(Exercise):
    """Position-wise feed-forward network."""
    id = "02.ffn"
    entry = "feed_forward"
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
        return transformer_ref.feed_forward(x, w1, b1, w2, b2)

    def cases(self, seed, hidden):
        g = generator(seed)

        def args(*lead, d, d_ff, dtype=F32):
            return (randn(g, *lead, d, dtype=dtype), randn(g, d_ff, d, dtype=dtype, scale=d ** -0.5),
                    randn(g, d_ff, dtype=dtype, scale=0.5),
                    randn(g, d, d_ff, dtype=dtype, scale=d_ff ** -0.5), randn(g, d, dtype=dtype))

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

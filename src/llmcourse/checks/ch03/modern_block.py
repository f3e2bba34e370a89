"""modern_block.ipynb: RMSNorm, SwiGLU, attention with RoPE inside and grouped-query heads,
the LLaMA-style LM (= Hugging Face ``LlamaForCausalLM``), and the size of its KV cache.

Tolerances: float32 cases of single layers keep the defaults (rtol 1e-5, atol 1e-6); the
whole LM's float32 logits allow atol 1e-5 (two blocks of matmuls and norms, where correct
implementations differ by ~1e-6). Float64 keeps the defaults. Byte counts are exact.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ...reference import attention as attention_ref
from ...reference import modern as ref
from .. import register
from ..core import Case, Exercise, Mistake, Rule
from ..kit import F32, F64, ModuleExercise, generator, knob, randn

NO_HF = (Rule("transformers", "build it yourself instead of calling Hugging Face's LLaMA"),)
NO_BUILTIN_NORM = (
    Rule("torch.nn.RMSNorm", "compute the root mean square yourself instead of nn.RMSNorm"),
    Rule(".rms_norm", "compute the root mean square yourself instead of F.rms_norm"),
    Rule(".layer_norm", "RMSNorm is not LayerNorm; compute it yourself"),
)
NO_BUILTIN_SILU = (
    Rule(".silu", "write SiLU as x * sigmoid(x) yourself"),
    Rule("torch.nn.SiLU", "write SiLU as x * sigmoid(x) yourself"),
)
NO_SDPA = (
    Rule(".scaled_dot_product_attention", "repeat the key/value heads and attend yourself; "
         "F.scaled_dot_product_attention(enable_gqa=True) is what this is checked against"),
    Rule("torch.nn.MultiheadAttention", "build the heads yourself"),
)
EXACT = dict(rtol=0.0, atol=0.5)


# ---------------------------------------------------------------------------------------
# 03.rms_norm

def _rms(x, weight, eps=1e-6, *, center=False, eps_out=False, use_eps=True, use_weight=True,
         mean=True, root=True):
    if center:
        x = x - x.mean(-1, keepdim=True)
    ms = x.square().mean(-1, keepdim=True) if mean else x.square().sum(-1, keepdim=True)
    e = eps if use_eps else 0.0
    if not root:
        y = x / (ms + e)
    elif eps_out:
        y = x / (ms.sqrt() + e)
    else:
        y = x / (ms + e).sqrt()
    return y * weight if use_weight else y


@register
class RMSNormExercise(Exercise):
    id = "03.rms_norm"
    entry = "rms_norm"
    title = "RMSNorm"
    forbid = NO_BUILTIN_NORM
    mistakes = (
        Mistake("mean subtracted (that is LayerNorm)", "RMSNorm does not centre: divide x by "
                "sqrt(mean(x^2) + eps), without subtracting the mean first.", knob(_rms, center=True)),
        Mistake("eps outside the square root", "eps goes INSIDE the root: x / sqrt(mean(x^2) + eps), "
                "as in torch.nn.RMSNorm and LLaMA; sqrt(mean(x^2)) + eps is another function.",
                knob(_rms, eps_out=True)),
        Mistake("eps left out", "add eps to the mean square before the root; it matters when x is "
                "small (and keeps an all-zero row from dividing by 0).", knob(_rms, use_eps=False)),
        Mistake("sum of squares instead of the mean", "divide by the root of the MEAN of x^2 over "
                "the last axis (sum / d), not of the sum.", knob(_rms, mean=False)),
        Mistake("divided by the mean square, not its root", "take the square root: x / sqrt(mean(x^2) "
                "+ eps).", knob(_rms, root=False)),
        Mistake("weight not applied", "multiply the normalised x by `weight` (one gain per feature).",
                knob(_rms, use_weight=False)),
    )

    def reference(self, x, weight, eps=1e-6):
        return ref.rms_norm(x, weight, eps)

    def cases(self, seed, hidden):
        g = generator(seed)

        def case(label, *shape, dtype=F32, scale=1.0, **kw):
            d = shape[-1]
            return Case(label, (randn(g, *shape, dtype=dtype, scale=scale),
                                randn(g, d, dtype=dtype, scale=0.3) + 1.0), kw)

        cases = [
            case("(batch, seq, d) = (2, 3, 8)", 2, 3, 8),
            case("small activations (~1e-3): eps matters", 4, 6, scale=1e-3),
            case("eps = 0.5 given", 3, 5, scale=2.0, eps=0.5),
            case("one vector (d,) = (16,)", 16, scale=3.0),
        ]
        if hidden:
            cases += [
                case("float64 (2, 4, 32), eps = 1e-5", 2, 4, 32, dtype=F64, eps=1e-5),
                case("float64, tiny activations", 3, 7, dtype=F64, scale=1e-4),
                case("large activations (~100)", 2, 2, 12, scale=100.0),
                case("d = 1", 5, 1, eps=1e-2),
            ]
        return cases


# ---------------------------------------------------------------------------------------
# 03.swiglu

def _sig(x):
    return x * torch.sigmoid(x)


def _swiglu(x, w_gate, w_up, w_down, *, act=_sig, swap=False, both=False, gated=True):
    if swap:
        w_gate, w_up = w_up, w_gate
    gate = act(x @ w_gate.T)
    if not gated:
        return gate @ w_down.T
    up = act(x @ w_up.T) if both else x @ w_up.T
    return (gate * up) @ w_down.T


@register
class SwiGLUExercise(Exercise):
    id = "03.swiglu"
    entry = "swiglu"
    title = "SwiGLU feed-forward"
    forbid = NO_BUILTIN_SILU
    mistakes = (
        Mistake("gate and up projections swapped", "the SiLU goes on x W_gate^T; x W_up^T is the "
                "linear branch: (silu(x W_gate^T) * x W_up^T) W_down^T.", knob(_swiglu, swap=True)),
        Mistake("SiLU on both branches", "only the gate goes through the SiLU; the up projection "
                "stays linear.", knob(_swiglu, both=True)),
        Mistake("sigmoid instead of SiLU (that is GLU)", "SwiGLU's gate is SiLU(z) = z * "
                "sigmoid(z), not sigmoid(z).", knob(_swiglu, act=torch.sigmoid)),
        Mistake("GELU instead of SiLU (that is GEGLU)", "SwiGLU uses SiLU(z) = z * sigmoid(z).",
                knob(_swiglu, act=F.gelu)),
        Mistake("no gating: the up branch is missing", "multiply the activated gate by the up "
                "projection, elementwise, before W_down.", knob(_swiglu, gated=False)),
    )

    def reference(self, x, w_gate, w_up, w_down):
        return ref.swiglu(x, w_gate, w_up, w_down)

    def cases(self, seed, hidden):
        g = generator(seed)

        def case(label, lead, d, d_ff, dtype=F32):
            return Case(label, (randn(g, *lead, d, dtype=dtype),
                                randn(g, d_ff, d, dtype=dtype, scale=d ** -0.5),
                                randn(g, d_ff, d, dtype=dtype, scale=d ** -0.5),
                                randn(g, d, d_ff, dtype=dtype, scale=d_ff ** -0.5)))

        cases = [case("(2, 5, 8) -> d_ff 24", (2, 5), 8, 24), case("one token, d_ff < d", (1,), 12, 6),
                 case("(3, 16) -> d_ff 48", (3,), 16, 48)]
        if hidden:
            cases += [case("float64 (2, 3, 16) -> 44", (2, 3), 16, 44, dtype=F64),
                      case("d = d_ff = 1", (4,), 1, 1), case("float64 4-D input", (2, 2, 3), 6, 10, dtype=F64)]
        return cases


# ---------------------------------------------------------------------------------------
# 03.rope_attention

def _rope_interleaved(x, positions):
    """RoFormer's pairs (2i, 2i+1), the OTHER convention."""
    d = x.shape[-1]
    a = attention_ref.rope_angles(positions, d)  # (T, d/2)
    cos, sin = a.cos().to(x.dtype), a.sin().to(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)


def _half(x, positions):
    return attention_ref.apply_rope(x, positions)


def _no_rope(x, positions):
    return x


def _attn(x, w_q, w_k, w_v, w_o, n_heads, n_kv_heads, positions=None, *, rope_q=_half,
          rope_k=_half, rope_v=_no_rope, repeat="interleave", causal=True, scale=None,
          ignore_positions=False):
    B, T, C = x.shape
    dh = C // n_heads
    if positions is None or ignore_positions:
        positions = torch.arange(T)
    q = (x @ w_q.T).view(B, T, n_heads, dh).transpose(1, 2)
    k = (x @ w_k.T).view(B, T, n_kv_heads, dh).transpose(1, 2)
    v = (x @ w_v.T).view(B, T, n_kv_heads, dh).transpose(1, 2)
    q, k, v = rope_q(q, positions), rope_k(k, positions), rope_v(v, positions)
    n_rep = n_heads // n_kv_heads
    if repeat == "interleave":
        k, v = ref.repeat_kv(k, n_rep), ref.repeat_kv(v, n_rep)
    else:
        k, v = k.repeat(1, n_rep, 1, 1), v.repeat(1, n_rep, 1, 1)
    s = q @ k.transpose(-2, -1) * (dh ** -0.5 if scale is None else scale(C))
    if causal:
        s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    y = torch.softmax(s, -1) @ v
    return y.transpose(1, 2).reshape(B, T, C) @ w_o.T


def _rope_attention_ref(x, w_q, w_k, w_v, w_o, n_heads, n_kv_heads, positions=None):
    return _attn(x, w_q, w_k, w_v, w_o, n_heads, n_kv_heads, positions)


REPEAT_ORDER = Mistake(
    "GQA heads repeated in the wrong order", "query head h reads key/value head h // (n_heads // "
    "n_kv_heads): repeat each kv head in place (heads 0,0,1,1 = repeat_interleave(dim=1)); "
    "k.repeat(1, n_rep, 1, 1) tiles them (0,1,0,1) and pairs queries with the wrong keys.",
    knob(_attn, repeat="tile"))


@register
class RopeAttentionExercise(Exercise):
    id = "03.rope_attention"
    entry = "rope_attention"
    title = "Causal attention with RoPE inside and grouped-query heads"
    forbid = NO_SDPA + NO_HF
    mistakes = (
        Mistake("RoPE pair convention mixed between q and k", "rotate q and k the SAME way (here "
                "the 'rotate half' layout: feature i pairs with i + d_head/2); one in halves and "
                "one in interleaved pairs (2i, 2i+1) destroys the relative-position property.",
                knob(_attn, rope_k=_rope_interleaved)),
        Mistake("interleaved RoPE pairs instead of rotate-half", "this course and Hugging Face's "
                "LLaMA pair feature i with feature i + d_head/2 (rotate_half), not (2i, 2i+1).",
                knob(_attn, rope_q=_rope_interleaved, rope_k=_rope_interleaved)),
        REPEAT_ORDER,
        Mistake("RoPE applied to the values", "rotate only the queries and the keys: positions "
                "enter through the scores q.k, the values are not rotated.", knob(_attn, rope_v=_half)),
        Mistake("RoPE not applied to the keys", "rotate BOTH q and k; the score then depends on "
                "the distance between the positions.", knob(_attn, rope_k=_no_rope)),
        Mistake("no RoPE at all", "rotate q and k by their positions (each head separately, "
                "over its d_head features).", knob(_attn, rope_q=_no_rope, rope_k=_no_rope)),
        Mistake("`positions` ignored", "rotate by the positions you are given, not always 0..T-1 "
                "(a common shift of all positions changes nothing, RoPE is relative; gaps do).",
                knob(_attn, ignore_positions=True)),
        Mistake("no causal mask", "position t may attend to positions <= t only.",
                knob(_attn, causal=False)),
        Mistake("scaled by 1/sqrt(d_model) instead of 1/sqrt(d_head)", "each head's scores are "
                "divided by sqrt(d_head).", knob(_attn, scale=lambda C: C ** -0.5)),
    )

    def reference(self, *args, **kwargs):
        return _rope_attention_ref(*args, **kwargs)

    def cases(self, seed, hidden):
        g = generator(seed)

        def case(label, B, T, C, H, H_kv, dtype=F32, start=None, positions=None):
            dh = C // H
            args = (randn(g, B, T, C, dtype=dtype), randn(g, C, C, dtype=dtype, scale=C ** -0.5),
                    randn(g, H_kv * dh, C, dtype=dtype, scale=C ** -0.5),
                    randn(g, H_kv * dh, C, dtype=dtype, scale=C ** -0.5),
                    randn(g, C, C, dtype=dtype, scale=C ** -0.5), H, H_kv)
            kw = {} if start is None else {"positions": torch.arange(start, start + T)}
            if positions is not None:
                kw = {"positions": torch.tensor(positions)}
            # float32: RoPE angles computed in float32 (position * frequency) are off by
            # ~1e-6 at positions ~100 against the float64 angles of the reference: atol 1e-5.
            return Case(label, args, kw, **(dict(rtol=1e-5, atol=1e-5) if dtype == F32 else {}))

        cases = [
            case("GQA: 4 query heads, 2 kv heads, d_head 4", 2, 6, 16, 4, 2),
            case("MQA: 4 query heads, 1 kv head", 1, 5, 16, 4, 1),
            case("MHA (n_kv_heads = n_heads = 2), d_head 8", 2, 4, 16, 2, 2),
            case("GQA with positions 7..11 (after a cache)", 1, 5, 24, 6, 3, start=7),
            case("positions with gaps (0, 1, 4, 5, 9)", 2, 5, 16, 4, 2, positions=[0, 1, 4, 5, 9]),
        ]
        if hidden:
            cases += [
                case("float64 GQA 8 heads / 2 kv heads", 2, 7, 32, 8, 2, dtype=F64),
                case("float64, positions 100..103, MQA", 2, 4, 16, 2, 1, dtype=F64, start=100),
                case("one token", 3, 1, 8, 2, 1),
                case("float64, positions (3, 3, 8, 20)", 1, 4, 16, 2, 1, dtype=F64, positions=[3, 3, 8, 20]),
            ]
        return cases


# ---------------------------------------------------------------------------------------
# 03.modern_lm

LM_INIT = ("vocab_size", "n_layer", "n_head", "n_kv_head", "n_embd", "d_ff", "tie_weights")


class _RefLM(ref.ModernLM):
    def __init__(self, vocab_size, n_layer, n_head, n_kv_head, n_embd, d_ff, tie_weights):
        super().__init__(ref.ModernConfig(vocab_size=vocab_size, block_size=64, n_layer=n_layer,
                                          n_head=n_head, n_kv_head=n_kv_head, n_embd=n_embd,
                                          d_ff=d_ff, tie_weights=tie_weights))

    def forward(self, idx):
        return super().forward(idx)


def _wrong_lm(post_norm=False, final_norm=True, repeat="interleave", rope=True, untie=False):
    class WrongModernLM(_RefLM):
        def forward(self, idx):
            x = self.embed_tokens(idx)
            H, H_kv = self.config.n_head, self.config.kv_heads
            rope_fn = _half if rope else _no_rope
            for layer in self.layers:
                a = layer.self_attn
                attn = lambda h: _attn(h, a.q_proj.weight, a.k_proj.weight, a.v_proj.weight,  # noqa: E731
                                       a.o_proj.weight, H, H_kv, repeat=repeat, rope_q=rope_fn,
                                       rope_k=rope_fn)
                if post_norm:
                    x = layer.input_layernorm(x + attn(x))
                    x = layer.post_attention_layernorm(x + layer.mlp(x))
                else:
                    x = x + attn(layer.input_layernorm(x))
                    x = x + layer.mlp(layer.post_attention_layernorm(x))
            if final_norm:
                x = self.norm(x)
            return x @ self.embed_tokens.weight.T if untie else self.lm_head(x)
    return WrongModernLM


@register
class ModernLMExercise(ModuleExercise):
    id = "03.modern_lm"
    entry = "ModernLM"
    title = "A LLaMA-style decoder-only LM"
    init = LM_INIT
    reference = _RefLM
    optional = ("lm_head.weight",)
    forbid = NO_SDPA + NO_HF + NO_BUILTIN_NORM
    mistakes = (
        Mistake("post-norm blocks where LLaMA is pre-norm", "normalise the INPUT of each sublayer: "
                "x = x + attn(input_layernorm(x)); x = x + mlp(post_attention_layernorm(x)).",
                _wrong_lm(post_norm=True)),
        Mistake("no final norm", "apply `norm` (RMSNorm) to the last hidden states before lm_head.",
                _wrong_lm(final_norm=False)),
        Mistake(REPEAT_ORDER.name, REPEAT_ORDER.explain, _wrong_lm(repeat="tile")),
        Mistake("no RoPE: the model cannot tell positions apart", "rotate q and k inside every "
                "attention layer (there are no position embeddings).", _wrong_lm(rope=False)),
        Mistake("output layer tied although tie_weights=False", "with tie_weights=False lm_head "
                "has its own weight; tie it to embed_tokens only when asked.", _wrong_lm(untie=True)),
    )

    def cases(self, seed, hidden):
        g = generator(seed)

        def case(label, B, T, vocab=29, layers=2, H=4, H_kv=2, C=16, d_ff=24, tie=True, dtype=F32):
            init = dict(zip(LM_INIT, (vocab, layers, H, H_kv, C, d_ff, tie)))
            idx = torch.randint(0, vocab, (B, T), generator=g)
            tol = dict(rtol=1e-5, atol=1e-5) if dtype == F32 else {}
            return self.case(g, label, init, (idx,), dtype, **tol)

        cases = [
            case("2 layers, GQA 4/2 heads, tied", 2, 7),
            case("1 layer, MQA 2/1 heads, untied", 1, 5, layers=1, H=2, H_kv=1, C=8, d_ff=16, tie=False),
        ]
        if hidden:
            cases += [
                case("float64, 3 layers, MHA 4/4, untied", 2, 9, layers=3, H_kv=4, tie=False, dtype=F64),
                case("float64 GQA 8/2, d_head 4", 1, 6, H=8, H_kv=2, C=32, d_ff=40, dtype=F64),
                case("a single token", 3, 1),
            ]
        return cases


# ---------------------------------------------------------------------------------------
# 03.kv_cache_bytes

def _kvb(batch, seq_len, n_layer, n_head, n_kv_head, head_dim, bytes_per_value=2, *, kv=2,
         heads="kv", bits=False, layers=True, use_batch=True):
    h = n_kv_head if heads == "kv" else n_head
    n = kv * (n_layer if layers else 1) * (batch if use_batch else 1) * seq_len * h * head_dim
    return n * bytes_per_value * (8 if bits else 1)


@register
class KVCacheBytes(Exercise):
    id = "03.kv_cache_bytes"
    entry = "kv_cache_bytes"
    title = "The size of a KV cache"
    mistakes = (
        Mistake("only the keys counted", "the cache holds keys AND values: a factor 2.",
                knob(_kvb, kv=1)),
        Mistake("query heads counted instead of key/value heads", "only the n_kv_head key/value "
                "heads are cached (that is GQA's saving); the query heads are never stored.",
                knob(_kvb, heads="q")),
        Mistake("bits instead of bytes", "bytes_per_value is already in bytes (2 for bf16).",
                knob(_kvb, bits=True)),
        Mistake("layers left out", "every layer keeps its own keys and values.", knob(_kvb, layers=False)),
        Mistake("batch left out", "every sequence of the batch has its own cache.",
                knob(_kvb, use_batch=False)),
    )

    def reference(self, batch, seq_len, n_layer, n_head, n_kv_head, head_dim, bytes_per_value=2):
        return ref.kv_cache_bytes(batch, seq_len, n_layer, n_kv_head, head_dim, bytes_per_value)

    def cases(self, seed, hidden):
        cases = [
            Case("LLaMA-2-7B, bf16, 4096 tokens (MHA)", (1, 4096, 32, 32, 32, 128), **EXACT),
            Case("LLaMA-2-70B, GQA 64/8, batch 4", (4, 4096, 80, 64, 8, 128), **EXACT),
            Case("MQA, float32, batch 3", (3, 100, 6, 8, 1, 64, 4), **EXACT),
        ]
        if hidden:
            rng = generator(seed)
            r = lambda lo, hi: int(torch.randint(lo, hi, (1,), generator=rng))  # noqa: E731
            H = 2 ** r(2, 6)
            cases += [
                Case("random GQA config", (r(2, 9), r(10, 3000), r(2, 40), H, H // 2 ** r(1, 3),
                                           2 ** r(5, 8), 2), **EXACT),
                Case("float8 (1 byte), MQA, 1 layer", (2, 512, 1, 16, 1, 64, 1), **EXACT),
            ]
        return cases

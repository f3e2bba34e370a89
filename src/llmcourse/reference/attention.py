"""Chapter 02: attention, masks, multi-head attention and positional encodings.

Conventions used throughout the course
--------------------------------------
* Boolean masks say where attention is ALLOWED: ``mask[..., i, j] is True`` means query ``i``
  may attend to key ``j``. (PyTorch's ``nn.MultiheadAttention`` uses the opposite convention
  for boolean masks, True = blocked; convert with ``~mask`` when you call it.)
* A mask is broadcast against the scores, shape ``(..., T_q, T_k)``: a causal mask is
  ``(T, T)``, a key-padding mask for a batch is ``(batch, 1, T_k)``.
* A query row in which every key is masked (a padding position under left padding and a
  causal mask, for instance) attends to nothing: its weights and its output are **zeros**, as
  in PyTorch's ``F.scaled_dot_product_attention``. (The plain softmax of a row of -inf is
  0/0 = NaN, and with padding the NaN spreads to every position of the next layer, because
  0 * NaN = NaN in the weighted sum over values.)
* Linear layers use ``nn.Linear``'s layout: ``weight`` is ``(out_features, in_features)`` and
  ``y = x @ weight.T + bias``.
* RoPE uses the GPT-NeoX / Hugging Face LLaMA "rotate half" layout: feature ``i`` is paired
  with feature ``i + d/2`` (not the interleaved pairs ``(2i, 2i+1)`` of the RoFormer paper).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .basics import softmax


# ---------------------------------------------------------------------------------------
# Scaled dot-product attention and masks

def attention_weights(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None = None
                      ) -> torch.Tensor:
    """softmax(q k^T / sqrt(d_k)) over the keys, with masked scores set to -inf first.

    q: (..., T_q, d_k), k: (..., T_k, d_k), mask: bool broadcastable to (..., T_q, T_k).
    Returns (..., T_q, T_k); every row with an allowed key sums to 1, a row with none is 0.
    """
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is None:
        return softmax(scores, dim=-1)
    scores = scores.masked_fill(~mask, float("-inf"))
    # a fully masked row would be 0/0 = NaN: it attends to nothing, weights 0
    return softmax(scores, dim=-1).masked_fill(~mask.any(dim=-1, keepdim=True), 0.0)


def scaled_dot_product_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                 mask: torch.Tensor | None = None) -> torch.Tensor:
    """Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V, batched over any leading dims.

    q: (..., T_q, d_k), k: (..., T_k, d_k), v: (..., T_k, d_v); the leading dims broadcast.
    mask: optional bool tensor broadcastable to (..., T_q, T_k), True = may attend. Masked
    scores become -inf BEFORE the softmax, so each row is renormalised over allowed keys.
    Returns (..., T_q, d_v): every output row is a convex combination of the rows of v, or
    zeros for a query with no allowed key (as PyTorch's SDPA).
    """
    return attention_weights(q, k, mask) @ v


def causal_mask(T: int, device=None) -> torch.Tensor:
    """(T, T) bool, True on and below the diagonal: position i sees positions 0..i."""
    return torch.ones(T, T, dtype=torch.bool, device=device).tril()


def padding_mask(lengths: torch.Tensor, T: int) -> torch.Tensor:
    """(batch, T) bool, True at real tokens: ``mask[b, t] = t < lengths[b]``.

    To use it as an attention mask over keys, add the query axis: ``mask[:, None, :]``
    broadcasts to (batch, T_q, T).
    """
    return torch.arange(T, device=lengths.device) < lengths[..., None]


# ---------------------------------------------------------------------------------------
# Multi-head attention

def split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(..., T, d_model) -> (..., n_heads, T, d_head): head h owns features h*d_head:(h+1)*d_head."""
    *lead, T, d = x.shape
    return x.reshape(*lead, T, n_heads, d // n_heads).transpose(-3, -2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(..., n_heads, T, d_head) -> (..., T, n_heads * d_head), the inverse of split_heads."""
    *lead, H, T, dh = x.shape
    return x.transpose(-3, -2).reshape(*lead, T, H * dh)


class MultiHeadAttention(nn.Module):
    """Multi-head attention (Vaswani et al. 2017, section 3.2.2).

    Parameters (nn.Linear layout): ``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``, each
    (d_model, d_model) with a bias. ``nn.MultiheadAttention`` keeps the first three stacked in
    ``in_proj_weight`` (rows [q; k; v]); :func:`load_mha_from_torch` copies them across.

    forward(x_q, x_kv=None, mask=None): x_q (..., T_q, d_model), x_kv (..., T_k, d_model)
    (defaults to x_q: self-attention), mask bool broadcastable to (..., T_q, T_k), True = may
    attend (the same mask is used by every head). Returns (..., T_q, d_model).
    """

    def __init__(self, d_model: int, n_heads: int, bias: bool = True):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, d_model, bias=bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def forward(self, x_q: torch.Tensor, x_kv: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        x_kv = x_q if x_kv is None else x_kv
        q = split_heads(self.q_proj(x_q), self.n_heads)  # (..., H, T_q, d_head)
        k = split_heads(self.k_proj(x_kv), self.n_heads)  # (..., H, T_k, d_head)
        v = split_heads(self.v_proj(x_kv), self.n_heads)
        if mask is not None:
            mask = mask.unsqueeze(-3)  # the same mask for every head
        return self.out_proj(merge_heads(scaled_dot_product_attention(q, k, v, mask)))


@torch.no_grad()
def load_mha_from_torch(ours: MultiHeadAttention, theirs) -> MultiHeadAttention:
    """Copy the weights of an ``nn.MultiheadAttention`` of the same size into ``ours``:
    its ``in_proj_weight`` holds the q, k, v projections stacked as rows [q; k; v]."""
    for proj, w in zip((ours.q_proj, ours.k_proj, ours.v_proj), theirs.in_proj_weight.chunk(3)):
        proj.weight.copy_(w)
    ours.out_proj.weight.copy_(theirs.out_proj.weight)
    if theirs.in_proj_bias is not None:
        for proj, b in zip((ours.q_proj, ours.k_proj, ours.v_proj), theirs.in_proj_bias.chunk(3)):
            proj.bias.copy_(b)
        ours.out_proj.bias.copy_(theirs.out_proj.bias)
    return ours


# ---------------------------------------------------------------------------------------
# Positional encodings

def sinusoidal_positions(T: int, d: int, base: float = 10000.0,
                         dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The original Transformer's fixed encodings, (T, d) with d even:

    PE[p, 2i] = sin(p / base^(2i/d)),  PE[p, 2i+1] = cos(p / base^(2i/d)),  p = 0..T-1.
    Computed in float64, returned in ``dtype``.
    """
    if d % 2:
        raise ValueError(f"d={d} must be even")
    pos = torch.arange(T, dtype=torch.float64)[:, None]
    inv_freq = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)  # (d/2,)
    angles = pos * inv_freq  # (T, d/2)
    pe = torch.stack([angles.sin(), angles.cos()], dim=-1)  # (T, d/2, 2): sin, cos interleaved
    return pe.reshape(T, d).to(dtype)


class LearnedPositions(nn.Module):
    """Learned absolute positions (GPT-2's ``wpe``): one trainable d-vector per position."""

    def __init__(self, max_len: int, d: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(max_len, d) * 0.02)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        """positions: int tensor (...) -> (..., d). Positions must be < max_len."""
        return self.weight[positions]


def rope_angles(positions: torch.Tensor, d: int, base: float = 10000.0) -> torch.Tensor:
    """Rotation angles (..., d/2): ``angle[..., i] = position * base^(-2i/d)`` (float64)."""
    inv_freq = base ** (-torch.arange(0, d, 2, dtype=torch.float64, device=positions.device) / d)
    return positions.to(torch.float64)[..., None] * inv_freq


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) where x1, x2 are the two halves of the last axis."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, positions: torch.Tensor | None = None,
               base: float = 10000.0) -> torch.Tensor:
    """Rotary position embedding (Su et al. 2021), "rotate half" layout (GPT-NeoX, HF LLaMA).

    x: (..., T, d) with d even; positions: int tensor broadcastable to (..., T), default
    0..T-1. Feature i is paired with feature i + d/2 and the pair is rotated by the angle
    ``positions * base^(-2i/d)``:

        out[..., i]       = x[..., i] cos(a_i) - x[..., i + d/2] sin(a_i)
        out[..., i + d/2] = x[..., i] sin(a_i) + x[..., i + d/2] cos(a_i)

    Rotations preserve norms and <apply_rope(q, m), apply_rope(k, n)> depends on m - n only.
    Returns a tensor of x's shape and dtype (angles are computed in float64).
    """
    T, d = x.shape[-2], x.shape[-1]
    if d % 2:
        raise ValueError(f"d={d} must be even")
    if positions is None:
        positions = torch.arange(T, device=x.device)
    angles = rope_angles(positions, d, base)  # (..., T, d/2)
    cos = torch.cat([angles.cos()] * 2, dim=-1).to(x.dtype)
    sin = torch.cat([angles.sin()] * 2, dim=-1).to(x.dtype)
    return x * cos + rotate_half(x) * sin

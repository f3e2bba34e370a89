"""Chapter 10: length generalisation -- ALiBi, and a small LM with a choice of positions.

**ALiBi** (Press et al. 2022, "Train Short, Test Long") gives a Transformer no position
embedding at all. Instead head h adds a fixed penalty to its attention scores that grows with
the distance from the query to the key:

    scores[h, i, j] = q_i . k_j / sqrt(d) - m_h * (i - j)        (j <= i; j > i is masked)

The slopes m_h are a geometric sequence. For n heads, n a power of two,
``m_h = 2^(-8 (h + 1) / n)``, h = 0..n-1 (for 8 heads: 1/2, 1/4, ..., 1/256). For other n
the paper's code takes the n' = 2^floor(log2 n) slopes of n' heads, then the odd-indexed ones
of 2n' heads (``2^(-8 (2k + 1) / (2 n'))``, k = 0, 1, ...) until there are n: so 6 heads get
the 4-head slopes 1/4, 1/16, 1/64, 1/256 and then 1/2, 1/8. Hugging Face's BLOOM
(``build_alibi_tensor``) and MPT (``build_mpt_alibi_tensor``) use the same slopes; they add
``m_h * j`` instead of ``-m_h * (i - j)``, which differs by ``m_h * i``, constant along each
row, so the softmax is the same.

:class:`PositionLM` is a small pre-LN GPT whose positions are ``"learned"`` (GPT-2's table),
``"sinusoidal"`` (added to the input, whose
embeddings are first multiplied by sqrt(d) as in Vaswani et al. 2017: the table's entries are of
size 1, the embeddings' of size 0.02), ``"rope"`` (rotating q and k) or ``"alibi"`` (the bias
above, from ``alibi_fn``, which ``"alibi"`` needs: the notebook passes the learner's own, so
that its learner build does not carry the answer; pass :func:`alibi_bias` elsewhere). It can be run on windows
longer than it was trained on, which the length-extrapolation experiment does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .attention import apply_rope, sinusoidal_positions

KINDS = ("learned", "sinusoidal", "rope", "alibi")


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """(n_heads,) float64 slopes m_h of ALiBi (see the module docstring)."""
    def power_of_two(n: int) -> list[float]:
        return [2.0 ** (-8.0 * (h + 1) / n) for h in range(n)]

    n2 = 2 ** int(math.floor(math.log2(n_heads)))
    slopes = power_of_two(n2)
    if n2 < n_heads:
        slopes += power_of_two(2 * n2)[0::2][:n_heads - n2]
    return torch.tensor(slopes, dtype=torch.float64)


def alibi_bias(n_heads: int, T: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(n_heads, T, T) ALiBi bias: ``-m_h * (i - j)`` for keys j <= i, ``-inf`` for j > i
    (the causal mask folded in). Add it to the scaled scores q k^T / sqrt(d) before the
    softmax. Computed in float64, returned in ``dtype``."""
    i = torch.arange(T, dtype=torch.float64)
    dist = i[:, None] - i[None, :]  # (T, T): i - j
    bias = -alibi_slopes(n_heads)[:, None, None] * dist
    bias = bias.masked_fill(dist < 0, float("-inf"))
    return bias.to(dtype)


class _Attention(nn.Module):
    def __init__(self, d: int, n_head: int, kind: str, alibi_fn=None):
        super().__init__()
        if kind == "alibi" and alibi_fn is None:
            raise ValueError("kind='alibi' needs alibi_fn, e.g. positions.alibi_bias or your own")
        self.n_head, self.kind, self.alibi_fn = n_head, kind, alibi_fn
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
        if self.kind == "rope":
            q, k = apply_rope(q), apply_rope(k)
        if self.kind == "alibi":
            bias = self.alibi_fn(self.n_head, T).to(x.dtype)  # (H, T, T), -inf above the diagonal
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class _Block(nn.Module):
    def __init__(self, d: int, n_head: int, kind: str, alibi_fn=None):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = _Attention(d, n_head, kind, alibi_fn)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(approximate="tanh"),
                                 nn.Linear(4 * d, d))

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class PositionLM(nn.Module):
    """A small causal LM, ids (B, T) -> logits (B, T, vocab), with ``kind`` positions.

    ``max_len`` sizes the learned table (positions past the training length keep their random
    initial vectors: nothing ever trained them) and bounds the sinusoidal table; RoPE and
    ALiBi have no limit."""

    def __init__(self, kind: str, vocab_size: int = 256, d: int = 64, n_layer: int = 2,
                 n_head: int = 4, max_len: int = 1024, alibi_fn=None):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.kind, self.max_len = kind, max_len
        self.wte = nn.Embedding(vocab_size, d)
        if kind == "learned":
            self.wpe = nn.Embedding(max_len, d)
        if kind == "sinusoidal":
            self.register_buffer("pe", sinusoidal_positions(max_len, d), persistent=False)
        self.h = nn.ModuleList([_Block(d, n_head, kind, alibi_fn) for _ in range(n_layer)])
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        T = idx.shape[-1]
        x = self.wte(idx)
        if self.kind == "sinusoidal":  # as in Vaswani et al.: embeddings * sqrt(d), then + PE
            x = x * math.sqrt(x.shape[-1])
        if self.kind in ("learned", "sinusoidal"):
            if T > self.max_len:
                raise ValueError(f"{T} positions; this model has {self.max_len}")
            x = x + (self.wpe.weight[:T] if self.kind == "learned" else self.pe[:T])
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))


@torch.no_grad()
def loss_by_position(model: nn.Module, tokens: torch.Tensor, T: int, n_windows: int,
                     batch_size: int = 16) -> torch.Tensor:
    """(T,) mean next-token loss (nats) at each position 0..T-1 of ``n_windows`` consecutive
    non-overlapping windows of T + 1 tokens of the stream ``tokens``."""
    model.eval()
    n = min(n_windows, (len(tokens) - 1) // T)
    starts = torch.arange(n) * T
    total = torch.zeros(T, dtype=torch.float64)
    for b in range(0, n, batch_size):
        s = starts[b:b + batch_size]
        w = tokens[s[:, None] + torch.arange(T + 1)]
        logits = model(w[:, :-1])
        nll = F.cross_entropy(logits.transpose(1, 2), w[:, 1:], reduction="none")  # (B, T)
        total += nll.double().sum(0)
    return total / n

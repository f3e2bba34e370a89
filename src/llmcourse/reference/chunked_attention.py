"""Chapter 09: three ways to compute the same attention, and what each costs in memory.

* :func:`naive_attention` materialises the whole ``(B, H, S, S)`` score matrix (memory
  ``O(S^2)`` per head): ``softmax(q k^T / sqrt(d) + mask) v``.
* :func:`chunked_attention` processes the queries in blocks of ``chunk_size`` rows. Each
  query row needs every key, but rows are independent, so a block of rows gives exactly the
  rows of the full softmax; only a ``(chunk, S)`` block of scores is alive at a time
  (memory ``O(chunk * S)``). With a causal mask, query ``i`` (global index
  ``start + local``) sees keys ``0..i``: the mask must use global positions, and the keys
  after the chunk's last query can be skipped altogether (half the work and memory).
* ``torch.nn.functional.scaled_dot_product_attention`` picks a fused kernel (FlashAttention
  or memory-efficient attention on a GPU) that never writes the score matrix to memory.

All take q, k, v of shape (batch, heads, seq, head_dim) and return the same shape and dtype.
The chunked version computes scores and softmax in float32 (float64 for float64 inputs)
and casts back, as fused kernels do.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    causal: bool = False) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v with the full score matrix; q, k, v: (B, H, S, d).

    Written as a textbook would, in the inputs' dtype: several (B, H, S, S) temporaries (the
    product, the scaled scores, the masked scores, the probabilities) are alive at once."""
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
    if causal:
        S_q, S_k = scores.shape[-2:]
        mask = torch.ones(S_q, S_k, dtype=torch.bool, device=q.device).tril(S_k - S_q)
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def chunked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      causal: bool = False, chunk_size: int = 128) -> torch.Tensor:
    """Query-chunked attention, equal to scaled_dot_product_attention(q, k, v, is_causal=causal).

    q, k, v: (B, H, S, d) with the same S (self-attention); ``chunk_size`` >= 1 query rows
    per block (the last block may be shorter). Returns (B, H, S, d) in q's dtype.
    """
    S, d = q.shape[-2], q.shape[-1]
    scale = 1.0 / math.sqrt(d)
    ct = torch.promote_types(q.dtype, torch.float32)  # compute type: float32 or float64
    kt = k.transpose(-2, -1).to(ct)
    vf = v.to(ct)
    out = torch.empty_like(q)
    for start in range(0, S, chunk_size):
        stop = min(start + chunk_size, S)
        # causal: keys after the chunk's last query are all masked, so skip them entirely
        n_keys = stop if causal else k.shape[-2]
        scores = (q[..., start:stop, :].to(ct) @ kt[..., :n_keys]) * scale  # (B, H, c, n_keys)
        if causal:
            rows = torch.arange(start, stop, device=q.device)
            keys = torch.arange(n_keys, device=q.device)
            scores = scores.masked_fill(keys[None, :] > rows[:, None], float("-inf"))
        out[..., start:stop, :] = (torch.softmax(scores, dim=-1) @ vf[..., :n_keys, :]).to(q.dtype)
    return out


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False
         ) -> torch.Tensor:
    """PyTorch's fused attention (the authority the other two are tested against)."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


def peak_memory(fn, *args, **kwargs) -> tuple[object, int]:
    """Run ``fn(*args, **kwargs)`` on the GPU and return (result, peak bytes allocated
    during the call, above what was allocated before it). Needs CUDA."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn(*args, **kwargs)
    torch.cuda.synchronize()
    return out, torch.cuda.max_memory_allocated() - before

"""Chapter 03: FlashAttention (Dao et al., 2022) in plain PyTorch, forward and backward.

Exact attention, computed in tiles (分块) so that the T_q x T_k score matrix never exists as a
whole. The forward pass streams key/value tiles past each query tile with the **online
softmax** (在线 softmax): it keeps, per query row, the running maximum ``m`` and the running
sum ``l`` of ``exp(s - m)``, and an unnormalised output ``acc``. When a new tile raises the
maximum from ``m`` to ``m_new``, everything accumulated so far is RESCALED by
``exp(m - m_new)``:

    l   <- exp(m - m_new) * l   + rowsum(exp(S_tile - m_new))
    acc <- exp(m - m_new) * acc + exp(S_tile - m_new) @ V_tile

At the end ``O = acc / l`` and the log-sum-exp ``L = m + log l`` (对数和指数) is saved: it is
all the backward pass needs to recompute any tile of probabilities exactly,
``P_tile = exp(S_tile - L)``, instead of storing the T_q x T_k matrix P. The backward pass uses
``D = rowsum(dO * O)`` (= rowsum(P * dP)) and, tile by tile,

    dV += P^T dO,   dP = dO V^T,   dS = P * (dP - D),   dQ += scale dS K,   dK += scale dS^T Q.

Extra memory: O(T d) (m, l, L, D and the accumulators) plus one tile, against O(T^2) for the
naive computation. The FLOPs are the same as naive attention's (the backward even recomputes
S); the gain on a GPU is IO: the tiles live in on-chip SRAM, HBM is read and written O(T d)
times instead of O(T^2) (see the chapter's page).

Conventions: q (..., T_q, d), k (..., T_k, d), v (..., T_k, d_v); ``causal=True`` is
``F.scaled_dot_product_attention``'s ``is_causal`` (query i sees keys 0..i, aligned at the
top-left), and tiles that lie entirely above the diagonal are SKIPPED (never computed).
``lse`` is returned in the input dtype, shape (..., T_q).
"""

from __future__ import annotations

import math

import torch


def _tile_mask(r0: int, r1: int, c0: int, c1: int, device) -> torch.Tensor:
    """(r1-r0, c1-c0) bool, True where key c may be seen by query r (c <= r)."""
    rows = torch.arange(r0, r1, device=device)[:, None]
    cols = torch.arange(c0, c1, device=device)[None, :]
    return cols <= rows


def flash_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                  block_q: int = 64, block_k: int = 64, scale: float | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Tiled attention with the online softmax. Returns (O (..., T_q, d_v), lse (..., T_q))."""
    T_q, T_k = q.shape[-2], k.shape[-2]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    out = torch.empty(*q.shape[:-1], v.shape[-1], dtype=q.dtype, device=q.device)
    lse = torch.empty(q.shape[:-1], dtype=q.dtype, device=q.device)
    for r0 in range(0, T_q, block_q):
        r1 = min(r0 + block_q, T_q)
        qi = q[..., r0:r1, :]
        m = torch.full(qi.shape[:-1], float("-inf"), dtype=q.dtype, device=q.device)
        l = torch.zeros_like(m)
        acc = torch.zeros(*qi.shape[:-1], v.shape[-1], dtype=q.dtype, device=q.device)
        for c0 in range(0, T_k, block_k):
            if causal and c0 > r1 - 1:
                break  # this tile and every later one are entirely masked: skip them
            c1 = min(c0 + block_k, T_k)
            s = (qi @ k[..., c0:c1, :].transpose(-2, -1)) * scale
            if causal and c1 - 1 > r0:  # the tile crosses the diagonal
                s = s.masked_fill(~_tile_mask(r0, r1, c0, c1, q.device), float("-inf"))
            m_new = torch.maximum(m, s.amax(dim=-1))
            p = torch.exp(s - m_new[..., None])
            alpha = torch.exp(m - m_new)  # rescales what was accumulated under the old max
            l = alpha * l + p.sum(dim=-1)
            acc = alpha[..., None] * acc + p @ v[..., c0:c1, :]
            m = m_new
        out[..., r0:r1, :] = acc / l[..., None]
        lse[..., r0:r1] = m + torch.log(l)
    return out, lse


def flash_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                   lse: torch.Tensor, grad_out: torch.Tensor, causal: bool = False,
                   block_q: int = 64, block_k: int = 64, scale: float | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (dQ, dK, dV) of attention from the saved O and log-sum-exp, tile by tile:
    each probability tile is recomputed as exp(S_tile - lse), never stored whole."""
    T_q, T_k = q.shape[-2], k.shape[-2]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    D = (grad_out * out).sum(dim=-1)  # (..., T_q) = rowsum(P * dP)
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    for c0 in range(0, T_k, block_k):
        c1 = min(c0 + block_k, T_k)
        kj, vj = k[..., c0:c1, :], v[..., c0:c1, :]
        for r0 in range(0, T_q, block_q):
            r1 = min(r0 + block_q, T_q)
            if causal and c0 > r1 - 1:
                continue  # entirely masked tile
            qi, doi = q[..., r0:r1, :], grad_out[..., r0:r1, :]
            s = (qi @ kj.transpose(-2, -1)) * scale
            if causal and c1 - 1 > r0:
                s = s.masked_fill(~_tile_mask(r0, r1, c0, c1, q.device), float("-inf"))
            p = torch.exp(s - lse[..., r0:r1, None])
            dv[..., c0:c1, :] += p.transpose(-2, -1) @ doi
            dp = doi @ vj.transpose(-2, -1)
            ds = p * (dp - D[..., r0:r1, None])
            dq[..., r0:r1, :] += (ds @ kj) * scale
            dk[..., c0:c1, :] += (ds.transpose(-2, -1) @ qi) * scale
    return dq, dk, dv


class FlashAttention(torch.autograd.Function):
    """``FlashAttention.apply(q, k, v, causal=False, block_q=64, block_k=64)``: exact
    attention whose forward saves only (q, k, v, O, lse) for backward."""

    @staticmethod
    def forward(ctx, q, k, v, causal=False, block_q=64, block_k=64):
        out, lse = flash_forward(q, k, v, causal, block_q, block_k)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.causal, ctx.block_q, ctx.block_k = causal, block_q, block_k
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = flash_backward(q, k, v, out, lse, grad_out, ctx.causal, ctx.block_q,
                                    ctx.block_k)
        return dq, dk, dv, None, None, None


def flash_attention(q, k, v, causal: bool = False, block_q: int = 64, block_k: int = 64):
    """Differentiable FlashAttention (see :class:`FlashAttention`)."""
    return FlashAttention.apply(q, k, v, causal, block_q, block_k)


def naive_attention(q, k, v, causal: bool = False):
    """softmax(q k^T / sqrt(d)) v with the whole T_q x T_k matrix (the baseline)."""
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if causal:
        s = s.masked_fill(~torch.ones(s.shape[-2:], dtype=torch.bool, device=q.device).tril(),
                          float("-inf"))
    return torch.softmax(s, dim=-1) @ v


# ---------------------------------------------------------------------------------------
# Measuring peak extra memory (CPU or GPU)

class PeakMemory:
    """Context manager: the peak bytes of tensor storage created inside it and still alive
    (on any device), sampled after every torch operator (a ``TorchDispatchMode`` sees each
    one). Inputs that existed before do not count; views share their base's storage.
    ``with PeakMemory() as m: f()`` then ``m.peak`` (bytes). Works on the CPU, where torch
    has no ``max_memory_allocated``; on a GPU prefer ``torch.cuda.max_memory_allocated``."""

    def __enter__(self):
        from torch.multiprocessing.reductions import StorageWeakRef
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten

        tracker = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for key in [k for k, (ref, _) in tracker.live.items() if ref.expired()]:
                    del tracker.live[key]
                for t in tree_flatten(out)[0]:
                    if isinstance(t, torch.Tensor):
                        st = t.untyped_storage()
                        ref = StorageWeakRef(st)
                        tracker.live.setdefault(ref.cdata, (ref, st.nbytes()))
                tracker.peak = max(tracker.peak, sum(n for _, n in tracker.live.values()))
                return out

        self.live, self.peak = {}, 0
        self._mode = _Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        self._mode.__exit__(*exc)
        self.live = {}
        return False


def peak_memory(fn) -> int:
    """Peak bytes of new tensor storage alive while ``fn()`` runs (see :class:`PeakMemory`)."""
    with PeakMemory() as m:
        fn()
    return m.peak

"""Chapter 03 (GPU only, optional): the FlashAttention forward pass as a Triton kernel.

One program instance owns one tile of ``BLOCK_M`` queries of one (batch, head): it loads the
tile into SRAM once, streams the key/value tiles past it with the online softmax (the same
recurrence as :func:`llmcourse.reference.flash.flash_forward`), and writes O and the
log-sum-exp once. With ``causal=True`` the loop stops at the diagonal: the tiles above it are
never loaded. Written after the structure of Triton's fused-attention tutorial, simplified
(forward only, head dim a power of two <= 128, float16/bfloat16/float32 inputs, accumulation
in float32).

``import`` of this module works without Triton; :func:`triton_flash_forward` needs Triton
and CUDA. It has been run only where the project's GPU tests ran (``tests/test_reference_ch03.py``
marks them ``gpu``; they skip cleanly on a CPU).
"""

from __future__ import annotations

import math

import torch

try:  # Triton ships with PyTorch's CUDA wheels on Linux; absent on CPU-only installs
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover - depends on the installation
    triton = None
    tl = None


def available() -> bool:
    return triton is not None and torch.cuda.is_available()


if triton is not None:  # pragma: no cover - needs a GPU
    @triton.jit
    def _flash_fwd_kernel(Q, K, V, O, L, sm_scale, T_q, T_k,
                          stride_qh, stride_qt, stride_kh, stride_kt, stride_vh, stride_vt,
                          stride_oh, stride_ot,
                          CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                          D: tl.constexpr):
        pid_m = tl.program_id(0)
        bh = tl.program_id(1)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, D)
        q = tl.load(Q + bh * stride_qh + offs_m[:, None] * stride_qt + offs_d[None, :],
                    mask=offs_m[:, None] < T_q, other=0.0)
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, D], dtype=tl.float32)
        hi = tl.minimum((pid_m + 1) * BLOCK_M, T_k) if CAUSAL else T_k
        for start_n in range(0, hi, BLOCK_N):
            cols = start_n + offs_n
            k = tl.load(K + bh * stride_kh + cols[:, None] * stride_kt + offs_d[None, :],
                        mask=cols[:, None] < T_k, other=0.0)
            s = tl.dot(q, tl.trans(k)).to(tl.float32) * sm_scale
            valid = cols[None, :] < T_k
            if CAUSAL:
                valid = valid & (cols[None, :] <= offs_m[:, None])
            s = tl.where(valid, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            p = tl.exp(s - m_new[:, None])
            alpha = tl.exp(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(V + bh * stride_vh + cols[:, None] * stride_vt + offs_d[None, :],
                        mask=cols[:, None] < T_k, other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v).to(tl.float32)
            m_i = m_new
        out = acc / l_i[:, None]
        tl.store(O + bh * stride_oh + offs_m[:, None] * stride_ot + offs_d[None, :],
                 out.to(O.dtype.element_ty), mask=offs_m[:, None] < T_q)
        tl.store(L + bh * T_q + offs_m, m_i + tl.log(l_i), mask=offs_m < T_q)


def triton_flash_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                         block_m: int = 64, block_n: int = 64, return_lse: bool = False):
    """FlashAttention forward on a GPU. q, k, v: (B, H, T, D) CUDA tensors of one dtype,
    D a power of two in [16, 128]; causal needs T_q = T_k. Returns O (and the float32
    log-sum-exp (B, H, T_q) when ``return_lse``)."""
    if not available():
        raise RuntimeError("triton_flash_forward needs Triton and a CUDA device")
    B, H, T_q, D = q.shape
    T_k = k.shape[2]
    if D not in (16, 32, 64, 128) or v.shape[-1] != D:
        raise ValueError("head dim must be 16, 32, 64 or 128 (and equal for q, k, v)")
    q, k, v = (t.reshape(B * H, t.shape[2], D).contiguous() for t in (q, k, v))
    out = torch.empty_like(q)
    lse = torch.empty(B * H, T_q, device=q.device, dtype=torch.float32)
    grid = (triton.cdiv(T_q, block_m), B * H)
    _flash_fwd_kernel[grid](q, k, v, out, lse, 1.0 / math.sqrt(D), T_q, T_k,
                            q.stride(0), q.stride(1), k.stride(0), k.stride(1),
                            v.stride(0), v.stride(1), out.stride(0), out.stride(1),
                            CAUSAL=causal, BLOCK_M=block_m, BLOCK_N=block_n, D=D)
    out = out.reshape(B, H, T_q, D)
    return (out, lse.reshape(B, H, T_q)) if return_lse else out


def benchmark(seq_lens=(1024, 2048, 4096, 8192), batch: int = 4, heads: int = 16,
              head_dim: int = 64, dtype=torch.float16, causal: bool = True) -> list[dict]:
    """Time the Triton forward against ``F.scaled_dot_product_attention`` (which dispatches
    to PyTorch's own flash kernel) with chapter 09's timer (warm-up, synchronised, median).
    Returns one row per sequence length: T, triton_ms, sdpa_ms, max_abs_err."""
    import torch.nn.functional as F

    from .timing import time_fn

    rows = []
    g = torch.Generator(device="cuda").manual_seed(0)
    for T in seq_lens:
        q, k, v = (torch.randn(batch, heads, T, head_dim, device="cuda", dtype=dtype, generator=g)
                   for _ in range(3))
        ours = triton_flash_forward(q, k, v, causal)
        theirs = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        rows.append({"T": T,
                     "triton_ms": time_fn(lambda: triton_flash_forward(q, k, v, causal))["median_ms"],
                     "sdpa_ms": time_fn(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal))["median_ms"],
                     "max_abs_err": (ours.float() - theirs.float()).abs().max().item()})
    return rows

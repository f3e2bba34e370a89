"""Chapter 09 (GPU only, optional): a fused row softmax written in Triton.

One program instance handles one row: it loads the row once into registers/SRAM, computes
``exp(x - max) / sum`` there and writes the result once. The ideal traffic is read x +
write y = ``2 rows cols s`` bytes, so a good kernel runs close to the device's copy
bandwidth (the target here: at least 80% of the measured ``y.copy_(x)`` bandwidth).
Eager PyTorch code written as several ops (max, subtract, exp, sum, divide) reads and
writes the whole tensor several times.

``import`` of this module works without Triton; :func:`triton_softmax` needs Triton and CUDA.
"""

from __future__ import annotations

import torch

try:  # Triton ships with PyTorch's CUDA wheels on Linux; absent on CPU-only installs
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover - depends on the installation
    triton = None
    tl = None


def available() -> bool:
    return triton is not None and torch.cuda.is_available()


if triton is not None:
    @triton.jit
    def _softmax_kernel(x_ptr, y_ptr, x_stride, y_stride, n_cols, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        mask = cols < n_cols
        x = tl.load(x_ptr + row * x_stride + cols, mask=mask, other=-float("inf"))
        x = x.to(tl.float32)
        x = x - tl.max(x, axis=0)
        e = tl.exp(x)
        y = e / tl.sum(e, axis=0)
        tl.store(y_ptr + row * y_stride + cols, y.to(y_ptr.dtype.element_ty), mask=mask)


def triton_softmax(x: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis of a 2-D CUDA tensor (one Triton program per row)."""
    if not available():
        raise RuntimeError("triton_softmax needs Triton and a CUDA GPU")
    assert x.dim() == 2 and x.is_cuda
    x = x.contiguous()
    rows, cols = x.shape
    y = torch.empty_like(x)
    block = triton.next_power_of_2(cols)
    warps = 4 if block <= 2048 else (8 if block <= 4096 else 16)
    _softmax_kernel[(rows,)](x, y, x.stride(0), y.stride(0), cols, BLOCK=block, num_warps=warps)
    return y


def eager_softmax(x: torch.Tensor) -> torch.Tensor:
    """The unfused version: five separate kernels, each a full pass over memory."""
    m = x.amax(dim=-1, keepdim=True)
    e = torch.exp(x - m)
    return e / e.sum(dim=-1, keepdim=True)

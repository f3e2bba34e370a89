"""Chapter 07: making a trained model smaller - int8 quantization and magnitude pruning.

* absmax (symmetric) quantization (对称量化): ``scale = max|x| / 127``,
  ``q = round(x / scale)`` in int8 [-127, 127], ``x ~ q * scale``.
* zero-point (asymmetric) quantization (非对称量化): the range [min, max], extended to
  contain 0 so that 0 is represented exactly, is mapped onto the 256 int8 levels
  [-128, 127]: ``scale = (max - min) / 255``, ``z = -128 - round(min / scale)``,
  ``q = clamp(round(x / scale) + z, -128, 127)``, ``x ~ (q - z) * scale``.
* magnitude pruning (幅值剪枝): set the ``k = floor(sparsity * numel)`` weights of smallest
  absolute value to zero.

``dim`` (where a function takes it) gives one scale per slice along that axis, e.g.
``dim=1`` for a weight (out, in) is one scale per output row ("vector-wise"); ``dim=None``
is one scale for the whole tensor. Scales keep the reduced axis (``keepdim``) so that
``q * scale`` broadcasts.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _amax(x: torch.Tensor, dim: int | None) -> torch.Tensor:
    a = x.abs()
    return a.amax() if dim is None else a.amax(dim=dim, keepdim=True)


def absmax_quantize(x: torch.Tensor, dim: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """x float -> (q int8, scale of x's dtype): scale = max|x| / 127 (1 where max|x| = 0),
    q = round(x / scale)."""
    scale = _amax(x, dim) / 127
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    q = torch.round(x / scale).clamp(-127, 127).to(torch.int8)
    return q, scale


def absmax_dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.to(scale.dtype) * scale


def zeropoint_quantize(x: torch.Tensor, dim: int | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x float -> (q int8, scale of x's dtype, zero_point int32), all reductions keepdim.

    lo = min(min x, 0), hi = max(max x, 0); scale = (hi - lo) / 255 (1 where hi = lo);
    zero_point = -128 - round(lo / scale); q = clamp(round(x / scale) + zero_point, -128, 127)."""
    if dim is None:
        lo, hi = x.amin(), x.amax()
    else:
        lo, hi = x.amin(dim=dim, keepdim=True), x.amax(dim=dim, keepdim=True)
    lo, hi = lo.clamp(max=0), hi.clamp(min=0)
    scale = (hi - lo) / 255
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    zero_point = (-128 - torch.round(lo / scale)).to(torch.int32)
    q = (torch.round(x / scale) + zero_point).clamp(-128, 127).to(torch.int8)
    return q, scale, zero_point


def zeropoint_dequantize(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor
                         ) -> torch.Tensor:
    return (q.to(scale.dtype) - zero_point.to(scale.dtype)) * scale


def quantization_error(x: torch.Tensor, method: str = "absmax", dim: int | None = None) -> float:
    """Max abs error of quantize-then-dequantize."""
    if method == "absmax":
        xh = absmax_dequantize(*absmax_quantize(x, dim))
    elif method == "zeropoint":
        xh = zeropoint_dequantize(*zeropoint_quantize(x, dim))
    else:
        raise ValueError("method must be 'absmax' or 'zeropoint'")
    return (x - xh).abs().max().item()


def magnitude_prune(w: torch.Tensor, sparsity: float) -> torch.Tensor:
    """A copy of w with its k = floor(sparsity * numel) smallest-|w| entries set to 0."""
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError("sparsity must be in [0, 1]")
    k = math.floor(sparsity * w.numel())
    flat = w.flatten().clone()
    if k > 0:
        flat[flat.abs().argsort(stable=True)[:k]] = 0
    return flat.view_as(w)


def prunable_weights(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The weight matrices of the Transformer blocks' linear layers (embeddings, the tied
    head, LayerNorms and biases are left alone, as is usual)."""
    return [(name, m.weight) for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and ".h." in f".{name}"]


@torch.no_grad()
def apply_to_weights(model: nn.Module, transform) -> nn.Module:
    """In place: every prunable weight W becomes ``transform(W)``; returns the model."""
    for _, w in prunable_weights(model):
        w.copy_(transform(w))
    return model


def model_bytes(model: nn.Module, bits: int = 32, per_row_overhead_bytes: int = 0) -> int:
    """Storage of the model with its prunable weights at ``bits`` per entry (plus a per-row
    overhead, e.g. one fp32 scale = 4 bytes) and every other parameter at 32 bits."""
    prunable = {id(w) for _, w in prunable_weights(model)}
    total = 0
    for p in model.parameters():
        if id(p) in prunable:
            total += p.numel() * bits // 8 + p.shape[0] * per_row_overhead_bytes
        else:
            total += p.numel() * 4
    return total

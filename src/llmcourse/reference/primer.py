"""Chapter 03: Primer's two primitives (So et al., 2021, "Primer: Searching for Efficient
Transformers for Language Modeling").

* **Squared ReLU** (平方 ReLU): ``relu(x)^2``, used as the feed-forward activation.
* **Multi-dconv-head attention** (多深度卷积头注意力, MDHA): after the Q, K and V projections,
  a *causal depthwise convolution* (因果深度卷积) of width 3 runs along the sequence, one
  kernel per channel, before the heads attend.

Convention for the convolution (the one the exercises state): for input ``x`` (B, T, C) and a
kernel ``weight`` (C, K),

    out[b, t, c] = sum_{j=0}^{K-1} weight[c, j] * x[b, t - (K - 1) + j, c]

with ``x`` taken as 0 before position 0. So ``weight[c, K-1]`` multiplies the CURRENT
position and ``weight[c, 0]`` the one K-1 steps back; position t never reads t+1 or later.
This is ``torch.nn.Conv1d(C, C, K, groups=C)`` (a cross-correlation) applied to the input
padded with K-1 zeros on the left.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def squared_relu(x: torch.Tensor) -> torch.Tensor:
    """Primer's activation: max(x, 0)^2, elementwise."""
    return torch.relu(x).square()


def squared_relu_ffn(x: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor) -> torch.Tensor:
    """relu(x W_up^T)^2 W_down^T, no biases. x (..., d); w_up (d_ff, d); w_down (d, d_ff)."""
    return squared_relu(x @ w_up.T) @ w_down.T


def causal_depthwise_conv(x: torch.Tensor, weight: torch.Tensor,
                          bias: torch.Tensor | None = None) -> torch.Tensor:
    """Causal depthwise convolution along the sequence (see the module docstring).

    x: (..., T, C); weight: (C, K); bias: optional (C,). Returns (..., T, C) in x's dtype.
    Written as K shifted, scaled copies of x: no T x T matrix, O(T C K) work.
    """
    T, K = x.shape[-2], weight.shape[-1]
    out = torch.zeros_like(x)
    for j in range(K):
        shift = K - 1 - j  # weight[:, j] reads position t - shift
        if shift >= T:
            continue
        shifted = F.pad(x[..., : T - shift, :], (0, 0, shift, 0))  # zeros before position 0
        out = out + shifted * weight[:, j]
    return out if bias is None else out + bias


class DepthwiseConv(nn.Module):
    """A causal depthwise convolution of width ``width`` over (..., T, C), parameter
    ``weight`` (C, width). Initialised as the identity (1 on the current position), so
    that a fresh MDHA layer behaves like plain attention."""

    def __init__(self, channels: int, width: int = 3):
        super().__init__()
        w = torch.zeros(channels, width)
        w[:, -1] = 1.0
        self.weight = nn.Parameter(w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return causal_depthwise_conv(x, self.weight)

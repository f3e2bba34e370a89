"""Chapter 00: numerically stable softmax, log-softmax and cross-entropy."""

from __future__ import annotations

import torch


def softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax along ``dim``, safe for huge or tiny logits.

    softmax(x)_i = exp(x_i - m) / sum_j exp(x_j - m), with m = max_j x_j along ``dim``;
    subtracting m changes nothing mathematically and keeps every exp() in (0, 1].
    Shape and dtype are those of ``x``. Entries of -inf get probability 0.
    """
    m = x.amax(dim=dim, keepdim=True)
    e = torch.exp(x - m)
    return e / e.sum(dim=dim, keepdim=True)


def log_softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """log(softmax(x)) along ``dim`` without ever taking log(0): x - m - log(sum exp(x - m))."""
    m = x.amax(dim=dim, keepdim=True)
    shifted = x - m
    return shifted - torch.log(torch.exp(shifted).sum(dim=dim, keepdim=True))


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of ``targets`` under ``softmax(logits)``.

    logits: (..., C) float; targets: (...) int64 class indices in [0, C).
    Returns a 0-dim tensor of the logits' dtype: -mean(log_softmax(logits)[..., target]).
    """
    logp = log_softmax(logits, dim=-1)
    picked = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return -picked.mean()

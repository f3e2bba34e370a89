"""Chapter 10: calibration (校准) of a classifier or a language model's next-token predictions.

Conventions (the book states them the same way):

* A prediction has a **confidence** ``c`` in [0, 1] (the probability of the predicted class)
  and is **correct** or not. The **reliability** of ``M`` bins is, per bin, the number of
  predictions in it, their accuracy and their mean confidence (empty bins: 0, 0, 0).
* Equal-width bins (Guo et al. 2017): bin ``m`` (0-based) holds ``m/M < c <= (m+1)/M``; a
  confidence of exactly 0 goes to bin 0.
* Equal-mass bins: sort the predictions by confidence (a stable sort) and cut the sorted list
  into ``M`` consecutive chunks whose sizes differ by at most one, the larger chunks first
  (``numpy.array_split``'s rule).
* ``ECE = sum_m (n_m / n) |acc_m - conf_m|``: each bin's gap weighted by its share of ALL
  predictions (empty bins weigh 0).
* Temperature scaling (Guo et al. 2017) divides the logits by one ``T > 0`` fitted on held-out
  data to minimise the mean negative log-likelihood. In ``beta = 1/T`` that loss is convex
  (a log-sum-exp minus a linear term), so its derivative is increasing and bisection finds the
  unique minimum.

Verified in ``tests/test_reference_ch10.py`` against closed forms and brute force.
"""

from __future__ import annotations

import math

import torch


def bin_index(confidence: torch.Tensor, n_bins: int = 10, scheme: str = "width") -> torch.Tensor:
    """int64 ``(n,)``: the bin of each prediction under ``scheme`` "width" or "mass"."""
    n = confidence.shape[0]
    if scheme == "width":
        return (torch.ceil(confidence.double() * n_bins) - 1).clamp(0, n_bins - 1).long()
    if scheme == "mass":
        order = torch.sort(confidence, stable=True).indices
        sizes = [n // n_bins + (1 if m < n % n_bins else 0) for m in range(n_bins)]
        ids = torch.repeat_interleave(torch.arange(n_bins), torch.tensor(sizes))
        return torch.empty(n, dtype=torch.int64).scatter_(0, order, ids)
    raise ValueError(f"scheme must be 'width' or 'mass', got {scheme!r}")


def reliability(confidence: torch.Tensor, correct: torch.Tensor, n_bins: int = 10,
                scheme: str = "width") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(ece, counts, accuracy, mean_confidence)`` of 1-D ``confidence`` (float) and ``correct``
    (bool or 0/1). ``ece`` is a 0-dim tensor of ``confidence``'s dtype, ``counts`` int64
    ``(n_bins,)``, the other two ``(n_bins,)`` of ``confidence``'s dtype (0 in empty bins)."""
    dtype = confidence.dtype
    idx = bin_index(confidence, n_bins, scheme)
    counts = torch.bincount(idx, minlength=n_bins)
    hits = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, idx, correct.double())
    conf = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, idx, confidence.double())
    safe = counts.clamp_min(1).double()
    acc, mean_conf = hits / safe, conf / safe
    ece = (counts.double() / confidence.shape[0] * (acc - mean_conf).abs()).sum()
    return ece.to(dtype), counts, acc.to(dtype), mean_conf.to(dtype)


def mean_nll(logits: torch.Tensor, labels: torch.Tensor, T: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(logits / T)``."""
    logp = torch.log_softmax(logits.double() / T, dim=-1)
    return -logp.gather(-1, labels[:, None]).mean().item()


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, lo: float = 1e-3,
                    hi: float = 1e3) -> float:
    """The ``T`` in [lo, hi] minimising ``mean_nll(logits, labels, T)``: bisection on the
    derivative in ``beta = 1/T``, ``E_{softmax(beta z)}[z] - z_label`` averaged, which increases
    with beta. ``logits`` (n, C) float, ``labels`` (n,) int64. Returns a Python float."""
    z = logits.double()
    z_y = z.gather(-1, labels[:, None]).squeeze(-1)

    def slope(beta: float) -> float:
        p = torch.softmax(beta * z, dim=-1)
        return ((p * z).sum(-1) - z_y).mean().item()

    b_lo, b_hi = 1.0 / hi, 1.0 / lo
    if slope(b_hi) <= 0:
        return lo
    if slope(b_lo) >= 0:
        return hi
    for _ in range(200):
        mid = math.sqrt(b_lo * b_hi)  # bisection in log(beta): the range spans 6 decades
        if slope(mid) > 0:
            b_hi = mid
        else:
            b_lo = mid
        if b_hi / b_lo - 1 < 1e-15:
            break
    return 1.0 / math.sqrt(b_lo * b_hi)

"""Chapter 10's challenge: calibrated probabilities for a classifier's test predictions, from
its validation logits and labels.

The instructor's answer is temperature scaling (Guo et al. 2017): one ``T`` fitted on the
validation set by :func:`.calibration.fit_temperature` (minimum negative log-likelihood), then
``log_softmax(test_logits / T)``. Graded against the true class distributions by the
challenge's rails (``tests/test_challenges.py``); ``fit_temperature`` itself is verified in
``tests/test_reference_ch10.py``.
"""

from __future__ import annotations

import torch

from .calibration import fit_temperature


def calibrate(val_logits: torch.Tensor, val_labels: torch.Tensor,
              test_logits: torch.Tensor) -> torch.Tensor:
    """Log-probabilities ``(N_test, C)`` float64 of each test example's class."""
    T = fit_temperature(val_logits, val_labels)
    return torch.log_softmax(test_logits.double() / T, dim=-1)

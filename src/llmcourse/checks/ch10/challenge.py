"""challenge.ipynb: calibrate (校准) a classifier's test probabilities from its validation
set (an outcome-graded challenge).

The classifier is simulated, so every example's true class distribution ``p*`` is known: its
logits are ``z = T0 * z* + b`` where ``p* = softmax(z*)`` (overconfident by ``T0`` and biased
towards some classes by ``b``, the same for every seed), and its labels are drawn from ``p*``.
The figure is the cross-entropy of the learner's probabilities against ``p*`` (the expected
negative log-likelihood of a label, a proper scoring rule), whose floor is the entropy of
``p*``: no sampling noise, and a constant prediction (perfectly calibrated in ECE) is far
from it."""

from __future__ import annotations

import math

import torch

from ...reference import recalibration as ref
from .. import register
from ..challenge import Attempt, Band, Challenge
from ..core import Case
from ..kit import F64, generator

CLASSES, N_VAL, N_TEST = 10, 2000, 5000
SHARPNESS, T0 = 2.5, 2.0  # z* ~ N(0, 2.5^2); the classifier's logits are T0 z* + BIAS
BIAS = torch.linspace(-1.2, 1.2, CLASSES, dtype=F64)


def _classifier(g: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The simulated classifier's logits (n, C) and labels (n,) drawn from the truth."""
    z_true = SHARPNESS * torch.randn(n, CLASSES, generator=g, dtype=F64)
    labels = torch.multinomial(torch.softmax(z_true, -1), 1, generator=g)[:, 0]
    return T0 * z_true + BIAS, labels


def _uniform(val_logits, val_labels, test_logits):
    return torch.full((test_logits.shape[0], CLASSES), -math.log(CLASSES), dtype=F64)


def _prior(val_logits, val_labels, test_logits):
    counts = torch.bincount(val_labels, minlength=val_logits.shape[1]).double() + 1
    return (counts / counts.sum()).log().expand(test_logits.shape[0], -1).clone()


def _raw(val_logits, val_labels, test_logits):
    return torch.log_softmax(test_logits.double(), dim=-1)


@register
class Calibration(Challenge):
    """Calibrated test log-probabilities, measured against the true class distributions."""
    id = "10.calibrate"
    entry = "calibrate"
    metric = "cross_entropy_bits"
    unit = "bits/example"
    relative_to_floor = True
    bands = (Band(0.1, 1.0, "A"), Band(0.2, 0.75, "B"), Band(0.35, 0.5, "C"), Band(0.6, 0.25, "D"))
    budget_s = 30
    attempts = (Attempt("uniform over the classes", _uniform, 0.0),
                Attempt("the class prior of the validation labels", _prior, 0.0),
                Attempt("the raw softmax of the logits (uncalibrated)", _raw, 0.25))

    def cases(self, seed: int, hidden: bool) -> list[Case]:
        g = generator(seed)
        val_logits, val_labels = _classifier(g, N_VAL)
        test_logits, _ = _classifier(g, N_TEST)  # the test labels are not needed: p* is known
        return [Case("held-out test set", (val_logits, val_labels, test_logits))]

    def truth(self, case: Case):
        return torch.softmax((case.args[2] - BIAS) / T0, dim=-1)

    def reference(self, val_logits, val_labels, test_logits):
        return ref.calibrate(val_logits, val_labels, test_logits)

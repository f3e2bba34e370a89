"""challenge.ipynb: predict the loss of larger models from a small sweep (an outcome-graded
challenge).

The sweep is synthetic (:mod:`llmcourse.reference.scaling_challenge`): a law
L = E + A / N^alpha + B / D^beta with seeded constants, evaluated on 25 small runs with
seeded 0.5% noise. The learner gets the noisy table and the (N, D) of four large targets;
the truth is the law's noise-free losses at the targets, which never enter the learner's
kernel in grading.
"""

from __future__ import annotations

import torch

from ...reference import scaling_challenge as ref
from .. import register
from ..challenge import Attempt, Band, Challenge
from ..core import Case


def _smallest(runs, targets):
    return torch.full((targets.shape[0],), float(runs[0, 2]), dtype=torch.float64)


def _lowest(runs, targets):
    return torch.full((targets.shape[0],), float(runs[:, 2].min()), dtype=torch.float64)


def _kaplan(runs, targets):
    return ref.predict(runs, targets, irreducible=False)


@register
class PredictLoss(Challenge):
    """Predicted losses of large models, measured against the law's noise-free values."""
    id = "07.predict_loss"
    entry = "predict_loss"
    metric = "abs_log_error"
    unit = "mean |log(predicted / true)|"
    bands = (Band(0.03, 1.0, "A"), Band(0.06, 0.75, "B"), Band(0.15, 0.5, "C"), Band(0.6, 0.25, "D"))
    budget_s = 60
    attempts = (Attempt("the smallest run's loss", _smallest, 0.0),
                Attempt("the sweep's lowest loss", _lowest, 0.25),
                Attempt("a pure power law without E (Kaplan form)", _kaplan, 0.25))

    def cases(self, seed: int, hidden: bool) -> list[Case]:
        case = Case("a sweep of small runs", (ref.sweep(seed), ref.targets()))
        return [self.remember(case, seed)]  # the law's seed never reaches the kernel

    def truth(self, case: Case):
        seed = self.recall(case)  # the case's own law, noise-free
        t = case.args[1]
        return ref.law_loss(seed, t[:, 0], t[:, 1])

    def reference(self, runs, targets):
        return ref.predict(runs, targets)

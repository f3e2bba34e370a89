"""distill_gpt.ipynb: the training objective written with PyTorch's own
``F.kl_div``/``F.cross_entropy`` (whose argument order and reductions are the classic traps);
the notebook then trains a student GPT with it, so the course's trainer and GPT may be
imported there.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from ...reference import distillation as distillation_ref
from .. import register
from ..core import Case, Exercise, Mistake
from ..kit import F32, F64, generator
from .losses import MISSING_T2, _ce, _pair, _tol


# ---------------------------------------------------------------------------------------
# 06.kd_objective (distill_gpt.ipynb): the same loss with PyTorch's built-ins

def _obj(s, t, y, T, alpha, *, kl):
    V = s.shape[-1]
    ce = F.cross_entropy(s.reshape(-1, V), y.reshape(-1))
    return alpha * kl + (1 - alpha) * ce


def _kl_div(s, t, T, reduction="batchmean", swap=False, probs_in=False):
    V = s.shape[-1]
    log_q = F.log_softmax(s.reshape(-1, V) / T, dim=-1)
    p = F.softmax(t.reshape(-1, V) / T, dim=-1)
    if swap:
        return F.kl_div(F.log_softmax(t.reshape(-1, V) / T, dim=-1), log_q.exp(), reduction=reduction)
    return F.kl_div(log_q.exp() if probs_in else log_q, p, reduction=reduction)


def _obj_swapped(s, t, y, T=2.0, alpha=0.5):
    return _obj(s, t, y, T, alpha, kl=T ** 2 * _kl_div(s, t, T, swap=True))


def _obj_probs_input(s, t, y, T=2.0, alpha=0.5):
    return _obj(s, t, y, T, alpha, kl=T ** 2 * _kl_div(s, t, T, probs_in=True))


def _obj_batchmean_3d(s, t, y, T=2.0, alpha=0.5):
    kl = F.kl_div(F.log_softmax(s / T, -1), F.softmax(t / T, -1), reduction="batchmean")
    return _obj(s, t, y, T, alpha, kl=T ** 2 * kl)


def _obj_mean(s, t, y, T=2.0, alpha=0.5):
    with warnings.catch_warnings():  # PyTorch warns that 'mean' is not the KL's definition
        warnings.simplefilter("ignore")
        return _obj(s, t, y, T, alpha, kl=T ** 2 * _kl_div(s, t, T, reduction="mean"))


def _obj_no_T2(s, t, y, T=2.0, alpha=0.5):
    return _obj(s, t, y, T, alpha, kl=_kl_div(s, t, T))


def _obj_hard_at_T(s, t, y, T=2.0, alpha=0.5):
    return alpha * T ** 2 * _kl_div(s, t, T) + (1 - alpha) * _ce(s, y, T)


def _obj_alpha_swapped(s, t, y, T=2.0, alpha=0.5):
    return (1 - alpha) * T ** 2 * _kl_div(s, t, T) + alpha * _ce(s, y)


@register
class KDObjective(Exercise):
    """The distillation objective with F.kl_div and F.cross_entropy."""
    id = "06.kd_objective"
    entry = "kd_objective"
    # The notebook trains with the course's trainer and GPT; the distillation reference itself
    # stays off limits.
    allow_reference = ("training", "gpt")
    reference_why = ("write the objective yourself instead of calling the course's reference "
                     "(only its training and gpt modules are allowed here)")
    mistakes = (
        Mistake("F.kl_div arguments swapped", "F.kl_div(input, target) computes KL(target || "
                "input's distribution): pass the STUDENT's log-probabilities as input and the "
                "TEACHER's probabilities as target. Swapped, it is KL(student || teacher).",
                _obj_swapped),
        Mistake("probabilities passed as F.kl_div's input", "F.kl_div expects LOG-probabilities "
                "as its first argument (F.log_softmax(student / T)); with probabilities it "
                "computes a meaningless sum.", _obj_probs_input),
        Mistake("reduction='batchmean' on 3-D logits", "'batchmean' divides by the size of the "
                "FIRST axis only, here the batch; flatten to (batch * seq, vocab) first so every "
                "position counts once.", _obj_batchmean_3d),
        Mistake("reduction='mean'", "'mean' divides by batch * seq * vocab; the KL is summed over "
                "the vocabulary: flatten to (positions, vocab) and use 'batchmean'.", _obj_mean),
        Mistake("missing T^2", MISSING_T2.explain, _obj_no_T2),
        Mistake("hard loss at temperature T", "F.cross_entropy takes the student's plain logits "
                "(T = 1).", _obj_hard_at_T),
        Mistake("alpha on the wrong term", "alpha weights the soft term: "
                "alpha * T^2 * KL + (1 - alpha) * CE.", _obj_alpha_swapped),
    )

    def reference(self, student_logits, teacher_logits, targets, T=2.0, alpha=0.5):
        return distillation_ref.distillation_loss(student_logits, teacher_logits, targets, T, alpha)

    def cases(self, seed, hidden):
        g = generator(seed)

        def case(label, B, L, V, T, alpha, dtype=F32):
            s, t = _pair(g, B, L, V, dtype=dtype)
            y = torch.randint(0, V, (B, L), generator=g)
            return Case(label, (s, t, y), {"T": T, "alpha": alpha}, **_tol(T, dtype))

        cases = [
            case("(B, L, V) = (2, 4, 16), T = 2, alpha = 0.5", 2, 4, 16, T=2.0, alpha=0.5),
            case("(3, 5, 10), T = 4, alpha = 0.9", 3, 5, 10, T=4.0, alpha=0.9),
            case("(1, 8, 32), T = 1, alpha = 0.3", 1, 8, 32, T=1.0, alpha=0.3),
            case("alpha = 1, T = 3, (2, 3, 12)", 2, 3, 12, T=3.0, alpha=1.0),
        ]
        if hidden:
            cases += [
                case("float64 (4, 2, 20), T = 8, alpha = 0.7", 4, 2, 20, T=8.0, alpha=0.7, dtype=F64),
                case("(2, 16, 256) byte vocabulary, T = 2, alpha = 0.5", 2, 16, 256, T=2.0, alpha=0.5),
                case("alpha = 0, (3, 2, 5)", 3, 2, 5, T=5.0, alpha=0.0),
                case("(5, 1, 9), T = 1.5, alpha = 0.25", 5, 1, 9, T=1.5, alpha=0.25),
            ]
        return cases

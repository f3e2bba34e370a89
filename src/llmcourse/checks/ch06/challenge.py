"""challenge.ipynb: distil a hidden teacher into a student of your design, as close to the
teacher's distributions on held-out inputs as you can get (an outcome-graded challenge).

The teacher is a small random network made here, in the trusted case maker, with weights
seeded by a hash of the case's transfer inputs (so the truth is a function of the case alone,
as the grader needs); the learner gets only its probabilities on the transfer set. The truth
is the teacher's distributions on the held-out inputs, which never enter the learner's
kernel in grading. (Neither this module nor the reference is in the grader's learner build.)
"""

from __future__ import annotations

import hashlib
import math

import torch

from ...reference import distill_student as ref
from .. import register
from ..challenge import Attempt, Band, Challenge
from ..core import Case

DIM, CLASSES, HIDDEN = 8, 10, 32
TRANSFER, HELD_OUT = 2048, 2048
STEPS = 300  # the reference's steps; the hard-label attempt gets the same


def teacher(transfer_x: torch.Tensor):
    """The teacher of a transfer set: x (n, 8) -> softmax(tanh(x W1) W2) (n, 10), float64, its
    weights seeded by a hash of ``transfer_x``."""
    seed = int(hashlib.sha256(transfer_x.numpy().tobytes()).hexdigest()[:12], 16)
    g = torch.Generator().manual_seed(seed)
    w1 = torch.randn(DIM, HIDDEN, generator=g, dtype=torch.float64) * (1.5 / math.sqrt(DIM))
    w2 = torch.randn(HIDDEN, CLASSES, generator=g, dtype=torch.float64) * (3.0 / math.sqrt(HIDDEN))
    return lambda x: torch.softmax(torch.tanh(x.double() @ w1) @ w2, dim=-1)


def _inputs(seed: int, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, DIM, generator=g, dtype=torch.float32)


def _uniform(transfer_x, teacher_probs, test_x):
    c = teacher_probs.shape[1]
    return torch.full((test_x.shape[0], c), -math.log(c), dtype=torch.float64)


def _hard(transfer_x, teacher_probs, test_x):
    return ref.distill(transfer_x, teacher_probs, test_x, steps=STEPS, hard=True)


def _hard_short(transfer_x, teacher_probs, test_x):
    return ref.distill(transfer_x, teacher_probs, test_x, steps=25, hard=True)


def _soft_short(transfer_x, teacher_probs, test_x):
    return ref.distill(transfer_x, teacher_probs, test_x, steps=25)


@register
class Distillation(Challenge):
    """A student distilled from a hidden teacher's soft predictions, measured against the
    teacher's distributions on held-out inputs."""
    id = "06.student"
    entry = "distill"
    metric = "cross_entropy_bits"
    unit = "bits"
    relative_to_floor = True
    bands = (Band(0.15, 1.0, "A"), Band(0.3, 0.75, "B"), Band(0.6, 0.5, "C"), Band(1.0, 0.25, "D"))
    budget_s = 90
    attempts = (Attempt("uniform over the classes", _uniform, 0.0),
                Attempt(f"hard argmax labels, {STEPS} steps (the reference's)", _hard, 0.0),
                Attempt("hard argmax labels, 25 steps", _hard_short, 0.5),
                Attempt("soft targets, 25 steps", _soft_short, 0.75))

    def cases(self, seed: int, hidden: bool) -> list[Case]:
        x = _inputs(1000 + seed, TRANSFER)
        return [Case("held-out inputs", (x, teacher(x)(x), _inputs(5000 + seed, HELD_OUT)))]

    def truth(self, case: Case):
        x, _, test_x = case.args
        return teacher(x)(test_x)

    def reference(self, transfer_x, teacher_probs, test_x):
        return ref.distill(transfer_x, teacher_probs, test_x)

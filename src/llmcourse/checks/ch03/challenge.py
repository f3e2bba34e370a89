"""challenge.ipynb: the most language model per second - train within a third of chapter
04's time budget, then predict the next byte at word starts (an outcome-graded challenge)."""

from __future__ import annotations

from ...reference import pretrain_lm as ref
from .. import register
from ..challenge import Attempt, Band
from ..lm_truth import WordStartChallenge, unigram_baseline

# The instructor's efficient configuration: chapter 04's model with a layer half as wide, a
# higher learning rate and 300 steps instead of 800.
EFFICIENT = dict(hidden=128, steps=300, lr=6e-3)


def _untrained(train_text, contexts):
    return ref.fit_and_predict(train_text, contexts, **{**EFFICIENT, "steps": 0})


def _short(train_text, contexts):
    return ref.fit_and_predict(train_text, contexts, **{**EFFICIENT, "steps": 40, "warmup": 10})


@register
class EfficientInBudget(WordStartChallenge):
    """Next byte at word starts after training in 40 s, against the exact truth."""
    id = "03.efficient_lm"
    entry = "train_and_predict"
    bands = (Band(0.55, 1.0, "A"), Band(0.8, 0.75, "B"), Band(1.4, 0.5, "C"), Band(2.5, 0.25, "D"))
    budget_s = 40
    attempts = (Attempt("untrained model", _untrained, 0.0),
                Attempt("the reference model after 40 steps", _short, 0.5),
                Attempt("character unigram", unigram_baseline, 0.0))

    def reference(self, train_text, contexts):
        return ref.fit_and_predict(train_text, contexts, **EFFICIENT)

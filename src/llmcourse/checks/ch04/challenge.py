"""challenge.ipynb: pre-train a neural language model within a time budget, then predict the
next byte at word starts of held-out text (an outcome-graded challenge)."""

from __future__ import annotations

from ...reference import pretrain_lm as ref
from .. import register
from ..challenge import Attempt, Band
from ..lm_truth import WordStartChallenge, unigram_baseline



def _untrained(train_text, contexts):
    return ref.fit_and_predict(train_text, contexts, steps=0)


def _short(train_text, contexts):
    return ref.fit_and_predict(train_text, contexts, steps=60, warmup=10)


@register
class PretrainInBudget(WordStartChallenge):
    """Next byte at word starts after pre-training in 120 s, against the exact truth."""
    id = "04.pretrain_budget"
    entry = "pretrain_and_predict"
    bands = (Band(0.45, 1.0, "A"), Band(0.7, 0.75, "B"), Band(1.2, 0.5, "C"), Band(2.0, 0.25, "D"))
    budget_s = 120
    attempts = (Attempt("untrained model", _untrained, 0.0),
                Attempt("the reference model after 60 steps", _short, 0.5),
                Attempt("character unigram", unigram_baseline, 0.0))

    def reference(self, train_text, contexts):
        return ref.fit_and_predict(train_text, contexts)

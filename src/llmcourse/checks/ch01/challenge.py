"""challenge.ipynb: the next character at the start of each word, as close to the truth as
you can get (an outcome-graded challenge)."""

from __future__ import annotations

import math

import torch

from ...reference import char_model as ref
from .. import register
from ..challenge import Attempt, Band
from ..lm_truth import WordStartChallenge
from ..lm_truth import unigram_baseline as _unigram

CONTEXTS = {False: 600, True: 1500}  # public, hidden


def _uniform(train_text, contexts):
    return torch.full((len(contexts), 256), -math.log(256), dtype=torch.float64)


def _bigram(train_text, contexts):
    return ref.fit_and_predict(train_text, contexts, order=1)


def _trigram(train_text, contexts):
    return ref.fit_and_predict(train_text, contexts, order=2)


@register
class NextCharacter(WordStartChallenge):
    """The next byte at word starts of held-out text, measured against the exact truth."""
    id = "01.next_char"
    entry = "fit_and_predict"
    bands = (Band(0.55, 1.0, "A"), Band(0.8, 0.75, "B"), Band(1.4, 0.5, "C"), Band(3.0, 0.25, "D"))
    budget_s = 60
    contexts = {False: 600, True: 1500}  # public, hidden
    attempts = (Attempt("uniform over 256 bytes", _uniform, 0.0),
                Attempt("character unigram", _unigram, 0.0),
                Attempt("character bigram", _bigram, 0.0),
                Attempt("character trigram", _trigram, 0.25))

    def reference(self, train_text, contexts):
        return ref.fit_and_predict(train_text, contexts)

"""challenge.ipynb: a domain no expert was trained on - domain experts and a router of your
own design against one dense model trained on everything (an outcome-graded challenge).

The learner gets the text of the three training domains (labelled, as DEMix trains its
experts), a small sample of the held-out "mixed" domain and word-start contexts of that
domain; they return next-byte log-probabilities. The figure is a **paired** difference, in
the grader's own process: the learner's cross-entropy against the exact next-byte
distributions of the mixed domain, minus that of the dense baseline (chapter 01's
interpolated character n-gram on all the text pooled) on the same contexts. The contexts'
own sampling noise (about +-0.03 bits from one seed to the next) moves both figures together
and cancels; the gain of experts over the dense model (about 0.02 bits) does not.
"""

from __future__ import annotations

import math

import torch

from ...reference import char_model
from ...reference import domain_mixture as ref
from .. import register
from ..challenge import Attempt, Band, Challenge
from ..core import Case, Rule
from ..lm_truth import next_byte_truth, word_start_contexts

TRAIN_CHARS, ADAPT_CHARS, CONTEXTS = 100_000, 12_000, 1500


def _uniform_experts(domain_texts, adapt_text, contexts):
    experts = torch.stack([char_model.fit_and_predict(domain_texts[d], contexts)
                           for d in sorted(domain_texts)])
    return torch.logsumexp(experts, 0) - math.log(len(domain_texts))


def _adapt_only(domain_texts, adapt_text, contexts):
    return char_model.fit_and_predict(adapt_text, contexts)


@register
class UnseenDomain(Challenge):
    """Next byte at word starts of an unseen domain, against a dense model on the same rows."""
    id = "08.unseen_domain"
    entry = "adapt_and_predict"
    metric = "bits_vs_baseline"
    unit = "bits/char against the dense model"
    bands = (Band(-0.014, 1.0, "A"), Band(-0.010, 0.75, "B"), Band(-0.007, 0.5, "C"),
             Band(-0.004, 0.25, "D"))
    budget_s = 60
    forbid = (Rule("llmcourse.data", "learn from the texts you are given only: the course's "
                   "data module knows every domain's true probabilities"),)
    attempts = (Attempt("the dense baseline itself", ref.dense_baseline, 0.0),
                Attempt("the three domain experts, equally weighted", _uniform_experts, 0.0),
                Attempt("a model of the adaptation sample only", _adapt_only, 0.0))

    def cases(self, seed: int, hidden: bool) -> list[Case]:
        from ...data import domains

        texts = {d: domains.corpus(d, TRAIN_CHARS, seed=1000 + seed) for d in domains.TRAIN_DOMAINS}
        adapt = domains.corpus(domains.HELD_OUT, ADAPT_CHARS, seed=2000 + seed)
        contexts = word_start_contexts(5000 + seed, CONTEXTS, domain=domains.HELD_OUT)
        return [Case("held-out domain 'mixed', word starts", (texts, adapt, contexts))]

    def truth(self, case: Case):
        from ...data import domains

        texts, adapt, contexts = case.args
        return next_byte_truth(contexts, domains.HELD_OUT), ref.dense_baseline(texts, adapt, contexts)

    def reference(self, domain_texts, adapt_text, contexts):
        return ref.train_and_predict(domain_texts, adapt_text, contexts)

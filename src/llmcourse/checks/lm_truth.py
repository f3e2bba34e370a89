"""The next byte at word starts of the synthetic language: held-out contexts and their exact
truth, shared by the language-model challenges (chapters 01, 03, 04, 08) so that no chapter's
checks import another's.

* :func:`word_start_contexts`: one context per document, the document up to a random word
  start (right after a space), where the next byte is the first letter of a word;
* :func:`next_byte_truth`: the exact next-byte distributions of those contexts, (N, 256)
  float64, from the grammar (``llmcourse.data.next_token``).
"""

from __future__ import annotations

import random

import torch

VOCAB = 256


def word_start_contexts(seed: int, n: int, domain: str | None = None) -> list[str]:
    """One context per document of ``documents(n, seed=seed)`` (of chapter 08's ``domain``
    when given): the document up to a random word start (after a space)."""
    from ..data import documents
    from ..data.next_token import word_boundaries

    if domain is not None:
        from ..data import domains

        docs = domains.documents(domain, n, seed=seed)
    else:
        docs = documents(n, seed=seed)
    rng, out = random.Random(seed), []
    for doc in docs:
        starts = word_boundaries(doc)
        if starts:
            out.append(doc[:rng.choice(starts)])
    return out


def next_byte_truth(contexts: list[str], domain: str | None = None) -> torch.Tensor:
    """p[n, b] = the true probability that byte ``b`` follows ``contexts[n]`` (in chapter
    08's ``domain`` when given)."""
    from ..data.next_token import next_byte_distribution

    kw = {}
    if domain is not None:
        from ..data import domains

        kw["language"] = domains.LANGUAGES[domain]
    p = torch.zeros(len(contexts), VOCAB, dtype=torch.float64)
    for r, ctx in enumerate(contexts):
        for ch, q in next_byte_distribution(ctx, **kw).items():
            p[r, min(ord(ch), VOCAB - 1)] += q
    return p


TRAIN_CHARS = 300_000


def word_start_case(seed: int, n_contexts: int):
    """The inputs of a next-byte challenge: (training text, held-out word-start contexts)."""
    from ..data import corpus
    from .core import Case

    train = corpus(TRAIN_CHARS, seed=1000 + seed)
    return Case("held-out word starts", (train, word_start_contexts(5000 + seed, n_contexts)))


def unigram_baseline(train_text: str, contexts: list[str]) -> torch.Tensor:
    """A weak attempt: the byte frequencies of the training text (add-one), whatever the context."""
    from collections import Counter

    counts = torch.ones(VOCAB, dtype=torch.float64)
    for ch, c in Counter(train_text).items():
        counts[min(ord(ch), VOCAB - 1)] += c
    return torch.log(counts / counts.sum()).expand(len(contexts), VOCAB).clone()


def _word_start_challenge():
    from .challenge import Challenge
    from .core import Rule

    class WordStartChallenge(Challenge):
        """Base of the language-model challenges: training text in, the next byte at held-out
        word starts out, measured in bits above the exact entropy floor. Subclasses set the id,
        entry, bands, budget, attempts, ``contexts`` {hidden: n} and ``reference``."""

        metric = "cross_entropy_bits"
        unit = "bits/char"
        relative_to_floor = True
        contexts = {False: 1500, True: 1500}  # {hidden: contexts}: public and hidden the same size by default
        forbid = (Rule("llmcourse.data", "learn from `train_text` only: the course's data module "
                       "knows the language's true probabilities"),)

        def cases(self, seed: int, hidden: bool):
            return [word_start_case(seed, self.contexts[hidden])]

        def truth(self, case):
            return next_byte_truth(case.args[1])

    return WordStartChallenge


WordStartChallenge = _word_start_challenge()

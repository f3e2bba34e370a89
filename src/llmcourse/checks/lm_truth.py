"""The next byte at word starts of the synthetic language: held-out contexts and their exact
truth, shared by the language-model challenges (chapters 01, 03, 04) so that no chapter's
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


def word_start_contexts(seed: int, n: int) -> list[str]:
    """One context per document of ``documents(n, seed=seed)``: the document up to a random
    word start (after a space)."""
    from ..data import documents
    from ..data.next_token import word_boundaries

    rng, out = random.Random(seed), []
    for doc in documents(n, seed=seed):
        starts = word_boundaries(doc)
        if starts:
            out.append(doc[:rng.choice(starts)])
    return out


def next_byte_truth(contexts: list[str]) -> torch.Tensor:
    """p[n, b] = the true probability that byte ``b`` follows ``contexts[n]``."""
    from ..data.next_token import next_byte_distribution

    p = torch.zeros(len(contexts), VOCAB, dtype=torch.float64)
    for r, ctx in enumerate(contexts):
        for ch, q in next_byte_distribution(ctx).items():
            p[r, ord(ch)] += q
    return p

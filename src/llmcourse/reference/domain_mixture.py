"""Chapter 08's challenge, the instructor's solution: domain experts and a learned router for
a domain none of them was trained on.

The learner gets the text of three training domains (labelled, as in DEMix), a small sample
of the unseen domain, and word-start contexts of that domain to predict. The reference:

* one **expert** per training domain, plus one on everything pooled: chapter 01's
  interpolated character n-gram (:func:`~llmcourse.reference.char_model.fit_and_predict`);
* a **router** whose weights depend on the previous ``words`` words (backing off to fewer):
  on the adaptation sample, the weights ``w_key`` over experts maximise the likelihood of the
  next byte at every word start that follows that history (EM on a mixture with fixed
  components, shrunk towards the next-shorter history's weights by ``prior_strength``
  pseudo-counts), the global weights for a history never seen;
* the prediction ``log sum_k w_k p_k(next | context)``.

:func:`dense_baseline` is what the figure is measured against: the same n-gram, trained on
all the text pooled (the three domains and the adaptation sample), one model for all.
"""

from __future__ import annotations

import numpy as np
import torch

from . import char_model


def _previous_words(context: str, n: int) -> str:
    return " ".join(context.rstrip(" ").split(" ")[-n:])


def _word_starts(text: str) -> tuple[list[str], list[str]]:
    """(context, next byte) at every word start of every document of ``text``."""
    contexts, nxt = [], []
    for doc in text.split("\n"):
        doc += "\n"
        for i in range(1, len(doc)):
            if doc[i - 1] == " ":
                contexts.append(doc[:i])
                nxt.append(doc[i])
    return contexts, nxt


def _em(lik: np.ndarray, prior: np.ndarray, strength: float, steps: int = 100) -> np.ndarray:
    """Mixture weights over fixed components: lik (M, K) likelihoods of M observations."""
    w = prior.copy()
    for _ in range(steps):
        r = lik * w
        r /= r.sum(axis=1, keepdims=True)
        w = (r.sum(axis=0) + strength * prior) / (len(lik) + strength)
    return w


def _route(tables: list[dict[str, np.ndarray]], context: str, glob: np.ndarray) -> np.ndarray:
    """The weights of the longest previous-word history the tables know."""
    for n in range(len(tables), 0, -1):
        w = tables[n - 1].get(_previous_words(context, n))
        if w is not None:
            return w
    return glob


def dense_baseline(domain_texts: dict[str, str], adapt_text: str, contexts: list[str]) -> torch.Tensor:
    """One n-gram on all the text pooled: (len(contexts), 256) log-probabilities."""
    pooled = "".join(domain_texts[d] for d in sorted(domain_texts)) + adapt_text
    return char_model.fit_and_predict(pooled, contexts)


def train_and_predict(domain_texts: dict[str, str], adapt_text: str, contexts: list[str],
                      prior_strength: float = 2.0, words: int = 2) -> torch.Tensor:
    sources = [domain_texts[d] for d in sorted(domain_texts)]
    sources.append("".join(sources))
    a_ctx, a_next = _word_starts(adapt_text)
    rows = np.arange(len(a_ctx))
    cols = [min(ord(c), 255) for c in a_next]
    lik = np.stack([char_model.fit_and_predict(s, a_ctx).numpy()[rows, cols] for s in sources], 1)
    lik = np.exp(lik)
    k = len(sources)
    glob = _em(lik, np.full(k, 1.0 / k), 0.0)
    # One table per history length, each shrunk towards the one below it (backing off).
    tables: list[dict[str, np.ndarray]] = []
    for n in range(1, words + 1):
        by_key: dict[str, list[int]] = {}
        for i, c in enumerate(a_ctx):
            by_key.setdefault(_previous_words(c, n), []).append(i)
        tables.append({key: _em(lik[idx], _route(tables, a_ctx[idx[0]], glob), prior_strength)
                       for key, idx in by_key.items()})
    w = np.stack([_route(tables, c, glob) for c in contexts])  # (N, K)
    experts = np.stack([char_model.fit_and_predict(s, contexts).numpy() for s in sources])  # (K, N, 256)
    top = experts.max(axis=0)
    mixed = np.log(np.einsum("nk,knv->nv", w, np.exp(experts - top))) + top
    return torch.from_numpy(mixed)

"""A multi-domain corpus with no domain header, and the EXACT domain posterior of a prefix.

Chapter 08 trains domain experts (DEMix) and sparse mixtures of experts on it. Every domain is a
:class:`~llmcourse.data.synthetic.Language` that writes only stories, with the same grammar and
the same vocabulary but different word frequencies and event frequencies: a "forest" domain
prefers foxes, bears, rivers and snowy days; a "farm" domain pigs, ducks, farms and cakes; a
"town" domain cats, dogs, parks and kites. Every document starts with "Once upon a time, there
was a", so nothing announces the domain: the evidence builds up word by word. The held-out
domain "mixed" takes its animals from the forest, its places from the farm and its objects
from the town: a test no single training expert was trained for.

Because each domain's generating distribution is known, so are

* the probability of any **prefix** of a document under each domain (:func:`prefix_log_prob`:
  the grammar is LL(1), so a token prefix fixes every decision it has finished; the decisions
  it leaves open sum to one),
* the **exact domain posterior** at every word boundary (:func:`true_log_posterior`),
  ``p(d | x_<t) = p(x_<t | d) p(d) / sum_d' p(x_<t | d') p(d')``, and
* each domain's **entropy floor** (:func:`domain_floor`), the lowest loss any model can reach.

A word boundary is a space. The prefix that ends with it, ``doc[:e]`` (the space included), is
the event "the first tokens are t_1 .. t_k, and another word follows" (a space is never written
before ``. , :`` or the final newline), so its probability is
``P(t_1..t_k) - sum_a P(t_1..t_k a)`` over those four attached tokens ``a``. That is the same
event a character-level model scores with ``sum_{i<e} log p(doc[i] | doc[:i])``.
"""

from __future__ import annotations

import math
import random
from dataclasses import replace
from functools import lru_cache

from . import synthetic as S

END = S.END
_ATTACHED = (".", ",", ":", END)

_BASE = S.Language(domain_weights=(1.0, 0.0, 0.0))
# Each domain reorders the word lists (Zipf weights 1, 1/2, 1/3, ... follow the order).
LANGUAGES: dict[str, S.Language] = {
    "forest": replace(
        _BASE,
        animals=("fox", "bear", "rabbit", "frog", "bird", "mouse", "duck", "cat", "dog", "pig"),
        places=("forest", "river", "hill", "garden", "beach", "park", "farm", "town"),
        objects=("stick", "shell", "hat", "box", "book", "kite", "ball", "drum", "cake", "toy"),
        weathers=("snowy", "cold", "windy", "rainy", "warm", "sunny"),
        feelings=("scared", "calm", "tired", "proud", "happy", "sad", "silly"),
        event_weights=(0.15, 0.45, 0.25, 0.15)),
    "farm": replace(
        _BASE,
        animals=("pig", "duck", "mouse", "dog", "cat", "rabbit", "bird", "frog", "bear", "fox"),
        places=("farm", "garden", "hill", "river", "town", "park", "forest", "beach"),
        objects=("cake", "box", "hat", "drum", "stick", "ball", "book", "toy", "shell", "kite"),
        weathers=("rainy", "warm", "sunny", "windy", "cold", "snowy"),
        feelings=("tired", "proud", "happy", "calm", "sad", "scared", "silly"),
        event_weights=(0.45, 0.15, 0.2, 0.2)),
    "town": replace(
        _BASE,
        animals=("cat", "dog", "bird", "mouse", "rabbit", "duck", "pig", "frog", "fox", "bear"),
        places=("town", "park", "beach", "garden", "farm", "river", "hill", "forest"),
        objects=("ball", "kite", "toy", "book", "drum", "hat", "box", "cake", "shell", "stick"),
        weathers=("sunny", "warm", "windy", "rainy", "cold", "snowy"),
        feelings=("happy", "silly", "proud", "sad", "calm", "tired", "scared"),
        event_weights=(0.2, 0.2, 0.45, 0.15)),
}
LANGUAGES["mixed"] = replace(
    _BASE, animals=LANGUAGES["forest"].animals, places=LANGUAGES["farm"].places,
    objects=LANGUAGES["town"].objects, weathers=LANGUAGES["forest"].weathers,
    feelings=LANGUAGES["town"].feelings, event_weights=(0.25, 0.25, 0.25, 0.25))
TRAIN_DOMAINS = ("forest", "farm", "town")
HELD_OUT = "mixed"


def documents(domain: str, n: int, seed: int = 0) -> list[str]:
    """``n`` documents of one domain (seed 0 trains, 1 validates, 2 tests, as in synthetic)."""
    return S.documents(n, seed=_seed(domain, seed), language=LANGUAGES[domain])


def corpus(domain: str, n_chars: int, seed: int = 0) -> str:
    """Whole documents of one domain until at least ``n_chars`` characters."""
    return S.corpus(n_chars, seed=_seed(domain, seed), language=LANGUAGES[domain])


def mixed_corpus(n_chars: int, seed: int = 0, domains=TRAIN_DOMAINS) -> tuple[str, list[int]]:
    """Documents of ``domains`` in random order, each domain equally likely: the text and every
    document's domain index (what a dense model is trained on: no labels in the text)."""
    rng = random.Random(seed * 7919 + 17)
    per = [iter(documents(d, 1 + 3 * n_chars // (150 * len(domains)), seed)) for d in domains]
    parts, labels, size = [], [], 0
    while size < n_chars:
        i = rng.randrange(len(domains))
        doc = next(per[i], None)
        if doc is None:  # pragma: no cover - only for very short average documents
            per[i] = iter(documents(domains[i], 10_000, seed + 1000 + size))
            continue
        parts.append(doc)
        labels.append(i)
        size += len(doc)
    return "".join(parts), labels


def _seed(domain: str, seed: int) -> int:
    return 1000 * (1 + sorted(LANGUAGES).index(domain)) + seed


# ---------------------------------------------------------------------------------------
# Exact prefix probabilities

class _PrefixEnd(Exception):
    pass


class _PrefixScorer(S._Scorer):
    """Scores the decisions a token prefix has finished; stops where the text ends. A decision
    the prefix leaves open contributes the total probability of its options that agree with
    what the prefix shows of them (all options: probability 1)."""

    def _decide(self, opts, cum, index):
        n = len(self.text)
        if self.pos >= n:
            raise _PrefixEnd
        rest = self.text[self.pos:]
        nxt = rest[0]
        full = [i for i in index.get(nxt, ()) if tuple(self.text[self.pos:self.pos + len(opts[i])]) == opts[i]]
        partial = [i for i in index.get(nxt, ()) if len(opts[i]) > len(rest)
                   and tuple(opts[i][:len(rest)]) == tuple(rest)]
        if partial:  # the prefix ends inside these options
            probs = [cum[i] - (cum[i - 1] if i else 0.0) for i in partial]
            self.logp += math.log(sum(probs)) if sum(probs) > 0 else -math.inf
            raise _PrefixEnd
        if full:
            return full[0]
        if None in index:
            return index[None][0]
        raise S.NotInLanguage(f"unexpected {nxt!r} at token {self.pos}")

    def emit(self, *tokens: str) -> None:
        got = tuple(self.text[self.pos:self.pos + len(tokens)])
        if got != tokens[:len(got)]:
            raise S.NotInLanguage(f"expected {' '.join(tokens)!r} at token {self.pos}")
        self.pos += len(got)
        if len(got) < len(tokens):
            raise _PrefixEnd


def _lang(domain) -> S.Language:
    return LANGUAGES[domain] if isinstance(domain, str) else domain


@lru_cache(maxsize=200_000)
def _token_prefix_log_prob(tokens: tuple[str, ...], domain) -> float:
    c = _PrefixScorer(list(tokens))
    try:
        S._document(c, _lang(domain))
    except _PrefixEnd:
        return c.logp
    except S.NotInLanguage:
        return -math.inf
    return c.logp if c.pos == len(tokens) else -math.inf


def prefix_log_prob(tokens, domain) -> float:
    """Exact log P(the document's first tokens are ``tokens``) under ``domain`` (a domain's
    name or any :class:`~llmcourse.data.synthetic.Language`), in nats."""
    return _token_prefix_log_prob(tuple(tokens), domain)


def word_boundaries(doc: str) -> list[int]:
    """Character offsets e at which the prefix doc[:e] ends in a space (a word boundary),
    plus 0 (nothing seen) and len(doc) (the whole text: a document, or a prefix of one that
    ends at a word boundary)."""
    return sorted({0, len(doc), *(i + 1 for i, ch in enumerate(doc) if ch == " ")})


def _boundary_log_prob(tokens: list[str], k: int, domain) -> float:
    """log P(first tokens are tokens[:k] and another word follows), exactly."""
    lp = prefix_log_prob(tokens[:k], domain)
    if lp == -math.inf:
        return lp
    attached = sum(math.exp(prefix_log_prob(tokens[:k] + [a], domain) - lp) for a in _ATTACHED)
    return lp + math.log1p(-attached) if attached < 1.0 else -math.inf


def text_prefix_log_prob(doc: str, e: int, domain) -> float:
    """Exact log p(doc[:e]) under ``domain`` for a word boundary e (a space at doc[e-1]), or
    e = len(doc) (the whole document), or e = 0."""
    if e == 0:
        return 0.0
    if e == len(doc) and doc.endswith(END):
        return S.document_log_prob(doc, _lang(domain))
    if doc[e - 1] != " ":
        raise ValueError("e must be a word boundary: doc[e - 1] == ' '")
    return _boundary_log_prob(S._TOKEN.findall(doc), len(S._TOKEN.findall(doc[:e])), domain)


def boundary_log_likelihoods(doc: str, domains=TRAIN_DOMAINS) -> tuple[list[int], list[list[float]]]:
    """(offsets e, log p(doc[:e] | d) for every offset and domain), exactly."""
    tokens = S._TOKEN.findall(doc)
    if S.render(tokens) + ("" if doc.endswith(END) else " ") != doc:
        raise ValueError("not a document of the synthetic language, nor a prefix of one that "
                         "ends at a word boundary")
    offsets = word_boundaries(doc)
    out = []
    for e in offsets:
        if e == 0 or (e == len(doc) and doc.endswith(END)):
            out.append([text_prefix_log_prob(doc, e, d) for d in domains])
            continue
        k = len(S._TOKEN.findall(doc[:e]))
        out.append([_boundary_log_prob(tokens, k, d) for d in domains])
    return offsets, out


def eval_set(domain: str, n: int, max_len: int, seed: int = 2) -> list[tuple[str, float]]:
    """``n`` test documents of ``domain``, each cut at its last word boundary within
    ``max_len`` characters (kept whole when it fits), with the exact log-probability of the
    kept text under its own domain: (text, log p(text)). A model's loss on these texts minus
    -log p is its excess over the best possible loss, document by document."""
    out = []
    for doc in documents(domain, n, seed):
        e = len(doc) if len(doc) <= max_len else max(b for b in word_boundaries(doc) if b <= max_len)
        out.append((doc[:e], text_prefix_log_prob(doc, e, domain)))
    return out


def true_log_posterior(doc: str, domains=TRAIN_DOMAINS, prior=None) -> tuple[list[int], list[list[float]]]:
    """(offsets, log p(d | doc[:e])) at every word boundary, for the given prior (uniform by
    default): Bayes' rule in log space on the exact prefix likelihoods."""
    prior = prior or [1.0 / len(domains)] * len(domains)
    offsets, ll = boundary_log_likelihoods(doc, domains)
    post = []
    for row in ll:
        joint = [l + math.log(p) if p > 0 else -math.inf for l, p in zip(row, prior)]
        m = max(joint)
        z = m + math.log(sum(math.exp(j - m) for j in joint))
        post.append([j - z for j in joint])
    return offsets, post


def domain_floor(domain: str, n_docs: int = 2000, seed: int = 2) -> S.EntropyFloor:
    """The entropy rate (nats per character) of one domain: the best loss on its text."""
    return S.entropy_floor(n_docs, seed=_seed(domain, seed), language=LANGUAGES[domain])


def cross_log_prob(doc: str, domain: str) -> float:
    """Exact log p(doc | domain): how well one domain's distribution explains a document."""
    return S.document_log_prob(doc, LANGUAGES[domain])

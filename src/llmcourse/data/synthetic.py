"""A synthetic multi-domain language whose generating distribution is known exactly.

Every document is made by one small program, :func:`_document` (in
:mod:`.synthetic_grammar`), that takes each random decision through ``pick``. Run with a
random-number generator it *samples*; run against a text it *scores* (each ``pick`` reads
which option the text took); run with a list of choice indices it *enumerates* every
document of a small language. Because the options at every decision point are distinct token
sequences (an LL(1)-style grammar), the text fixes the choices uniquely, so the probability
of a document is the product of its choices' probabilities: **exact**, not estimated. The
entropy rate of the language, the best cross-entropy any model can reach on it, follows
(:func:`entropy_floor`).

The grammar. ``|`` separates options, ``[p]`` is a probability, ``W*`` a word from list W
(Zipf weights 1, 1/2, 1/3, ...), ``X?`` an optional part, ``X (X [p])...`` a repetition
that goes on with probability p up to a cap. One document per line, ending in "\\n"::

    document := "Once upon a time, there was a" story                       [0.5]
              | "Math:" math                                                [0.2]
              | "Review:" review                                            [0.3]
    story    := beast "named" NAME* "." event (event [0.6])... (at most 5) "The end."
    beast    := adjective*? [0.4] (a second adjective*? [0.4]) animal*
    event    := opener* (NAME [0.6] | he/she [0.4])
                ( "found a" color*? [0.5] object* "."
                      ("He wanted to" verb* "the" OBJECT ".")? [0.5]         [0.3]
                | "met a" beast "named" OTHER_NAME* "."
                      ("They played in the" place* "." [0.3]
                       | "They became friends." [0.3])?                     [0.3]
                | "went to the" place* "." ("He saw a" beast "there.")? [0.5] [0.2]
                | "felt" feeling* ("because it was a" weather* "day")? [0.5] "." [0.2] )
    math     := problem (problem [0.5])... (at most 4)
    problem  := A op B "=" RESULT "."   A uniform in 0..99, op: "+" [0.4] | "-" [0.3]
                | "*" [0.3], B uniform in 0..99 (+), 0..A (-), 0..9 (*)
    review   := sentence (sentence [0.5])... (at most 3) "Rating:" STARS ("star"|"stars") "."
    sentence := "The" clause ("." [0.5] | ", and the" clause "." [0.25]
                              | ", but the" clause "." [0.25])
    clause   := aspect* "was" "not"? [0.25] intensifier*? [0.3] sentiment*
                (the four sentiment groups below equally likely, Zipf within a group)

Capitalised pieces are not random: NAME and He/he are the hero's, OBJECT is the
object found, RESULT is the true result, STARS = clamp(3 + score, 1, 5), where the score
is compositional: a sentiment word is worth +1 (good, nice, ...), +2 (great, ...), -1 (bad,
...) or -2 (awful, ...); an intensifier adds 1 to its size; "not" turns any clause into
-1 if it was positive, +1 if negative; "and" adds two clauses, and after "but" only the
second clause counts. A model can only predict the rating (and the sums) by learning this
composition: the floor charges nothing for them.

Sampling uses nothing but ``random.Random(seed).random()``, whose sequence Python
guarantees across versions and platforms, plus IEEE arithmetic: the same seed gives the
same bytes on every machine. The text is ASCII, so a character is a byte.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Iterator

# The grammar program and its choosers (re-exported: NotInLanguage is public API)
from .synthetic_grammar import (END, NotInLanguage, _Chooser, _document, _Replay,  # noqa: F401
                                _Sampler, _Scorer, _zipf)

_ATTACH = frozenset({".", ",", ":", END})  # written without a space before them
_TOKEN = re.compile(r"\n|[A-Za-z]+|[0-9]+|[.,:+\-*=]")
DOMAINS = ("story", "math", "review")


@dataclass(frozen=True)
class Language:
    """The vocabulary and probabilities of the language; the default is the course's."""

    domain_weights: tuple[float, float, float] = (0.5, 0.2, 0.3)  # story, math, review
    names: tuple[tuple[str, str], ...] = (("Tom", "he"), ("Lily", "she"), ("Ben", "he"),
                                          ("Mia", "she"), ("Sam", "he"), ("Anna", "she"),
                                          ("Max", "he"), ("Sue", "she"))
    animals: tuple[str, ...] = ("cat", "dog", "bird", "fox", "rabbit", "bear", "duck", "frog",
                                "mouse", "pig")
    adjectives: tuple[str, ...] = ("little", "big", "small", "happy", "sleepy", "brave",
                                   "tiny", "fluffy", "kind", "funny")
    colors: tuple[str, ...] = ("red", "blue", "green", "yellow", "pink", "brown", "purple",
                               "white")
    objects: tuple[str, ...] = ("ball", "kite", "box", "book", "hat", "drum", "cake", "stick",
                                "shell", "toy")
    verbs: tuple[str, ...] = ("keep", "share", "show", "hide")
    places: tuple[str, ...] = ("park", "forest", "river", "garden", "beach", "farm", "town",
                               "hill")
    feelings: tuple[str, ...] = ("happy", "sad", "tired", "proud", "scared", "calm", "silly")
    weathers: tuple[str, ...] = ("sunny", "rainy", "windy", "cold", "warm", "snowy")
    openers: tuple[str, ...] = ("One day ,", "Then", "Later ,", "After that ,", "Suddenly ,")
    event_weights: tuple[float, float, float, float] = (0.3, 0.3, 0.2, 0.2)
    max_adjectives: int = 2
    p_adjective: float = 0.4
    max_events: int = 5
    p_more_events: float = 0.6
    max_problems: int = 4
    p_more_problems: float = 0.5
    max_number: int = 99
    max_factor: int = 9
    aspects: tuple[str, ...] = ("food", "service", "pasta", "soup", "staff", "price",
                                "music", "room", "coffee", "pizza")
    good: tuple[str, ...] = ("good", "nice", "fine", "tasty")  # +1
    great: tuple[str, ...] = ("great", "excellent", "amazing", "delicious")  # +2
    bad: tuple[str, ...] = ("bad", "slow", "bland", "dull")  # -1
    awful: tuple[str, ...] = ("awful", "terrible", "horrible", "disgusting")  # -2
    intensifiers: tuple[str, ...] = ("very", "really", "extremely")
    p_not: float = 0.25
    p_intensifier: float = 0.3
    max_sentences: int = 3
    p_more_sentences: float = 0.5

    @classmethod
    def tiny(cls) -> "Language":
        """A language small enough to enumerate every document (used to test exactness)."""
        return cls(names=(("Tom", "he"), ("Mia", "she")), animals=("cat",), adjectives=("big",),
                   colors=("red",), objects=("ball",), verbs=("keep",), places=("park",),
                   feelings=("sad",), weathers=("cold",), openers=("Then",), max_adjectives=1,
                   max_events=2, max_problems=2, max_number=2, max_factor=1, aspects=("food",),
                   good=("good",), great=(), bad=("bad",), awful=(), intensifiers=(),
                   max_sentences=2)

    @cached_property
    def _sentiment(self) -> tuple[tuple[str, ...], tuple[float, ...], tuple[int, ...]]:
        groups = ((self.good, 1), (self.great, 2), (self.bad, -1), (self.awful, -2))
        words = tuple(w for g, _ in groups for w in g)
        weights = tuple(z / sum(_zipf(len(g))) for g, _ in groups for z in _zipf(len(g)))
        return words, weights, tuple(v for g, v in groups for _ in g)


# ---------------------------------------------------------------------------------------
# Public API.

DEFAULT = Language()


def render(tokens: list[str]) -> str:
    """Tokens -> text: one space between tokens, none before . , : or the final newline."""
    return "".join(t if i == 0 or t in _ATTACH else " " + t for i, t in enumerate(tokens))


def sample_documents(n: int, seed: int = 0, language: Language = DEFAULT) -> list[tuple[str, float]]:
    """``n`` documents and their exact log-probabilities (nats), from one seeded stream."""
    rng, out = random.Random(seed), []
    for _ in range(n):
        c = _Sampler(rng)
        _document(c, language)
        out.append((render(c.tokens), c.logp))
    return out


def documents(n: int, seed: int = 0, language: Language = DEFAULT) -> list[str]:
    """``n`` documents (each one line ending in "\\n"); a prefix of the list for a larger n."""
    return [text for text, _ in sample_documents(n, seed, language)]


def corpus(n_chars: int = 1_000_000, seed: int = 0, language: Language = DEFAULT) -> str:
    """Whole documents from seed ``seed`` until at least ``n_chars`` characters (= bytes).

    Convention in the book: seed 0 trains, seed 1 validates, seed 2 tests."""
    rng, parts, size = random.Random(seed), [], 0
    while size < n_chars:
        c = _Sampler(rng)
        _document(c, language)
        parts.append(render(c.tokens))
        size += len(parts[-1])
    return "".join(parts)


def split_documents(text: str) -> list[str]:
    """A text of whole documents -> the documents, each with its final newline."""
    if text and not text.endswith(END):
        raise ValueError("the text must consist of whole documents, each ending in a newline")
    return [d + END for d in text.split(END)[:-1]]


def document_log_prob(doc: str, language: Language = DEFAULT) -> float:
    """Exact log p(doc) in nats for ONE document; -inf if it is not in the language."""
    tokens = _TOKEN.findall(doc)
    if render(tokens) != doc:
        return -math.inf  # characters or spacing the language never produces
    c = _Scorer(tokens)
    try:
        _document(c, language)
    except NotInLanguage:
        return -math.inf
    return c.logp if c.pos == len(tokens) else -math.inf


def log_prob(text: str, language: Language = DEFAULT) -> float:
    """Exact log-probability (nats) of a text made of whole documents: the sum over them."""
    return sum(document_log_prob(d, language) for d in split_documents(text))


def domain_of(doc: str) -> str:
    return DOMAINS[("Once", "Math", "Review").index(doc.split(" ", 1)[0].rstrip(":"))]


@dataclass(frozen=True)
class EntropyFloor:
    """The language's entropy rate, estimated from held-out documents' exact log-probs.

    ``nats_per_char`` = sum of -log p(doc) / sum of len(doc) over the documents: the lowest
    cross-entropy (natural log) per character that any model of this corpus can reach, with
    its standard error. ``bits_per_char`` is the same in bits (divide by ln 2). Per byte of
    UTF-8 is identical here (ASCII). For a tokenizer, multiply by characters per token."""

    nats_per_char: float
    stderr_per_char: float
    nats_per_byte: float
    stderr_per_byte: float
    n_docs: int
    n_chars: int
    n_bytes: int

    @property
    def bits_per_char(self) -> float:
        return self.nats_per_char / math.log(2)

    def nats_per_token(self, chars_per_token: float) -> float:
        return self.nats_per_char * chars_per_token


def _ratio(xs: list[float], ys: list[int]) -> tuple[float, float]:
    """sum(x)/sum(y) and its delta-method standard error."""
    n, r = len(xs), sum(xs) / sum(ys)
    mean_y = sum(ys) / n
    var = sum((x - r * y) ** 2 for x, y in zip(xs, ys)) / (n - 1) if n > 1 else math.inf
    return r, math.sqrt(var / n) / mean_y


def entropy_floor(n_docs: int = 4000, seed: int = 2, language: Language = DEFAULT) -> EntropyFloor:
    """Estimate the entropy rate from ``n_docs`` documents of seed ``seed``, scoring each
    one's text exactly (:func:`document_log_prob`). Restrict ``language.domain_weights`` to
    one domain, e.g. ``(0, 1, 0)``, for that domain's own floor."""
    docs = documents(n_docs, seed, language)
    nll = [-document_log_prob(d, language) for d in docs]
    chars = [len(d) for d in docs]
    nbytes = [len(d.encode("utf-8")) for d in docs]
    (pc, sc), (pb, sb) = _ratio(nll, chars), _ratio(nll, nbytes)
    return EntropyFloor(pc, sc, pb, sb, n_docs, sum(chars), sum(nbytes))


def enumerate_documents(language: Language, limit: int = 200_000) -> Iterator[tuple[str, float]]:
    """Every document of a finite language with its log-probability (depth-first)."""
    prefix: list[int] = []
    for _ in range(limit):
        c = _Replay(prefix)
        try:
            _document(c, language)
            yield render(c.tokens), c.logp
        except NotInLanguage:
            pass
        j = len(c.choices) - 1
        while j >= 0 and c.choices[j] + 1 >= c.branching[j]:
            j -= 1
        if j < 0:
            return
        prefix = c.choices[:j] + [c.choices[j] + 1]
    raise ValueError(f"the language has more than {limit} documents; use entropy_floor()")


def exact_entropy_rate(language: Language, limit: int = 200_000) -> tuple[float, float]:
    """(nats per character, total probability) of a finite language, by enumeration:
    H(document) / E[length]. The total probability should be 1."""
    h = length = total = 0.0
    for text, logp in enumerate_documents(language, limit):
        p = math.exp(logp)
        h, length, total = h - p * logp, length + p * len(text), total + p
    return h / length, total

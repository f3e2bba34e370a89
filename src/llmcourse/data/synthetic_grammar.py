"""The grammar program of :mod:`llmcourse.data.synthetic` and the choosers that run it.

:func:`_document` takes every random decision through ``pick``; which chooser makes the
decisions decides what a run does: :class:`_Sampler` samples, :class:`_Scorer` reads the
choices off a text (exact log-probability), :class:`_Replay` enumerates a small language.
The grammar itself is written out in :mod:`llmcourse.data.synthetic`'s docstring.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .synthetic import Language

END = "\n"  # ends every document


class NotInLanguage(ValueError):
    """The text is not a document of the language (its probability is 0)."""


def _zipf(n: int) -> tuple[float, ...]:
    return tuple(1.0 / (i + 1) for i in range(n))


# ---------------------------------------------------------------------------------------
# Choosers: the same grammar program samples, scores or enumerates depending on which one
# makes its decisions.

@lru_cache(maxsize=None)
def _table(options: tuple, weights: tuple | None):
    """Options as token tuples, their probabilities, cumulative sums and a first-token index."""
    opts = tuple(o if isinstance(o, tuple) else tuple(o.split()) for o in options)
    w = weights if weights is not None else _zipf(len(opts))
    total = sum(w)
    probs = tuple(x / total for x in w)
    index: dict[str | None, list[int]] = {}
    for i, o in enumerate(opts):
        index.setdefault(o[0] if o else None, []).append(i)
    return opts, probs, tuple(itertools.accumulate(probs)), index


class _Chooser:
    def __init__(self):
        self.tokens: list[str] = []
        self.choices: list[int] = []
        self.logp = 0.0

    def pick(self, options: tuple, weights: tuple | None = None) -> int:
        """Choose one option (a token string or tuple), emit its tokens, return its index.
        Without ``weights`` the options are Zipf-weighted (1, 1/2, 1/3, ...)."""
        opts, probs, cum, index = _table(options, weights)
        i = self._decide(opts, cum, index)
        self.choices.append(i)
        if probs[i] <= 0.0:
            raise NotInLanguage("a choice of probability 0")
        self.logp += math.log(probs[i])
        self.emit(*opts[i])
        return i

    def emit(self, *tokens: str) -> None:
        self.tokens.extend(tokens)

    def _decide(self, opts, cum, index) -> int:  # pragma: no cover - abstract
        raise NotImplementedError


class _Sampler(_Chooser):
    def __init__(self, rng: random.Random):
        super().__init__()
        self.rng = rng

    def _decide(self, opts, cum, index) -> int:
        return min(bisect.bisect_right(cum, self.rng.random() * cum[-1]), len(opts) - 1)


class _Scorer(_Chooser):
    """Reads the choices off a tokenised document; fails when the text leaves the language."""

    def __init__(self, tokens: list[str]):
        super().__init__()
        self.text, self.pos = tokens, 0

    def _decide(self, opts, cum, index) -> int:
        nxt = self.text[self.pos] if self.pos < len(self.text) else None
        found = [i for i in index.get(nxt, ()) if tuple(self.text[self.pos:self.pos + len(opts[i])]) == opts[i]]
        if len(found) > 1:
            raise AssertionError(f"ambiguous grammar: options {[opts[i] for i in found]}")
        if not found and None not in index:
            raise NotInLanguage(f"unexpected {nxt!r} at token {self.pos}")
        return found[0] if found else index[None][0]

    def emit(self, *tokens: str) -> None:
        end = self.pos + len(tokens)
        if tuple(self.text[self.pos:end]) != tokens:
            raise NotInLanguage(f"expected {' '.join(tokens)!r} at token {self.pos}")
        self.pos = end


class _Replay(_Chooser):
    """Follows a prefix of choice indices, then takes option 0 (depth-first enumeration)."""

    def __init__(self, prefix: list[int]):
        super().__init__()
        self.prefix, self.branching = prefix, []

    def _decide(self, opts, cum, index) -> int:
        k = len(self.choices)
        self.branching.append(len(opts))
        return self.prefix[k] if k < len(self.prefix) else 0


# ---------------------------------------------------------------------------------------
# The grammar program.

def _document(c: _Chooser, L: Language) -> None:
    domain = c.pick(("Once upon a time , there was a", "Math :", "Review :"), L.domain_weights)
    (_story, _math, _review)[domain](c, L)


def _more(c: _Chooser, p_more: float, stop: tuple, last: bool) -> bool:
    """Go on (emitting nothing) with probability ``p_more``, else emit ``stop``."""
    if last:
        c.emit(*stop)
        return False
    return c.pick(((), stop), (p_more, 1.0 - p_more)) == 0


@lru_cache(maxsize=None)
def _optional(words: tuple, p: float) -> tuple[tuple, tuple[float, ...]]:
    z = _zipf(len(words))
    return ((),) + words, (1.0 - p,) + tuple(p * x / sum(z) for x in z)


def _maybe(c: _Chooser, words: tuple, p: float) -> str | None:
    """With probability ``p`` one of ``words`` (Zipf-weighted), else nothing."""
    i = c.pick(*_optional(words, p))
    return words[i - 1] if i else None


def _animal(c: _Chooser, L: Language) -> None:
    for _ in range(L.max_adjectives):
        if _maybe(c, L.adjectives, L.p_adjective) is None:
            break
    c.pick(L.animals)


def _story(c: _Chooser, L: Language) -> None:
    _animal(c, L)
    c.emit("named")
    name, pron = L.names[c.pick(tuple(n for n, _ in L.names))]
    c.emit(".")
    for k in range(L.max_events):
        _event(c, L, name, pron)
        if not _more(c, L.p_more_events, ("The", "end", ".", END), k + 1 == L.max_events):
            return


def _event(c: _Chooser, L: Language, name: str, pron: str) -> None:
    c.pick(L.openers)
    c.pick((name, pron), (0.6, 0.4))
    kind = c.pick(("found a", "met a", "went to the", "felt"), L.event_weights)
    if kind == 0:
        _maybe(c, L.colors, 0.5)
        thing = L.objects[c.pick(L.objects)]
        c.emit(".")
        if c.pick(((), f"{pron.capitalize()} wanted to"), (0.5, 0.5)):
            c.pick(L.verbs)
            c.emit("the", thing, ".")
    elif kind == 1:
        _animal(c, L)
        c.emit("named")
        c.pick(tuple(n for n, _ in L.names if n != name))
        c.emit(".")
        if c.pick(((), "They played in the", "They became friends ."), (0.4, 0.3, 0.3)) == 1:
            c.pick(L.places)
            c.emit(".")
    elif kind == 2:
        c.pick(L.places)
        c.emit(".")
        if c.pick(((), f"{pron.capitalize()} saw a"), (0.5, 0.5)):
            _animal(c, L)
            c.emit("there", ".")
    else:
        c.pick(L.feelings)
        if c.pick((".", "because it was a"), (0.5, 0.5)):
            c.pick(L.weathers)
            c.emit("day", ".")


@lru_cache(maxsize=None)
def _numbers(hi: int) -> tuple[tuple[str, ...], tuple[float, ...]]:
    return tuple((str(i),) for i in range(hi + 1)), (1.0,) * (hi + 1)


def _number(c: _Chooser, hi: int) -> int:
    """Uniform in 0..hi."""
    return c.pick(*_numbers(hi))


def _math(c: _Chooser, L: Language) -> None:
    for k in range(L.max_problems):
        a = _number(c, L.max_number)
        op = c.pick(("+", "-", "*"), (0.4, 0.3, 0.3))
        b = _number(c, (L.max_number, a, L.max_factor)[op])
        c.emit("=", str((a + b, a - b, a * b)[op]), ".")
        if not _more(c, L.p_more_problems, (END,), k + 1 == L.max_problems):
            return


def _review(c: _Chooser, L: Language) -> None:
    score = 0
    for k in range(L.max_sentences):
        value = _clause(c, L, "The")
        joint = c.pick((".", ", and the", ", but the"), (0.5, 0.25, 0.25))
        if joint:
            second = _clause(c, L, None)
            c.emit(".")
            value = value + second if joint == 1 else second  # after "but" only the second counts
        score += value
        if not _more(c, L.p_more_sentences, ("Rating", ":"), k + 1 == L.max_sentences):
            break
    stars = min(5, max(1, 3 + score))
    c.emit(str(stars), "star" if stars == 1 else "stars", ".", END)


def _clause(c: _Chooser, L: Language, det: str | None) -> int:
    if det:
        c.emit(det)
    c.pick(L.aspects)
    c.emit("was")
    negated = c.pick(((), "not"), (1.0 - L.p_not, L.p_not)) == 1
    intensified = _maybe(c, L.intensifiers, L.p_intensifier) is not None
    words, weights, values = L._sentiment
    v = values[c.pick(words, weights)]
    if intensified:
        v += 1 if v > 0 else -1
    return (-1 if v > 0 else 1) if negated else v

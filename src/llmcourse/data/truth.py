"""Exact truths about texts of the synthetic language that real corpora never give.

Shared by the chapter-10 notebooks ("Frontiers"): where a model's output can be *scored*
against what the language itself says. Each helper reads a text with the language's own
grammar (:mod:`llmcourse.data.synthetic`) and returns ``None`` when the text leaves it.

* :func:`review_score` -- the compositional sentiment score of a review's sentences (the
  number the language's rating is computed from), whatever rating the text goes on to state.
* :func:`review_stars` -- the rating the language would give: ``clamp(3 + score, 1, 5)``.
"""

from __future__ import annotations

from .synthetic import _TOKEN, DEFAULT, Language

__all__ = ["review_score", "review_stars", "REVIEW_PROMPT"]

REVIEW_PROMPT = "Review: The"


def _clause(tokens: list[str], i: int, L: Language) -> tuple[int, int] | None:
    """Parse ``aspect was [not] [intensifier] sentiment`` at ``tokens[i]``: (value, next i)."""
    words, _, values = L._sentiment
    if i + 2 >= len(tokens) or tokens[i] not in L.aspects or tokens[i + 1] != "was":
        return None
    i += 2
    negated = tokens[i] == "not"
    i += negated
    intensified = i < len(tokens) and tokens[i] in L.intensifiers
    i += intensified
    if i >= len(tokens) or tokens[i] not in words:
        return None
    v = values[words.index(tokens[i])]
    if intensified:
        v += 1 if v > 0 else -1
    return ((-1 if v > 0 else 1) if negated else v), i + 1


def review_score(text: str, language: Language = DEFAULT) -> int | None:
    """The sentiment score of a review (``"Review: The food was great. ..."``): the sum over
    its sentences of each sentence's value, a sentence ``A, and B`` worth A + B and
    ``A, but B`` worth B alone, a clause worth +-1 / +-2 by its word, one more in size with an
    intensifier, and ``not`` turning it into -1 (if positive) or +1 (if negative).

    Only the sentences are read (up to ``Rating``, or the end of the text); ``None`` if they
    do not follow the grammar or there is none."""
    L = language
    tokens = _TOKEN.findall(text.split("\n", 1)[0])
    if tokens[:2] != ["Review", ":"]:
        return None
    i, score, n = 2, 0, 0
    while i < len(tokens) and tokens[i] == "The" and n < L.max_sentences:
        first = _clause(tokens, i + 1, L)
        if first is None:
            return None
        value, i = first
        if tokens[i:i + 1] == ["."]:
            i += 1
        elif tokens[i:i + 3] in ([",", "and", "the"], [",", "but", "the"]):
            joint = tokens[i + 1]
            second = _clause(tokens, i + 3, L)
            if second is None or tokens[second[1]:second[1] + 1] != ["."]:
                return None
            value = value + second[0] if joint == "and" else second[0]
            i = second[1] + 1
        else:
            return None
        score, n = score + value, n + 1
    if n == 0 or (i < len(tokens) and tokens[i] != "Rating"):
        return None
    return score


def review_stars(text: str, language: Language = DEFAULT) -> int | None:
    """The rating the language gives a review with these sentences: clamp(3 + score, 1, 5)."""
    s = review_score(text, language)
    return None if s is None else min(5, max(1, 3 + s))

"""The true next-token and next-byte distributions of the synthetic language (chapter 10).

:mod:`~llmcourse.data.synthetic` scores whole documents. Calibration against the truth needs
more: the true distribution of the **next** token (and the next byte) after a prefix of a
document, which no real corpus can give. Because the grammar is LL(1), the choices that made a
prefix are fixed by its text; only the choices after its end are open. This module runs the
same grammar program with a chooser that reads the prefix and, where the text runs out, stops
and lists the options that could come next with their probabilities. An option that emits
nothing (an optional adjective left out) is followed by re-running the program with that choice
forced, so the next token is found however many empty choices lie in between.

* :func:`next_token_distribution` -- ``{token: p(token | prefix)}`` at a token boundary;
* :func:`next_byte_distribution` -- ``{byte: p}`` for the next character (= byte: ASCII);
* :func:`word_boundaries` -- the positions of a document that follow a space, where the next
  byte is the first letter (or digit) of a word and the truth is cheap to compute.

Exact by construction; ``tests/test_reference_ch10.py`` checks it against brute-force
enumeration of :meth:`Language.tiny`.
"""

from __future__ import annotations

from collections import defaultdict

from .synthetic import _ATTACH, _TOKEN, DEFAULT, Language, NotInLanguage, _Chooser, _document, render

__all__ = ["next_token_distribution", "next_byte_distribution", "word_boundaries"]


class _Frontier(Exception):
    """The prefix ends here: ``options`` = [(weight, next token or None, choice index)]."""

    def __init__(self, options):
        super().__init__("frontier")
        self.options = options


class _Prefix(_Chooser):
    """Reads a token prefix; at its end takes the ``forced`` choices, then raises _Frontier."""

    def __init__(self, tokens: list[str], forced: tuple[int, ...]):
        super().__init__()
        self.text, self.pos, self.forced = tokens, 0, list(forced)

    def _decide(self, opts, cum, index) -> int:
        probs = [cum[0]] + [cum[i] - cum[i - 1] for i in range(1, len(cum))]
        rest = self.text[self.pos:]
        if not rest:
            if self.forced:
                return self.forced.pop(0)
            raise _Frontier([(probs[i], o[0] if o else None, i) for i, o in enumerate(opts)
                             if probs[i] > 0])
        cands = index.get(rest[0], ())
        partial = [i for i in cands if len(rest) < len(opts[i]) and opts[i][:len(rest)] == tuple(rest)]
        if partial:  # the prefix ends inside a multi-token option: condition on those options
            total = sum(probs[i] for i in partial)
            raise _Frontier([(probs[i] / total, opts[i][len(rest)], i) for i in partial])
        full = [i for i in cands if tuple(rest[:len(opts[i])]) == opts[i]]
        if len(full) > 1:
            raise AssertionError("ambiguous grammar")
        if not full and None not in index:
            raise NotInLanguage(f"unexpected {rest[0]!r} at token {self.pos}")
        return full[0] if full else index[None][0]

    def emit(self, *tokens: str) -> None:
        for tok in tokens:
            if self.pos == len(self.text):
                raise _Frontier([(1.0, tok, -1)])
            if self.text[self.pos] != tok:
                raise NotInLanguage(f"expected {tok!r} at token {self.pos}")
            self.pos += 1


def _tokens(prefix: str) -> list[str]:
    tokens = _TOKEN.findall(prefix)
    if render(tokens) != prefix:
        raise ValueError(f"{prefix[-30:]!r} does not end at a token boundary of the language "
                         "(or has characters or spacing the language never produces)")
    return tokens


def next_token_distribution(prefix: str, language: Language = DEFAULT) -> dict[str, float]:
    """``{token: p(next token | prefix)}`` for a prefix that ends at a token boundary
    (``render`` of its tokens, no trailing space). Raises ValueError when the prefix has
    probability 0. The probabilities sum to 1."""
    tokens = _tokens(prefix)
    out: dict[str, float] = defaultdict(float)
    stack: list[tuple[tuple[int, ...], float]] = [((), 1.0)]
    while stack:
        forced, weight = stack.pop()
        chooser = _Prefix(tokens, forced)
        try:
            _document(chooser, language)
        except _Frontier as f:
            for p, tok, i in f.options:
                if tok is None:
                    stack.append((forced + (i,), weight * p))
                else:
                    out[tok] += weight * p
            continue
        except NotInLanguage as exc:
            if not forced:
                raise ValueError(f"the prefix is not in the language: {exc}") from None
            continue
        raise ValueError("the prefix is a whole document; nothing follows it")
    return dict(out)


def next_byte_distribution(prefix: str, language: Language = DEFAULT) -> dict[str, float]:
    """``{character: p(next character | prefix)}``. The prefix ends at a token boundary,
    optionally followed by the one space the language writes between tokens."""
    spaced = prefix.endswith(" ")
    dist = next_token_distribution(prefix[:-1] if spaced else prefix, language)
    out: dict[str, float] = defaultdict(float)
    for tok, p in dist.items():
        attached = tok in _ATTACH
        if spaced and attached:
            continue  # "." never follows a space: this token cannot come next
        out[tok[0] if (spaced or attached) else " "] += p
    total = sum(out.values())
    return {b: p / total for b, p in out.items()}


def word_boundaries(doc: str) -> list[int]:
    """Positions ``i`` of ``doc`` with ``doc[i - 1] == " "``: ``doc[:i]`` is a prefix after which
    the next byte starts a word (or a number)."""
    return [i for i in range(1, len(doc)) if doc[i - 1] == " "]

"""Chapter 01 exercises: n-gram LMs, byte-level BPE and the MLP language model.

Tokens are int64 tensors; an n-gram model is a dense (V,) * n table (see
:mod:`llmcourse.reference.ngram`). The BPE exercises take and return plain Python lists;
their ``call`` turns list outputs into int64 tensors (and decoded text into its code
points) so that the grader can compare them as arrays.
"""

from __future__ import annotations

import torch

from ..data import corpus
from ..reference import bpe as ref_bpe
from ..reference import mlp_lm as ref_mlp
from ..reference import ngram as ref
from . import register
from .ch00 import NO_COURSE_ANSWERS
from .core import Case, Exercise, Mistake, Rule

NO_TOKENIZER_LIBRARIES = NO_COURSE_ANSWERS + tuple(
    Rule(lib, "write BPE yourself instead of calling a tokenizer library")
    for lib in ("tokenizers", "tiktoken", "transformers", "sentencepiece"))


def _seq(g: torch.Generator, length: int, vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (length,), generator=g)


def _text_ids(n_chars: int, seed: int) -> tuple[torch.Tensor, int]:
    """Characters of the synthetic language as ids 0..V-1 (and V)."""
    text = corpus(n_chars, seed=seed)[:n_chars]
    alphabet = sorted(set(text))
    return torch.tensor([alphabet.index(ch) for ch in text]), len(alphabet)


# -- n-gram counts -------------------------------------------------------------------------

def _counts_miss_last(tokens, n, vocab_size):
    return ref.ngram_counts(tokens[:-1], n, vocab_size)


def _counts_reversed(tokens, n, vocab_size):
    return ref.ngram_counts(tokens, n, vocab_size).permute(*range(n - 1, -1, -1))


def _counts_presence(tokens, n, vocab_size):
    return (ref.ngram_counts(tokens, n, vocab_size) > 0).long()


def _counts_wrap(tokens, n, vocab_size):
    return ref.ngram_counts(torch.cat([tokens, tokens[:n - 1]]), n, vocab_size)


@register
class NgramCounts(Exercise):
    """Counting n-grams into a (V,) * n table."""
    id = "01.ngram_counts"
    entry = "ngram_counts"
    forbid = NO_COURSE_ANSWERS
    mistakes = (
        Mistake("misses the last n-gram", "a sequence of T tokens has T - n + 1 n-grams; the "
                "last one starts at position T - n.", _counts_miss_last),
        Mistake("n-gram axes reversed", "counts[w1, ..., wn] must index the OLDEST token first "
                "(the context), the predicted token last.", _counts_reversed),
        Mistake("counts presence, not occurrences", "add 1 for every occurrence; an n-gram seen "
                "twice has count 2.", _counts_presence),
        Mistake("wraps around the end", "the sequence does not continue at its start: do not "
                "count n-grams that run past the last token.", _counts_wrap),
    )

    def reference(self, tokens, n, vocab_size):
        return ref.ngram_counts(tokens, n, vocab_size)

    def cases(self, seed, hidden):
        g = torch.Generator().manual_seed(seed)
        cases = [
            Case("bigrams, V=4", (_seq(g, 12, 4), 2, 4)),
            Case("unigrams, V=5", (_seq(g, 10, 5), 1, 5)),
            Case("trigrams, V=3", (_seq(g, 20, 3), 3, 3)),
            Case("sequence shorter than n: all zeros", (torch.tensor([1, 0]), 3, 2)),
        ]
        if hidden:
            ids, v = _text_ids(300, seed)
            cases += [
                Case("4-grams, V=3", (_seq(g, 40, 3), 4, 3)),
                Case("one token repeated", (torch.full((9,), 2), 3, 4)),
                Case("characters of the synthetic language, bigrams", (ids, 2, v)),
                Case("exactly n tokens", (_seq(g, 3, 6), 3, 6)),
            ]
        return cases


def _count_tables(seed: int, hidden: bool, params: tuple[float, ...]) -> list[Case]:
    """Count tables shared by the smoothing exercises; args (counts, params[i])."""
    g = torch.Generator().manual_seed(seed)
    cases = [
        Case("bigram counts, V=5", (ref.ngram_counts(_seq(g, 30, 5), 2, 5),)),
        Case("trigram counts, V=4 (unseen contexts)", (ref.ngram_counts(_seq(g, 25, 4), 3, 4),)),
        Case("unigram counts, V=6", (ref.ngram_counts(_seq(g, 20, 6), 1, 6),)),
    ]
    if hidden:
        ids, v = _text_ids(400, seed + 1)
        cases += [
            Case("4-gram counts, V=3", (ref.ngram_counts(_seq(g, 60, 3), 4, 3),)),
            Case("sparse bigrams, V=8", (ref.ngram_counts(_seq(g, 10, 8), 2, 8),)),
            Case("float64 counts", (ref.ngram_counts(_seq(g, 40, 5), 2, 5).double(),)),
            Case("synthetic-language characters, bigrams", (ref.ngram_counts(ids, 2, v),)),
        ]
    for case, param in zip(cases, params):
        case.args += (param,)
    return cases


# -- add-k ---------------------------------------------------------------------------------

def _add_k_no_v(counts, k=1.0):
    c = counts.double()
    return (c + k) / (c.sum(-1, keepdim=True) + k)


def _add_k_denominator_unsmoothed(counts, k=1.0):
    c = counts.double()
    return (c + k) / c.sum(-1, keepdim=True)


def _add_k_first_axis(counts, k=1.0):
    c = counts.double()
    return (c + k) / (c.sum(0, keepdim=True) + k * c.shape[0])


def _add_k_joint(counts, k=1.0):
    c = counts.double()
    return (c + k) / (c.sum() + k * c.numel())


def _add_k_float32(counts, k=1.0):
    return ref.add_k_probs(counts, k).float()


@register
class AddK(Exercise):
    """Add-k smoothing."""
    id = "01.add_k"
    entry = "add_k_probs"
    forbid = NO_COURSE_ANSWERS
    mistakes = (
        Mistake("V not added to the denominator", "adding k to each of the V counts of a context "
                "adds k*V to its total: divide by c(h) + k*V.", _add_k_no_v),
        Mistake("denominator not smoothed", "the denominator must grow with the added counts: "
                "c(h) + k*V, not c(h).", _add_k_denominator_unsmoothed),
        Mistake("normalised over the wrong axis", "P(w | h) sums to 1 over the LAST axis (the "
                "predicted word): sum with dim=-1, keepdim=True.", _add_k_first_axis),
        Mistake("joint instead of conditional", "divide by the context's total c(h) + k*V, not "
                "by the count of every n-gram.", _add_k_joint),
        Mistake("result is float32", "int64 counts + a float give float32; convert the counts "
                "with .double() first: the result must be float64.", _add_k_float32),
    )

    def reference(self, counts, k=1.0):
        return ref.add_k_probs(counts, k)

    def cases(self, seed, hidden):
        return _count_tables(seed, hidden, (1.0, 0.5, 0.1, 2.0, 0.01, 1.0, 0.25))  # k


# -- Kneser-Ney ----------------------------------------------------------------------------

def _kn(counts, d, *, lower_counts=None, clip=True, back_off=True, lam=None, uniform=True):
    """Interpolated Kneser-Ney with switches that reproduce known mistakes."""
    c = counts.double()
    v = c.shape[-1]
    if c.ndim == 1:
        lower = torch.full((v,), 1.0 / v, dtype=torch.float64)
        if not uniform:
            return c / c.sum()
    else:
        cont = lower_counts(c) if lower_counts else (c > 0).sum(0).double()
        lower = _kn(cont, d, lower_counts=lower_counts, clip=clip, back_off=back_off, lam=lam,
                    uniform=uniform)
    total = c.sum(-1, keepdim=True)
    types = (c > 0).sum(-1, keepdim=True)
    den = total.clamp_min(1.0) if back_off else total
    top = (c - d).clamp_min(0.0) if clip else c - d
    weight = lam(d, types, den) if lam else d * types / den
    probs = top / den + weight * lower
    return torch.where(total > 0, probs, lower.expand_as(c)) if back_off else probs


@register
class KneserNey(Exercise):
    """Interpolated Kneser-Ney smoothing."""
    id = "01.kneser_ney"
    entry = "kneser_ney_probs"
    forbid = NO_COURSE_ANSWERS
    mistakes = (
        Mistake("no discount", "subtract the discount D from every seen count; it is that mass, "
                "D * N1+(h .) / c(h), that goes to the lower order.",
                lambda counts, discount=0.75: ref.kneser_ney_probs(counts, 0.0)),
        Mistake("continuation counts using token counts", "the lower orders count how many "
                "DIFFERENT words precede h'w, (counts > 0).sum(0), not how often h'w occurs.",
                lambda counts, discount=0.75: _kn(counts, discount,
                                                  lower_counts=lambda c: c.sum(0))),
        Mistake("discount not clipped at zero", "unseen n-grams would get negative mass: use "
                "max(c - D, 0).", lambda counts, discount=0.75: _kn(counts, discount, clip=False)),
        Mistake("unseen contexts not backed off", "a context with c(h) = 0 has no counts to "
                "divide by: use the lower-order distribution alone there.",
                lambda counts, discount=0.75: _kn(counts, discount, back_off=False)),
        Mistake("interpolation weight without N1+(h .)", "lambda(h) = D * N1+(h .) / c(h): the "
                "discount is taken once per distinct word seen after h.",
                lambda counts, discount=0.75: _kn(counts, discount, lam=lambda d, t, den: d / den)),
        Mistake("unigram level not interpolated with the uniform distribution", "discount the "
                "unigram continuation counts too and give the freed mass to 1/V, so that unseen "
                "words keep some probability.",
                lambda counts, discount=0.75: _kn(counts, discount, uniform=False)),
    )

    def reference(self, counts, discount=0.75):
        return ref.kneser_ney_probs(counts, discount)

    def cases(self, seed, hidden):
        return _count_tables(seed, hidden, (0.75, 0.75, 0.5, 0.75, 0.9, 1.0, 0.6))  # discount


# -- perplexity ----------------------------------------------------------------------------

def _logp(probs, tokens):
    return torch.log(ref.target_probs(probs, tokens))


@register
class Perplexity(Exercise):
    """Perplexity of an n-gram model."""
    id = "01.perplexity"
    entry = "perplexity"
    forbid = NO_COURSE_ANSWERS
    mistakes = (
        Mistake("sum instead of mean", "perplexity is exp of the MEAN negative log-probability "
                "per predicted token.", lambda probs, tokens: torch.exp(-_logp(probs, tokens).sum())),
        Mistake("log base mismatch", "with natural logs use exp(), not 2 ** (): the base of the "
                "power must match the base of the log.",
                lambda probs, tokens: 2 ** (-_logp(probs, tokens).mean())),
        Mistake("missing minus sign", "exp(+mean log p) is 1 / perplexity; negate the mean "
                "log-probability.", lambda probs, tokens: torch.exp(_logp(probs, tokens).mean())),
        Mistake("inverse of the mean probability", "perplexity is the inverse GEOMETRIC mean "
                "exp(-mean log p), not 1 / mean(p).",
                lambda probs, tokens: 1 / ref.target_probs(probs, tokens).mean()),
        Mistake("n-gram axes reversed", "probs[w1, ..., wn] has the context first and the "
                "predicted token last.",
                lambda probs, tokens: ref.perplexity(probs.permute(*range(probs.ndim - 1, -1, -1)),
                                                     tokens)),
    )

    def reference(self, probs, tokens):
        return ref.perplexity(probs, tokens)

    def cases(self, seed, hidden):
        g = torch.Generator().manual_seed(seed)

        def model(kind, n, v, length=40):
            counts = ref.ngram_counts(_seq(g, length, v), n, v)
            return ref.add_k_probs(counts, 0.5) if kind == "add-k" else ref.kneser_ney_probs(counts)

        cases = [
            Case("add-k bigram model, V=5", (model("add-k", 2, 5), _seq(g, 20, 5))),
            Case("Kneser-Ney trigram model, V=4", (model("kn", 3, 4), _seq(g, 25, 4))),
            Case("unigram model, V=6", (model("add-k", 1, 6), _seq(g, 15, 6))),
            Case("float32 model", (model("kn", 2, 5).float(), _seq(g, 20, 5))),
        ]
        if hidden:
            mle = ref.ngram_counts(torch.tensor([0, 1, 0, 1, 0]), 2, 3).double()
            mle = mle / mle.sum(-1, keepdim=True).clamp_min(1)
            cases += [
                Case("uniform model: perplexity = V", (torch.full((7, 7), 1 / 7, dtype=torch.float64),
                                                       _seq(g, 12, 7))),
                Case("a zero-probability token: inf", (mle, torch.tensor([0, 1, 0, 2]))),
                Case("exactly n tokens: one prediction", (model("kn", 3, 4), _seq(g, 3, 4))),
                Case("4-gram Kneser-Ney, V=3", (model("kn", 4, 3, 80), _seq(g, 30, 3))),
            ]
        return cases


# -- sampling ------------------------------------------------------------------------------

def _sample_with(row_of, update=True, strict=False, greedy=False):
    def sample(probs, context, uniforms):
        n, history, out = probs.ndim, context.tolist(), []
        start = list(history)
        for u in uniforms.tolist():
            h = history if update else start
            row = row_of(probs, h[len(h) - (n - 1):])
            cdf = row.cumsum(0)
            t = int(row.argmax()) if greedy else int(((cdf < u) if strict else (cdf <= u)).sum())
            out.append(min(t, row.numel() - 1))
            history.append(out[-1])
        return torch.tensor(out, dtype=torch.int64)
    return sample


def _row(probs, ctx):
    return probs[tuple(ctx)]


def _column(probs, ctx):
    return probs.movedim(-1, 0)[tuple(ctx)] if ctx else probs


@register
class NgramSample(Exercise):
    """Sampling from an n-gram model by inverse CDF."""
    id = "01.ngram_sample"
    entry = "sample_ngram"
    forbid = NO_COURSE_ANSWERS
    mistakes = (
        Mistake("greedy instead of sampling", "use the uniform number: the token is where u falls "
                "in the cumulative distribution, not the most likely one.",
                _sample_with(_row, greedy=True)),
        Mistake("context not updated", "append each generated token to the context before "
                "drawing the next one.", _sample_with(_row, update=False)),
        Mistake("inverse CDF off by one at ties", "count the CDF entries <= u (not < u), so that "
                "u landing exactly on a boundary never picks a zero-probability token.",
                _sample_with(_row, strict=True)),
        Mistake("context and next token swapped", "the distribution of the next token is "
                "probs[context], a slice along the LAST axis.", _sample_with(_column)),
    )

    def reference(self, probs, context, uniforms):
        return ref.sample_ngram(probs, context, uniforms)

    def cases(self, seed, hidden):
        g = torch.Generator().manual_seed(seed)

        def kn(n, v):
            return ref.kneser_ney_probs(ref.ngram_counts(_seq(g, 40, v), n, v))

        def u(m):
            return torch.rand(m, generator=g, dtype=torch.float64)

        dyadic = torch.tensor([[0.25, 0.0, 0.25, 0.5], [0.5, 0.5, 0.0, 0.0],
                               [0.0, 0.25, 0.25, 0.5], [0.125, 0.375, 0.5, 0.0]], dtype=torch.float64)
        cases = [
            Case("Kneser-Ney bigram model, V=5", (kn(2, 5), torch.tensor([2]), u(12))),
            Case("trigram model, V=4", (kn(3, 4), torch.tensor([0, 3]), u(10))),
            Case("u exactly on CDF boundaries", (dyadic, torch.tensor([0]),
                                                 torch.tensor([0.25, 0.5, 0.75, 0.0, 0.5, 0.125],
                                                              dtype=torch.float64))),
        ]
        if hidden:
            cases += [
                Case("unigram model, empty context", (kn(1, 6), torch.zeros(0, dtype=torch.int64), u(8))),
                Case("context longer than n - 1", (kn(2, 5), torch.tensor([4, 1, 3]), u(15))),
                Case("4-gram model, V=3", (kn(4, 3), torch.tensor([1, 2, 0]), u(20))),
            ]
        return cases


# -- BPE -----------------------------------------------------------------------------------

def _as_tensor(out, pairs=False):
    """list/tuple outputs -> int64 tensor ((m, 2) for merges); anything else unchanged."""
    if isinstance(out, (list, tuple)):
        try:
            t = torch.tensor(out, dtype=torch.int64)
        except (TypeError, ValueError, RuntimeError, OverflowError):
            return out
        return t.reshape(0, 2) if pairs and t.numel() == 0 else t
    if isinstance(out, str):
        return torch.tensor([ord(ch) for ch in out], dtype=torch.int64)
    return out


class _ListExercise(Exercise):
    """Learners return Python lists (or str); compare them as int64 tensors."""

    def call(self, fn, case):
        return _as_tensor(fn(*case.args, **case.kwargs), pairs=self.entry == "bpe_train")


def _merge_overlapping(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids):
        out.append(new_id if tuple(ids[i:i + 2]) == tuple(pair) else ids[i])
        i += 1
    return out


def _merge_first_only(ids, pair, new_id):
    for i in range(len(ids) - 1):
        if (ids[i], ids[i + 1]) == tuple(pair):
            return list(ids[:i]) + [new_id] + list(ids[i + 2:])
    return list(ids)


def _merge_right_to_left(ids, pair, new_id):
    return ref_bpe.merge(list(ids)[::-1], tuple(pair)[::-1], new_id)[::-1]


def _merge_drops_last(ids, pair, new_id):
    # `while i < len(ids) - 1:` never copies a last token that was not merged
    out = ref_bpe.merge(list(ids), tuple(pair), new_id)
    return out if out[-1:] == [new_id] else out[:-1]


@register
class BpeMerge(_ListExercise):
    """Replace one pair by a new token."""
    id = "01.bpe_merge"
    entry = "bpe_merge"
    forbid = NO_TOKENIZER_LIBRARIES
    mistakes = (
        Mistake("overlapping occurrences merged", "after a match, jump over BOTH tokens (i += 2): "
                "[5, 5, 5] with (5, 5) gives [new, 5].", _merge_overlapping),
        Mistake("only the first occurrence replaced", "replace every occurrence, scanning left to "
                "right.", _merge_first_only),
        Mistake("scans right to left", "scan left to right: [5, 5, 5] with (5, 5) gives "
                "[new, 5], not [5, new].", _merge_right_to_left),
        Mistake("drops the last token", "when the loop stops before the end, the last token must "
                "still be copied.", _merge_drops_last),
    )

    def reference(self, ids, pair, new_id):
        return ref_bpe.merge(list(ids), tuple(pair), new_id)

    def cases(self, seed, hidden):
        g = torch.Generator().manual_seed(seed)
        cases = [
            Case("two occurrences", ([1, 2, 3, 1, 2], (1, 2), 256)),
            Case("a run of equal tokens", ([5, 5, 5, 5, 5], (5, 5), 300)),
            Case("pair absent", ([3, 1, 4, 1, 5], (1, 3), 256)),
            Case("empty list", ([], (1, 2), 256)),
        ]
        if hidden:
            cases += [
                Case("pair at the very end", ([9, 8, 7, 1, 2], (1, 2), 257)),
                Case("random ids", (_seq(g, 40, 3).tolist(), (1, 2), 258)),
                Case("three equal tokens", ([7, 7, 7], (7, 7), 259)),
                Case("single token", ([7], (7, 7), 260)),
            ]
        return cases


def _naive_train(text, num_merges, *, chunked=True, weighted=True, first_seen=False):
    """Full recount per merge, with switches that reproduce known mistakes."""
    from collections import Counter

    chunks = Counter(ref_bpe.pretokenize(text) if chunked else [text])
    words = {c: list(c.encode("utf-8")) for c in chunks}
    merges = []
    while len(merges) < num_merges:
        counts: dict = {}
        for c, ids in words.items():
            for p in zip(ids, ids[1:]):
                counts[p] = counts.get(p, 0) + (chunks[c] if weighted else 1)
        if not counts:
            break
        best = (max(counts, key=counts.get) if first_seen
                else min(counts, key=lambda p: (-counts[p], p)))
        merges.append(best)
        words = {c: ref_bpe.merge(ids, best, 255 + len(merges)) for c, ids in words.items()}
    return merges


_TEXTS = ("the cat sat on the mat; the cat ate the rat.", "我爱自然语言处理。我爱机器学习！",
          "emoji: 😀😀👍🏽 and café, déjà vu", "def f(x_1):\n    return x_1 + 42  # done\n\n")


def _training_text(seed: int, n_chars: int = 1500) -> str:
    return corpus(n_chars, seed=seed)[:n_chars] + "".join(_TEXTS) * 3


@register
class BpeTrain(_ListExercise):
    """Train byte-level BPE merges."""
    id = "01.bpe_train"
    entry = "bpe_train"
    forbid = NO_TOKENIZER_LIBRARIES
    mistakes = (
        Mistake("merges across chunk boundaries", "split the text with the pre-tokenizer PATTERN "
                "first and count pairs inside each chunk only.",
                lambda text, num_merges: _naive_train(text, num_merges, chunked=False)),
        Mistake("ties broken by first occurrence", "among pairs with the same count take the "
                "smallest pair (a, b), e.g. min(counts, key=lambda p: (-counts[p], p)).",
                lambda text, num_merges: _naive_train(text, num_merges, first_seen=True)),
        Mistake("chunk frequencies ignored", "a chunk that occurs 10 times contributes its pairs "
                "10 times.", lambda text, num_merges: _naive_train(text, num_merges, weighted=False)),
    )

    def reference(self, text, num_merges):
        return ref_bpe.train(text, num_merges)

    def cases(self, seed, hidden):
        cases = [
            Case("classic example", ("aaabdaaabac", 3)),
            Case("English sentence", (_TEXTS[0], 8)),
            Case("Chinese (3-byte characters)", (_TEXTS[1], 10)),
            Case("runs out of pairs", ("ab ab", 5)),
        ]
        if hidden:
            cases += [
                Case("synthetic language", (corpus(2000, seed=seed)[:2000], 40)),
                Case("emoji and accents", (_TEXTS[2] * 2, 12)),
                Case("Python code", (_TEXTS[3] * 3, 15)),
                Case("everything mixed", (_training_text(seed), 60)),
            ]
        return cases


def _encode_whole(text, merges):
    return ref_bpe.Codec(merges)._encode_chunk_uncached(text) if text else []


def _encode_greedy(text, merges, by_frequency):
    ranks = {tuple(p): r for r, p in enumerate(merges)}
    out = []
    for chunk in ref_bpe.pretokenize(text):
        ids = list(chunk.encode("utf-8"))
        while True:
            pairs = [p for p in zip(ids, ids[1:]) if p in ranks]
            if not pairs:
                break
            pair = max(pairs, key=lambda p: (pairs.count(p), -ranks[p])) if by_frequency else pairs[0]
            ids = ref_bpe.merge(ids, pair, 256 + ranks[pair])
        out += ids
    return out


def _encode_code_points(text, merges):
    ids = [ord(ch) for ch in text]
    for r, pair in enumerate(merges):
        ids = ref_bpe.merge(ids, tuple(pair), 256 + r)
    return ids


def _bpe_cases(seed: int, hidden: bool, make) -> list[Case]:
    merges = ref_bpe.train(_training_text(0), 80)
    texts = ["the cat ate the mat", _TEXTS[1], "emoji: 👍🏽😀 café", ""]
    if hidden:
        merges_h = ref_bpe.train(_training_text(seed + 1, 3000), 150)
        texts_h = [corpus(400, seed=seed + 2), _TEXTS[3], "unseen: Ωμέγα ∑ 🦜🦜 and\t\ttabs  \n\n end",
                   "".join(_TEXTS)]
        return make(merges, texts) + make(merges_h, texts_h)
    return make(merges, texts)


@register
class BpeEncode(_ListExercise):
    """Encode text with BPE merges."""
    id = "01.bpe_encode"
    entry = "bpe_encode"
    forbid = NO_TOKENIZER_LIBRARIES
    mistakes = (
        Mistake("merges across chunk boundaries", "pre-tokenize with PATTERN and encode each "
                "chunk on its own; merges never join two chunks.", _encode_whole),
        Mistake("merges chosen by frequency, not rank", "the order of merges is their rank in "
                "the list, not how often a pair occurs in the text being encoded.",
                lambda text, merges: _encode_greedy(text, merges, by_frequency=True)),
        Mistake("merges applied in text order, not rank order", "at each step apply the "
                "merge with the LOWEST rank present in the chunk, wherever it is.",
                lambda text, merges: _encode_greedy(text, merges, by_frequency=False)),
        Mistake("code points instead of UTF-8 bytes", "start from text.encode('utf-8'): "
                "byte-level BPE works on bytes 0..255, not on Unicode code points.",
                _encode_code_points),
    )

    def reference(self, text, merges):
        return ref_bpe.encode(text, merges)

    def cases(self, seed, hidden):
        cases = _bpe_cases(seed, hidden, lambda merges, texts: [
            Case(f"encode {text[:24]!r}", (text, merges)) for text in texts])
        # (b, c) has the lower rank; (a, b) comes first in "abc" and is more frequent in "abcab"
        return cases + [Case("rank beats text order", ("abc", [(98, 99), (97, 98)])),
                        Case("rank beats frequency", ("abcab abcab", [(98, 99), (97, 98)]))]


def _decoder(join_bytes):
    def decode(ids, merges):
        table = [bytes([i]) for i in range(256)]
        for a, b in merges:
            table.append(join_bytes(table, a, b))
        return b"".join(table[i] for i in ids)
    return decode


_plain, _swapped = _decoder(lambda t, a, b: t[a] + t[b]), _decoder(lambda t, a, b: t[b] + t[a])


@register
class BpeDecode(_ListExercise):
    """Decode BPE tokens to text."""
    id = "01.bpe_decode"
    entry = "bpe_decode"
    forbid = NO_TOKENIZER_LIBRARIES
    mistakes = (
        Mistake("strict UTF-8 decoding", "a token sequence can end inside a character: decode "
                "with errors='replace'.",
                lambda ids, merges: _plain(ids, merges).decode("utf-8")),
        Mistake("each token decoded separately", "join the bytes of ALL tokens first, then decode "
                "once: one character can span several tokens.",
                lambda ids, merges: "".join(_plain([i], merges).decode("utf-8", "replace") for i in ids)),
        Mistake("invalid bytes dropped", "errors='ignore' loses them silently; use "
                "errors='replace' (U+FFFD).",
                lambda ids, merges: _plain(ids, merges).decode("utf-8", "ignore")),
        Mistake("merged pair expanded in reverse order", "token 256 + r stands for the bytes of "
                "merges[r][0] FOLLOWED BY those of merges[r][1].",
                lambda ids, merges: _swapped(ids, merges).decode("utf-8", "replace")),
        Mistake("bytes read as Latin-1", "the bytes are UTF-8: .decode('utf-8', errors='replace').",
                lambda ids, merges: _plain(ids, merges).decode("latin-1")),
    )

    def reference(self, ids, merges):
        return ref_bpe.decode(ids, merges)

    def cases(self, seed, hidden):
        def make(merges, texts):
            cases = [Case(f"decode {t[:24]!r}", (ref_bpe.encode(t, merges), merges)) for t in texts]
            emoji = list("👍".encode("utf-8"))
            return cases + [
                Case("ends inside a character", (list("é".encode("utf-8"))[:1] + [104, 105], merges)),
                Case("an emoji cut in two", (emoji[:2] + [32] + emoji, merges)),
            ]
        return _bpe_cases(seed, hidden, make)


# -- MLP language model --------------------------------------------------------------------

def _mlp_variant(act=torch.tanh, flip=False, probs=False, direct=True):
    def forward(context, embedding, w_hidden, b_hidden, w_out, b_out, w_direct=None):
        x = embedding[context.flip(-1) if flip else context].flatten(-2)
        y = act(x @ w_hidden.T + b_hidden) @ w_out.T + b_out
        if direct and w_direct is not None:
            y = y + x @ w_direct.T
        return torch.softmax(y, -1) if probs else y
    return forward


@register
class MlpLmForward(Exercise):
    """Forward pass of a Bengio-style MLP language model."""
    id = "01.mlp_lm_forward"
    entry = "mlp_lm_forward"
    forbid = NO_COURSE_ANSWERS
    mistakes = (
        Mistake("no tanh", "the hidden layer is tanh(H x + d); without it the model is linear.",
                _mlp_variant(act=lambda z: z)),
        Mistake("ReLU instead of tanh", "Bengio et al.'s hidden layer uses tanh.",
                _mlp_variant(act=torch.relu)),
        Mistake("context concatenated newest first", "concatenate the embeddings in context "
                "order, oldest first: embedding[context].flatten(-2).", _mlp_variant(flip=True)),
        Mistake("returns probabilities", "return the logits; leave softmax to the loss.",
                _mlp_variant(probs=True)),
        Mistake("direct connection ignored", "when w_direct is given, add x @ w_direct.T to the "
                "logits (the paper's W x).", _mlp_variant(direct=False)),
    )

    def reference(self, context, embedding, w_hidden, b_hidden, w_out, b_out, w_direct=None):
        return ref_mlp.mlp_lm_forward(context, embedding, w_hidden, b_hidden, w_out, b_out, w_direct)

    def cases(self, seed, hidden):
        g = torch.Generator().manual_seed(seed)

        def weights(v, c, m, h, dtype=torch.float32, direct=False):
            def r(*shape):
                return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)
            w = (r(v, m), r(h, c * m) * 0.5, r(h), r(v, h) * 0.5, r(v))
            return w + ((r(v, c * m) * 0.3,) if direct else ())

        def ctx(*shape, v):
            return torch.randint(0, v, shape, generator=g)

        cases = [
            Case("batch of 4, context 3, V=10", (ctx(4, 3, v=10), *weights(10, 3, 5, 7))),
            Case("with direct connections", (ctx(3, 2, v=8), *weights(8, 2, 4, 6, direct=True))),
            Case("float64", (ctx(5, 4, v=12), *weights(12, 4, 3, 9, dtype=torch.float64))),
        ]
        if hidden:
            cases += [
                Case("one context, no batch axis", (ctx(3, v=7), *weights(7, 3, 4, 5))),
                Case("(batch, seq, context) input", (ctx(2, 5, 3, v=9), *weights(9, 3, 2, 8, direct=True))),
                Case("context of one token", (ctx(6, 1, v=11), *weights(11, 1, 6, 4))),
            ]
        return cases

"""ngram_lm.ipynb: n-gram counts, add-k and Kneser-Ney smoothing, perplexity, sampling,
and the forward pass of the MLP language model.

Tokens are int64 tensors; an n-gram model is a dense (V,) * n table (see
:mod:`llmcourse.reference.ngram`).
"""

from __future__ import annotations

import torch

from ...data import corpus
from ...reference import mlp_lm as ref_mlp
from ...reference import ngram as ref
from .. import register
from ..core import Case, Exercise, Mistake
from ..kit import generator


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
        g = generator(seed)
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
    g = generator(seed)
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
        g = generator(seed)

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
        g = generator(seed)

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
        g = generator(seed)

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

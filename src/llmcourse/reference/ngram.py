"""Chapter 01: count-based n-gram language models.

Tokens are integer ids in ``[0, V)``. An n-gram model is a dense table ``probs`` of shape
``(V,) * n`` with ``probs[w_1, ..., w_{n-1}, w_n] = P(w_n | w_1 ... w_{n-1})``: every slice
along the last axis sums to 1. Pad a sequence with n-1 beginning-of-text ids to predict its
first tokens too; the functions here never pad on their own.
"""

from __future__ import annotations

import torch


def ngram_counts(tokens: torch.Tensor, n: int, vocab_size: int) -> torch.Tensor:
    """How often each n-gram occurs in ``tokens``.

    tokens: (T,) int64 in [0, V). Returns (V,) * n int64 with ``counts[a, b, c]`` = number
    of positions t with ``tokens[t:t+3] == (a, b, c)`` (for n = 3); T - n + 1 n-grams in all
    (none when T < n).
    """
    shape = (vocab_size,) * n
    if tokens.numel() < n:
        return torch.zeros(shape, dtype=torch.int64)
    grams = tokens.long().unfold(0, n, 1)  # (T - n + 1, n)
    place = vocab_size ** torch.arange(n - 1, -1, -1)
    flat = (grams * place).sum(dim=1)
    return torch.bincount(flat, minlength=vocab_size ** n).reshape(shape)


def add_k_probs(counts: torch.Tensor, k: float = 1.0) -> torch.Tensor:
    """Add-k (Laplace for k = 1) smoothing: P(w | h) = (c(h, w) + k) / (c(h) + k V).

    counts: (V,) * n, any numeric dtype; k > 0. Returns float64 of the same shape.
    """
    c = counts.to(torch.float64)
    return (c + k) / (c.sum(dim=-1, keepdim=True) + k * c.shape[-1])


def kneser_ney_probs(counts: torch.Tensor, discount: float = 0.75) -> torch.Tensor:
    """Interpolated Kneser-Ney (one discount D), from an n-gram count table.

    For the highest order, with c the counts:

        P(w | h) = max(c(h, w) - D, 0) / c(h)  +  D N1+(h .) / c(h) * P_lower(w | h')

    where h' drops the oldest word of h, c(h) = sum_w c(h, w) and N1+(h .) is the number of
    distinct words seen after h. A context never seen (c(h) = 0) uses P_lower alone. The
    lower orders use the same formula on *continuation counts*, N1+(. h' w) = the number of
    distinct words seen before h' w, and the unigram level interpolates with the uniform
    1 / V. Lower-order statistics are derived from the n-gram table itself (as if every
    token had a full context, which beginning-of-text padding guarantees).

    counts: (V,) * n, any numeric dtype. Returns float64 of the same shape.
    """
    c = counts.to(torch.float64)
    v = c.shape[-1]
    if c.ndim == 1:
        lower = torch.full((v,), 1.0 / v, dtype=torch.float64)
    else:
        continuation = (c > 0).sum(dim=0).to(torch.float64)  # N1+(. h' w), shape (V,) * (n-1)
        lower = kneser_ney_probs(continuation, discount)
    total = c.sum(dim=-1, keepdim=True)
    types = (c > 0).sum(dim=-1, keepdim=True)
    safe = total.clamp_min(1.0)
    interpolated = (c - discount).clamp_min(0.0) / safe + discount * types / safe * lower
    return torch.where(total > 0, interpolated, lower.expand_as(c))


def target_probs(probs: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """P(tokens[t] | the n-1 tokens before it) for t = n-1 .. T-1: shape (T - n + 1,)."""
    grams = tokens.long().unfold(0, probs.ndim, 1)  # (T - n + 1, n)
    return probs[tuple(grams.T)]


def perplexity(probs: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """exp of the mean negative log-likelihood (nats) of the T - n + 1 predicted tokens.

    probs: (V,) * n model; tokens: (T,) int64 with T >= n. Returns a 0-dim tensor of the
    dtype of ``probs``; inf when a token has probability 0. Equal to 2 ** (bits per token).
    """
    return torch.exp(-torch.log(target_probs(probs, tokens)).mean())


def sample_ngram(probs: torch.Tensor, context: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Generate ``len(uniforms)`` tokens, each by inverse-CDF sampling from P(. | last n-1).

    probs: (V,) * n; context: (>= n-1,) int64, the tokens so far (only the last n-1
    matter); uniforms: (m,) float in [0, 1), one per generated token. Token t is the number
    of entries of the CDF row ``cumsum(P(. | context))`` that are <= u_t (so zero-probability
    tokens are never drawn), capped at V - 1 against rounding; it then joins the context.
    Returns (m,) int64.
    """
    n, v = probs.ndim, probs.shape[-1]
    history = [int(t) for t in context]
    out = []
    for u in uniforms.tolist():
        row = probs[tuple(history[len(history) - (n - 1):])]  # (V,)
        token = min(int((row.cumsum(0) <= u).sum()), v - 1)
        out.append(token)
        history.append(token)
    return torch.tensor(out, dtype=torch.int64)


def generate(probs: torch.Tensor, context: torch.Tensor, length: int,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """``length`` sampled tokens after ``context``, with a (seedable) torch Generator."""
    uniforms = torch.rand(length, generator=generator, dtype=torch.float64)
    return sample_ngram(probs, context, uniforms)

"""Chapter 10: generation (生成), decoding strategies and hallucination (幻觉), measured.

Conventions (the book states them the same way):

* :func:`next_token_probs` turns logits ``(..., V)`` into the distribution a sampler draws from,
  in Hugging Face's order: temperature, then top-k, then top-p (``generate`` builds its warpers
  as ``TemperatureLogitsWarper``, ``TopKLogitsWarper``, ``TopPLogitsWarper``).
  - temperature divides the **logits**: ``z / T``;
  - top-k keeps every token whose (tempered) logit is >= the k-th largest (ties at the k-th
    value are kept, as HF's ``scores < topk(...)[..., -1]`` rule does); ``top_k = 0`` is off;
  - top-p (nucleus) keeps the smallest set of most probable tokens whose total probability
    reaches ``p``: the token whose mass **crosses** ``p`` is **kept**. HF writes it as: sort
    ascending, remove the tokens whose cumulative probability is ``<= 1 - p``, always keep the
    most probable one. ``top_p = 1`` is off.
* :func:`beam_search` keeps the ``num_beams`` highest-scoring continuations, a score being the
  sum of the log-probabilities of the generated tokens; with no end-of-sequence token every
  beam has the same length, so it equals ``GPT2LMHeadModel.generate(num_beams=k,
  do_sample=False, length_penalty=0.0, num_return_sequences=k)`` (verified in the tests).
* :func:`distinct_n` is Li et al. (2016)'s diversity: distinct n-grams over all n-grams of a set
  of generations (n-grams never cross from one generation into the next).
* :func:`math_verdicts` sorts generated documents into correct, fluent-but-wrong
  (hallucinated: every result corrected, the document is in the language) and ungrammatical,
  with the language's exact scorer as the judge of form.
"""

from __future__ import annotations

import re
from typing import Callable

import torch

from ..data.synthetic import document_log_prob

CORRECT, HALLUCINATED, UNGRAMMATICAL = 0, 1, 2
PROBLEM = re.compile(r"(\d+) ([+*-]) (\d+) = (\d+)")


def next_token_probs(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0,
                     top_p: float = 1.0) -> torch.Tensor:
    """Sampling distribution ``(..., V)`` from logits ``(..., V)``: softmax of the logits after
    temperature, top-k and top-p (in that order). Same dtype as ``logits``; removed tokens get
    probability exactly 0 and every row sums to 1."""
    z = logits / temperature
    if top_k > 0:
        kth = torch.topk(z, min(top_k, z.shape[-1]), dim=-1).values[..., -1:]
        z = z.masked_fill(z < kth, float("-inf"))
    if top_p < 1.0:
        sorted_z, order = torch.sort(z, dim=-1, descending=False)
        cum = torch.softmax(sorted_z, dim=-1).cumsum(dim=-1)
        remove_sorted = cum <= 1 - top_p
        remove_sorted[..., -1] = False  # the most probable token always stays
        remove = remove_sorted.scatter(-1, order, remove_sorted)
        z = z.masked_fill(remove, float("-inf"))
    return torch.softmax(z, dim=-1)


def beam_search(next_log_probs: Callable[[torch.Tensor], torch.Tensor], prompt: torch.Tensor,
                num_beams: int, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Beam search without an end token.

    ``next_log_probs(seqs)`` maps int64 ``(n, L)`` sequences to ``(n, V)`` log-probabilities of
    the next token. ``prompt``: int64 ``(L,)``. Returns ``(sequences, scores)``: int64
    ``(num_beams, L + steps)`` and ``(num_beams,)`` sums of the generated tokens'
    log-probabilities, best first. Needs ``num_beams <= V``."""
    beams = prompt.reshape(1, -1)
    scores = torch.zeros(1, dtype=torch.float32)
    for _ in range(steps):
        logp = next_log_probs(beams)  # (n, V)
        V = logp.shape[-1]
        total = (scores.to(logp.dtype)[:, None] + logp).reshape(-1)
        top = torch.topk(total, num_beams)
        parent, token = top.indices // V, top.indices % V
        beams = torch.cat([beams[parent], token[:, None]], dim=1)
        scores = top.values
    return beams, scores


def distinct_n(sequences: list[list[int]], n: int) -> float:
    """Distinct-n: number of distinct n-grams / number of n-grams, over all sequences
    (each sequence's own n-grams only). 0.0 when there is no n-gram at all."""
    grams = [tuple(s[i:i + n]) for s in sequences for i in range(len(s) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def true_result(a: int, op: str, b: int) -> int:
    return {"+": a + b, "-": a - b, "*": a * b}[op]


def corrected(doc: str) -> str:
    """``doc`` with every stated result ``A op B = R`` replaced by the true one."""
    return PROBLEM.sub(lambda m: f"{m[1]} {m[2]} {m[3]} = {true_result(int(m[1]), m[2], int(m[3]))}", doc)


def math_verdicts(docs: list[str]) -> torch.Tensor:
    """int64 ``(len(docs),)``: 0 = in the language (correct), 1 = fluent but wrong (out of the
    language, but in it once every result is corrected), 2 = ungrammatical (out of the language
    even with the true results)."""
    out = []
    for doc in docs:
        if document_log_prob(doc) > float("-inf"):
            out.append(CORRECT)
        elif document_log_prob(corrected(doc)) > float("-inf"):
            out.append(HALLUCINATED)
        else:
            out.append(UNGRAMMATICAL)
    return torch.tensor(out, dtype=torch.int64)

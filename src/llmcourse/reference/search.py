"""Chapter 03: regularized evolution (Real et al., 2019), the search family Primer used, over
a small space of Transformer primitives, with every candidate trained for the SAME compute.

An architecture is a dict ``{knob: option}`` over :data:`SPACE` (the order of its keys is the
order the functions below draw in). The pieces learners write (exactly these, seeded):

* :func:`mutate` -- copy the parent, pick ONE knob uniformly, and give it a DIFFERENT option,
  uniformly among the others (``rng.randrange`` twice, in that order).
* :func:`tournament_select` -- sample ``sample_size`` members without replacement
  (``rng.sample``) and return the index of the one with the LOWEST score (ties: the first
  sampled).
* :func:`age_out` -- regularized evolution's ageing (老化): the child joins at the young end and
  the OLDEST member leaves, whatever its score (not the worst, as in plain tournament
  evolution), so that every architecture must keep being rediscovered to survive.
* :func:`equal_compute_steps` -- how many training steps a candidate gets from a FLOP budget:
  ``budget // (6-ish N per token x tokens per step)``, with FLOPs counted as chapter 07 counts
  them (matrix multiplications, 2 per multiply-add, backward = 2 x forward).

The score of a candidate is its held-out loss MINUS the corpus's entropy floor (nats per
byte): the part of the loss a better model could still remove.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Callable

from .modern import swiglu_hidden

from .search_space import KV_HEADS, N_HEAD, SPACE, VANILLA, arch_config, describe, random_arch  # noqa: F401

# ---------------------------------------------------------------------------------------
# The graded pieces

def mutate(arch: dict, space: dict, rng: random.Random) -> dict:
    """A copy of ``arch`` with one knob changed: knob ``keys[rng.randrange(len(keys))]``
    (keys in ``space``'s order), new option ``others[rng.randrange(len(others))]`` where
    ``others`` are the knob's options except the current one, in ``space``'s order.
    ``arch`` itself is not modified."""
    keys = list(space)
    key = keys[rng.randrange(len(keys))]
    others = [o for o in space[key] if o != arch[key]]
    child = dict(arch)
    child[key] = others[rng.randrange(len(others))]
    return child


def tournament_select(scores: list[float], sample_size: int, rng: random.Random) -> int:
    """Index of the best (lowest-score) member among ``rng.sample(range(len(scores)),
    sample_size)``; among equal scores the first sampled."""
    picked = rng.sample(range(len(scores)), sample_size)
    return min(picked, key=lambda i: scores[i])


def age_out(population: list, scores: list[float], child, child_score: float
            ) -> tuple[list, list[float]]:
    """Regularized evolution's update: append the child (youngest, at the end) and remove the
    OLDEST member (index 0). Returns new lists; the inputs are not modified."""
    return list(population[1:]) + [child], list(scores[1:]) + [child_score]


def train_flops_per_token(arch: dict, vocab_size: int = 256, seq_len: int = 64) -> int:
    """Training FLOPs per token of :func:`arch_config`'s model (chapter 07's convention:
    matrix multiplications only, 2 per multiply-add, backward = 2 x forward):

    per layer, forward: q and o projections 2 * 2 C^2; k and v projections 2 * 2 C (H_kv d_h);
    FFN 2 * m C F with m = 3 matrices (SwiGLU, F = swiglu_hidden(C)) or 2 (F = 4 C);
    attention 2 * 2 T C (QK^T and PV over the full T x T matrix). Plus the output layer 2 V C.
    Training = 3 x forward. RoPE, norms, softmax and the depthwise convolutions are
    elementwise work, not matmuls, and count zero (dconv adds 18 C FLOPs a token, < 1%)."""
    C, L, T = arch["n_embd"], arch["n_layer"], seq_len
    kv = KV_HEADS[arch["heads"]] * (C // N_HEAD)
    if arch["activation"] == "swiglu":
        mats, F = 3, swiglu_hidden(C)
    else:
        mats, F = 2, 4 * C
    per_layer = 2 * (2 * C * C + 2 * C * kv + mats * C * F) + 4 * T * C
    return 3 * (L * per_layer + 2 * vocab_size * C)


def equal_compute_steps(arch: dict, budget_flops: float, batch_size: int, block_size: int,
                        vocab_size: int = 256) -> int:
    """Training steps a candidate gets from ``budget_flops``: floor(budget / FLOPs per step),
    FLOPs per step = train_flops_per_token * batch_size * block_size; at least 1."""
    per_step = train_flops_per_token(arch, vocab_size, block_size) * batch_size * block_size
    return max(1, math.floor(budget_flops / per_step))


# ---------------------------------------------------------------------------------------
# The search loop

@dataclass
class SearchHistory:
    """Every candidate evaluated, in order: its architecture and score (``None`` if it broke
    the parameter cap and was not trained), and the population after each cycle."""

    archs: list[dict] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    population: list[dict] = field(default_factory=list)
    pop_scores: list[float] = field(default_factory=list)
    rng: random.Random | None = None

    @property
    def best(self) -> tuple[dict, float]:
        i = min(range(len(self.scores)), key=lambda j: self.scores[j])
        return self.archs[i], self.scores[i]


def regularized_evolution(evaluate: Callable[[dict], float], population_size: int,
                          sample_size: int, cycles: int, seed: int = 0, space: dict = SPACE,
                          fits: Callable[[dict], bool] = lambda a: True,
                          history: SearchHistory | None = None, init: list[dict] | None = None,
                          mutate_fn=mutate, select_fn=tournament_select, age_fn=age_out
                          ) -> SearchHistory:
    """Real et al.'s Algorithm 1. Fills a population of ``population_size`` (``init`` first,
    then random architectures that ``fits``), then runs ``cycles`` cycles: select a parent by
    tournament, mutate it (again until the child ``fits``, e.g. a parameter cap), evaluate the
    child, add it and age out the oldest. Resumable: pass the returned ``history`` back in to
    run more cycles (notebooks run the search a few cycles per cell)."""
    h = history or SearchHistory(rng=random.Random(seed))
    rng = h.rng
    while len(h.population) < population_size:
        k = len(h.population)
        if init and k < len(init):
            arch = init[k]  # given members join as they are
        else:
            arch = random_arch(space, rng)
            if not fits(arch):
                continue
        score = evaluate(arch)
        h.archs.append(arch), h.scores.append(score)
        h.population.append(arch), h.pop_scores.append(score)
    for _ in range(cycles):
        parent = h.population[select_fn(h.pop_scores, sample_size, rng)]
        child = mutate_fn(parent, space, rng)
        while not fits(child):
            child = mutate_fn(parent, space, rng)
        score = evaluate(child)
        h.archs.append(child), h.scores.append(score)
        h.population, h.pop_scores = age_fn(h.population, h.pop_scores, child, score)
    return h

"""search.ipynb: the graded pieces of regularized evolution: mutation, tournament selection,
ageing, and the compute-equalised number of training steps. All exact: a seeded search must
make the same decisions as the reference, and a step count is an integer.

Architectures hold strings, so the check compares what matters as numbers: a mutated
architecture as the index of each knob's option in the space (and the parent's, after the
call, to catch an in-place change).
"""

from __future__ import annotations

import math
import random

import torch

from ...reference import search as ref
from ...reference.modern import swiglu_hidden
from .. import calls, register
from ..core import Case, Exercise, Mistake
from ..kit import generator, knob

EXACT = dict(rtol=0.0, atol=0.0)
# The notebook's experiment trains candidates with the course's modern LM and trainer, over
# the space of reference.search_space (the graded parts are in reference.search: forbidden).
EXPERIMENT = ("modern", "training", "search_space")
SMALL_SPACE = {"activation": ["relu", "sq_relu"], "width": [16, 32, 48, 64],
               "dconv": [False, True]}


class _Seeded(Exercise):
    """The last positional argument of a case is a seed: the call passes random.Random(seed)."""

    call = calls.python_rng


# ---------------------------------------------------------------------------------------
# 03.mutate

def _mutate(arch, space, rng, *, same_ok=False, in_place=False, two=False):
    keys = list(space)
    child = arch if in_place else dict(arch)
    for _ in range(2 if two else 1):
        key = keys[rng.randrange(len(keys))]
        others = list(space[key]) if same_ok else [o for o in space[key] if o != child[key]]
        child[key] = others[rng.randrange(len(others))]
    return child


@register
class Mutate(_Seeded):
    id = "03.mutate"
    entry = "mutate"
    title = "Mutation: one knob, a different option"
    allow_reference = EXPERIMENT
    mistakes = (
        Mistake("can 'mutate' to the current option", "draw the new option among the OTHER options "
                "of the knob (leave the current one out of the list), so every child differs from "
                "its parent.", knob(_mutate, same_ok=True)),
        Mistake("parent modified in place", "copy the parent (dict(arch)) and change the copy: the "
                "parent stays in the population.", knob(_mutate, in_place=True)),
    )

    def reference(self, arch, space, rng):
        return ref.mutate(arch, space, rng)

    call = calls.mutate

    def cases(self, seed, hidden):
        r = random.Random(seed)
        cases = [Case("the vanilla GPT in the chapter's space", (dict(ref.VANILLA), ref.SPACE, seed), **EXACT),
                 Case("a small space", ({"activation": "relu", "width": 32, "dconv": True},
                                        SMALL_SPACE, seed + 1), **EXACT)]
        for i in range(6 if hidden else 2):
            arch = ref.random_arch(ref.SPACE, r)
            cases.append(Case(f"random architecture {i + 1}", (arch, ref.SPACE, seed + 10 + i), **EXACT))
        return cases


# ---------------------------------------------------------------------------------------
# 03.tournament_select

def _tournament(scores, sample_size, rng, *, how="min"):
    if how == "all":
        return min(range(len(scores)), key=lambda i: scores[i])
    picked = (rng.choices(range(len(scores)), k=sample_size) if how == "replace"
              else rng.sample(range(len(scores)), sample_size))
    if how == "first":
        return picked[0]
    if how == "max":
        return max(picked, key=lambda i: scores[i])
    return min(picked, key=lambda i: scores[i])


@register
class TournamentSelect(_Seeded):
    id = "03.tournament_select"
    entry = "tournament_select"
    title = "Tournament selection"
    allow_reference = EXPERIMENT
    mistakes = (
        Mistake("picked the highest score", "the score is a loss (validation loss above the floor): "
                "the tournament's winner has the LOWEST score.", knob(_tournament, how="max")),
        Mistake("the best of the whole population", "sample `sample_size` members first and pick "
                "the best among those only: the tournament is what keeps the search diverse.",
                knob(_tournament, how="all")),
        Mistake("sampled with replacement", "draw the sample with rng.sample (distinct members), "
                "not rng.choices.", knob(_tournament, how="replace")),
        Mistake("returned the first sampled member", "return the index of the best (lowest score) "
                "member of the sample.", knob(_tournament, how="first")),
    )

    def reference(self, scores, sample_size, rng):
        return ref.tournament_select(scores, sample_size, rng)

    def cases(self, seed, hidden):
        g = generator(seed)
        cases = []
        for i, (n, s) in enumerate([(10, 3), (6, 2), (20, 5), (8, 4)] + ([(30, 10), (5, 5), (12, 1),
                                                                          (40, 7)] if hidden else [])):
            scores = [round(float(x), 4) for x in torch.rand(n, generator=g, dtype=torch.float64)]
            cases.append(Case(f"{n} members, tournaments of {s}", (scores, s, seed + i), **EXACT))
        return cases


# ---------------------------------------------------------------------------------------
# 03.age_out

def _age(population, scores, child, child_score, *, remove="oldest", where="end"):
    pop, sc = list(population), list(scores)
    if remove == "oldest":
        pop, sc = pop[1:], sc[1:]
    elif remove in ("worst", "best"):
        i = (max if remove == "worst" else min)(range(len(sc)), key=lambda j: sc[j])
        del pop[i], sc[i]
    elif remove == "newest":
        pop, sc = pop[:-1], sc[:-1]
    if where == "end":
        return pop + [child], sc + [child_score]
    return [child] + pop, [child_score] + sc


@register
class AgeOut(Exercise):
    id = "03.age_out"
    entry = "age_out"
    title = "Ageing: the oldest leaves"
    allow_reference = EXPERIMENT
    mistakes = (
        Mistake("removed the worst instead of the oldest", "that is plain tournament evolution; "
                "REGULARIZED evolution removes the OLDEST member (index 0), whatever its score.",
                knob(_age, remove="worst")),
        Mistake("removed the best", "remove the oldest member (index 0).", knob(_age, remove="best")),
        Mistake("removed the newest member", "the population is ordered oldest first: remove index "
                "0, then append the child at the end.", knob(_age, remove="newest")),
        Mistake("child added at the old end", "the child is the YOUNGEST: append it at the end, so "
                "it is the last to age out.", knob(_age, where="start")),
        Mistake("nothing removed: the population grows", "remove the oldest member as the child "
                "joins, so the population keeps its size.", knob(_age, remove="none")),
    )

    def reference(self, population, scores, child, child_score):
        return ref.age_out(population, scores, child, child_score)

    def cases(self, seed, hidden):
        g = generator(seed)
        cases = []
        sizes = [5, 8, 3] + ([12, 2, 6] if hidden else [])
        for i, n in enumerate(sizes):
            scores = [round(float(x), 4) for x in torch.rand(n, generator=g, dtype=torch.float64)]
            members = [int(x) for x in torch.randperm(100, generator=g)[:n]]
            child_score = round(float(torch.rand(1, generator=g, dtype=torch.float64)), 4)
            cases.append(Case(f"population of {n}", (members, scores, 100 + i, child_score), **EXACT))
        return cases


# ---------------------------------------------------------------------------------------
# 03.equal_compute_steps

def _steps(arch, budget_flops, batch_size, block_size, vocab_size=256, *, backward=True,
           kv_full=False, swiglu_mats=3, attention=True, head=True, rounding=math.floor,
           swiglu_width=True):
    C, L, T = arch["n_embd"], arch["n_layer"], block_size
    kv = C if kv_full else ref.KV_HEADS[arch["heads"]] * (C // ref.N_HEAD)
    if arch["activation"] == "swiglu":
        mats, F = swiglu_mats, (swiglu_hidden(C) if swiglu_width else 4 * C)
    else:
        mats, F = 2, 4 * C
    per_layer = 2 * (2 * C * C + 2 * C * kv + mats * C * F) + (4 * T * C if attention else 0)
    fwd = L * per_layer + (2 * vocab_size * C if head else 0)
    per_step = (3 if backward else 1) * fwd * batch_size * block_size
    return max(1, int(rounding(budget_flops / per_step)))


@register
class EqualComputeSteps(Exercise):
    id = "03.equal_compute_steps"
    entry = "equal_compute_steps"
    title = "Training steps at equal compute"
    allow_reference = EXPERIMENT
    mistakes = (
        Mistake("forward FLOPs only", "training costs forward + backward = 3 x the forward's FLOPs.",
                knob(_steps, backward=False)),
        Mistake("key/value projections counted at full width", "with GQA/MQA k_proj and v_proj map "
                "C -> n_kv_head * d_head, not C -> C.", knob(_steps, kv_full=True)),
        Mistake("SwiGLU counted as two matrices", "SwiGLU has THREE matrices (gate, up, down).",
                knob(_steps, swiglu_mats=2)),
        Mistake("SwiGLU at width 4C", "a SwiGLU FFN is swiglu_hidden(C) wide (about 8C/3, a "
                "multiple of 8), so that it costs about what a 4C two-matrix FFN costs.",
                knob(_steps, swiglu_width=False)),
        Mistake("attention's T^2 term left out", "QK^T and PV cost 2 * 2 * T * C per token and layer "
                "(chapter 07's convention: the full T x T matrix).", knob(_steps, attention=False)),
        Mistake("output layer left out", "the output layer's matmul, 2 V C per token, counts (it is "
                "the largest single matrix of these small models).", knob(_steps, head=False)),
        Mistake("rounded instead of floored", "a candidate may not exceed the budget: "
                "floor(budget / FLOPs per step).", knob(_steps, rounding=round)),
        Mistake("rounded up", "floor(budget / FLOPs per step): rounding up spends more than the "
                "budget.", knob(_steps, rounding=math.ceil)),
    )

    def reference(self, arch, budget_flops, batch_size, block_size, vocab_size=256):
        return ref.equal_compute_steps(arch, budget_flops, batch_size, block_size, vocab_size)

    def cases(self, seed, hidden):
        r = random.Random(seed)
        V = ref.VANILLA

        def case(label, arch, budget, B=16, T=64, **kw):
            return Case(label, (arch, float(budget), B, T), kw, rtol=0.0, atol=0.5)

        cases = [
            case("the vanilla GPT (2 x 48, GELU, MHA), T = 32, 3e10 FLOPs", dict(V), 3e10, T=32),
            case("SwiGLU, GQA, 3 x 64", dict(V, activation="swiglu", heads="gqa", n_layer=3, n_embd=64), 5e10),
            case("MQA, squared ReLU, 1 x 32, vocab 100", dict(V, activation="sq_relu", heads="mqa",
                                                             n_layer=1, n_embd=32), 2e9, vocab_size=100),
            case("SwiGLU, MHA, 2 x 32, T = 128", dict(V, activation="swiglu", n_embd=32), 7.7e9, B=8, T=128),
            case("a budget below one step", dict(V), 1e5),
        ]
        if hidden:
            for i in range(5):
                arch = ref.random_arch(ref.SPACE, r)
                cases.append(case(f"random architecture {i + 1}", arch, r.uniform(1e9, 1e11),
                                  B=r.choice([4, 8, 16]), T=r.choice([32, 64, 128])))
        return cases

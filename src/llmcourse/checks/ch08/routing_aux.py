"""routing.ipynb, second part: the Switch Transformer's load-balancing loss and ST-MoE's router
z-loss, expert parallelism over simulated ranks, and the parameter, FLOP and memory counts
(the first part, the routers and the layers, is ``routing.py``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...reference import moe as ref
from .. import register
from ..core import Case, Exercise, Mistake
from ..kit import F32, F64, generator, knob, randn
from .routing import NO_HF

EXACT = dict(rtol=0.0, atol=0.5)


# ---------------------------------------------------------------------------------------
# 08.load_balancing and 08.z_loss

def _lb(router_logits, top_k, *, how="ref"):
    E = router_logits.shape[-1]
    probs = torch.softmax(router_logits, -1)
    _, chosen = torch.topk(probs, top_k, dim=-1)
    f = F.one_hot(chosen, E).sum(-2).to(probs.dtype).mean(0)
    P = probs.mean(0)
    if how == "soft":
        f = P
    if how == "first":
        f = F.one_hot(chosen[:, 0], E).to(probs.dtype).mean(0)
    if how == "counts":
        f = F.one_hot(chosen, E).sum(-2).to(probs.dtype).sum(0)
    return (f * P).sum() * (1 if how == "no N" else E)


@register
class LoadBalancing(Exercise):
    id = "08.load_balancing"
    entry = "load_balancing_loss"
    title = "The load-balancing loss N * sum_i f_i P_i"
    forbid = NO_HF
    mistakes = (
        Mistake("load-balancing loss with f_i from soft probabilities", "f_i is the fraction of "
                "assignments that the top-k actually SENT to expert i (hard counts, no "
                "gradient); only P_i, the mean router probability, is soft.", knob(_lb, how="soft")),
        Mistake("without the factor N", "multiply by the number of experts, so that perfectly "
                "balanced routing scores 1 whatever N is.", knob(_lb, how="no N")),
        Mistake("counts not normalised", "f_i is a FRACTION of the tokens: divide the counts by "
                "the number of tokens.", knob(_lb, how="counts")),
        Mistake("only the first choice counted", "with top-k routing every one of the k "
                "assignments of a token counts (f sums to k, as in Mixtral).", knob(_lb, how="first")),
    )

    def reference(self, router_logits, top_k):
        return ref.load_balancing_loss(router_logits, top_k)

    def cases(self, seed, hidden):
        g = generator(seed)

        def case(label, N, E, k, dtype=F32, scale=2.0):
            return Case(label, (randn(g, N, E, dtype=dtype, scale=scale), k))

        cases = [case("32 tokens, 4 experts, top-1", 32, 4, 1),
                 case("20 tokens, 6 experts, top-2", 20, 6, 2)]
        if hidden:
            cases += [case("float64, 8 experts, top-2", 50, 8, 2, F64),
                      case("one token", 1, 3, 1, F64),
                      case("nearly collapsed router", 16, 4, 1, scale=8.0)]
        return cases


def _z(router_logits, *, how="ref"):
    lse = torch.logsumexp(router_logits, -1)
    if how == "logits":
        return router_logits.pow(2).mean()
    if how == "no square":
        return lse.mean()
    if how == "sum":
        return lse.pow(2).sum()
    return ref.router_z_loss(router_logits)


@register
class ZLoss(Exercise):
    id = "08.z_loss"
    entry = "router_z_loss"
    title = "The router z-loss (ST-MoE)"
    forbid = NO_HF
    mistakes = (
        Mistake("squared logits instead of log-sum-exp", "the z-loss penalises log Z = "
                "logsumexp over the experts of each token's logits, squared.", knob(_z, how="logits")),
        Mistake("log-sum-exp not squared", "square each token's logsumexp before averaging.",
                knob(_z, how="no square")),
        Mistake("summed over tokens", "average over the tokens (every axis but the last).",
                knob(_z, how="sum")),
    )

    def reference(self, router_logits):
        return ref.router_z_loss(router_logits)

    def cases(self, seed, hidden):
        g = generator(seed)
        cases = [Case("2 x 5 tokens, 4 experts", (randn(g, 2, 5, 4, scale=2.0),))]
        if hidden:
            cases += [Case("flat 12 tokens, float64", (randn(g, 12, 8, dtype=F64),)),
                      Case("large logits", (randn(g, 3, 4, 6, scale=30.0),))]
        return cases


# ---------------------------------------------------------------------------------------
# 08.expert_parallel

def _ep(x_shards, expert_shards, gate_shards, w_in, w_out, *, how="ref"):
    outs, counts = ref.expert_parallel_forward(x_shards, expert_shards, gate_shards, w_in, w_out)
    R = len(x_shards)
    if how == "round robin":
        counts = torch.stack([torch.bincount(e % R, minlength=R) for e in expert_shards])
    if how == "transposed":
        counts = counts.T.contiguous()
    return outs, counts


@register
class ExpertParallel(Exercise):
    id = "08.expert_parallel"
    entry = "expert_parallel_forward"
    title = "Expert parallelism: two all-to-alls over simulated ranks"
    forbid = NO_HF
    mistakes = (
        Mistake("experts dealt round-robin", "rank r holds the block of experts "
                "r * E/R ... (r + 1) * E/R - 1: owner = expert // (E / R), not expert % R.",
                knob(_ep, how="round robin")),
        Mistake("receive counts instead of send counts", "send_counts[r, s] is what rank r SENDS "
                "to rank s (row = sender).", knob(_ep, how="transposed")),
    )

    def reference(self, x_shards, expert_shards, gate_shards, w_in, w_out):
        return ref.expert_parallel_forward(x_shards, expert_shards, gate_shards, w_in, w_out)

    def cases(self, seed, hidden):
        g = generator(seed)

        def case(label, sizes, E, C=4, H=6, dtype=F64):
            xs = [randn(g, n, C, dtype=dtype) for n in sizes]
            es = [torch.randint(0, E, (n,), generator=g) for n in sizes]
            gs = [torch.rand(n, generator=g, dtype=F64).to(dtype) for n in sizes]
            return Case(label, (xs, es, gs, randn(g, E, H, C, dtype=dtype, scale=C ** -0.5),
                                randn(g, E, C, H, dtype=dtype, scale=H ** -0.5)))

        cases = [case("2 ranks, 4 experts", [6, 5], 4)]
        if hidden:
            cases += [case("4 ranks, 8 experts, float32", [3, 7, 2, 5], 8, dtype=F32),
                      case("3 ranks, 6 experts", [4, 4, 4], 6),
                      case("2 ranks, 2 experts", [9, 1], 2)]
        return cases


# ---------------------------------------------------------------------------------------
# 08.moe_counts

def _counts(d_model, d_ff, n_experts, top_k, n_ranks=1, *, how="ref"):
    total, active, flops, per_rank = ref.moe_layer_counts(d_model, d_ff, n_experts, top_k, n_ranks)
    router = d_model * n_experts
    if how == "no router":
        return total - router, active - router, flops - 2 * router, per_rank - router
    if how == "all active":
        return total, total, 2 * (n_experts * 2 * d_model * d_ff + router), per_rank
    if how == "macs":
        return total, active, flops // 2, per_rank
    if how == "router split":
        return total, active, flops, total // n_ranks
    return total, active, flops, per_rank


@register
class MoECounts(Exercise):
    id = "08.moe_counts"
    entry = "moe_layer_counts"
    title = "Total vs active parameters, FLOPs per token, memory per rank"
    forbid = NO_HF
    mistakes = (
        Mistake("router forgotten", "the router is a C x E matrix that every token uses: it "
                "counts in the total, the active parameters, the FLOPs and on every rank.",
                knob(_counts, how="no router")),
        Mistake("every expert counted as active", "a token runs through only top_k experts: "
                "active = top_k experts + the router, and so are the FLOPs.",
                knob(_counts, how="all active")),
        Mistake("multiply-adds, not FLOPs", "a multiply-add is 2 FLOPs: 2 per weight of every "
                "matrix a token is multiplied with.", knob(_counts, how="macs")),
        Mistake("router split over ranks", "the experts are split over the ranks, but every "
                "rank routes its own tokens: the router is replicated on each.",
                knob(_counts, how="router split")),
    )

    def reference(self, d_model, d_ff, n_experts, top_k, n_ranks=1):
        return ref.moe_layer_counts(d_model, d_ff, n_experts, top_k, n_ranks)

    def cases(self, seed, hidden):
        g = generator(seed)

        def case(label, C, H, E, k, R):
            return Case(label, (C, H, E, k, R), **EXACT)

        cases = [case("Mixtral 8x7B sizes (C 4096, H 14336, 8 experts, top-2, 8 ranks)",
                      4096, 14336, 8, 2, 8),
                 case("tiny: C 64, H 256, 4 experts, top-1, 2 ranks", 64, 256, 4, 1, 2)]
        if hidden:
            r = lambda lo, hi: int(torch.randint(lo, hi, (1,), generator=g))  # noqa: E731
            cases += [case("Switch-like: 128 experts, top-1, 16 ranks", 768, 3072, 128, 1, 16),
                      case("random", 8 * r(1, 20), 16 * r(1, 20), 4, r(1, 3), 4),
                      case("one rank", 32, 64, 6, 2, 1)]
        return cases

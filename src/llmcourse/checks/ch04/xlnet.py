"""xlnet.ipynb: XLNet's permutation language modelling, the two-stream attention masks of a
factorisation order and the partial-prediction rule (reference: :mod:`...reference.xlnet`).

The public cases use orders that are not their own inverse (so reading ``z`` as ranks gives
other masks) and a reversed order (so a causal mask that ignores the order fails at once).
"""

from __future__ import annotations

import torch

from ...reference import xlnet as xlnet_ref
from .. import register
from ..core import Case, Exercise, Mistake, Rule
from ..kit import generator

NO_LIBRARIES = (
    Rule("transformers", "write it yourself instead of calling Hugging Face's code"),
)


def _order(g, T, B=None):
    """A random order (T,) or a batch of them (B, T) from the case generator ``g``."""
    if B is None:
        return torch.randperm(T, generator=g)
    return torch.stack([torch.randperm(T, generator=g) for _ in range(B)])


def _ranks(z, as_ranks):
    """The ranks of the order z; a learner who reads z itself as the ranks gets z back."""
    return z.clone() if as_ranks else xlnet_ref.factorisation_ranks(z)


# ---------------------------------------------------------------------------------------
# 04.xlnet_masks

def _masks_with(self_in_query=False, self_in_content=True, as_ranks=False, causal=False,
                transposed=False, blocked=False):
    def two_stream_masks(z):
        T = z.shape[-1]
        if causal:  # the order is ignored: the identity order's masks
            r = torch.arange(T).expand_as(z)
        else:
            r = _ranks(z, as_ranks)
        r_i, r_j = r.unsqueeze(-1), r.unsqueeze(-2)
        if transposed:
            r_i, r_j = r_j, r_i
        content = (r_j <= r_i) if self_in_content else (r_j < r_i)
        query = (r_j <= r_i) if self_in_query else (r_j < r_i)
        return (~content, ~query) if blocked else (content, query)
    return two_stream_masks


@register
class XLNetMasks(Exercise):
    """XLNet's content-stream and query-stream masks of a factorisation order."""
    id = "04.xlnet_masks"
    entry = "two_stream_masks"
    forbid = NO_LIBRARIES
    mistakes = (
        Mistake("query stream sees itself", "the query stream predicts the token at z_t, so it must "
                "not see that token: query[i, j] = rank[j] < rank[i] (strict); only the content "
                "stream includes j = i.", _masks_with(self_in_query=True)),
        Mistake("content stream does not see itself", "the content stream h carries the token's "
                "own content: content[i, j] = rank[j] <= rank[i], the diagonal included.",
                _masks_with(self_in_content=False)),
        Mistake("z read as ranks (order inverted)", "z[t] is the POSITION predicted t-th; the rank "
                "of position p is the t with z[t] = p (the inverse permutation: rank[z] = "
                "arange(T)), not z[p].", _masks_with(as_ranks=True)),
        Mistake("causal mask that ignores the order", "the masks follow the factorisation order "
                "z, not the positions: position i sees j when j comes EARLIER IN z, whatever "
                "their positions.", _masks_with(causal=True)),
        Mistake("mask transposed", "mask[i, j] is about query i (row) and key j (column): row i "
                "holds the keys that come before i in the order.", _masks_with(transposed=True)),
        Mistake("True = blocked (Hugging Face's perm_mask convention)", "the course's masks are "
                "True where attention is ALLOWED; Hugging Face's perm_mask is the opposite (1 = "
                "may not attend).", _masks_with(blocked=True)),
    )

    def reference(self, z):
        return xlnet_ref.two_stream_masks(z)

    def cases(self, seed, hidden):
        g = generator(seed)
        cases = [
            Case("T=5, z = [2, 4, 0, 1, 3]", (torch.tensor([2, 4, 0, 1, 3]),)),
            Case("T=4, the reversed order", (torch.tensor([3, 2, 1, 0]),)),
            Case("batch of 3 random orders, T=7", (_order(g, 7, 3),)),
        ]
        if hidden:
            cases += [
                Case("T=1", (torch.tensor([0]),)),
                Case("T=2, batch of both orders", (torch.tensor([[0, 1], [1, 0]]),)),
                Case("batch of 5 random orders, T=16", (_order(g, 16, 5),)),
                Case("one random order, T=30", (_order(g, 30),)),
            ]
        return cases


# ---------------------------------------------------------------------------------------
# 04.xlnet_partial

def _partial_with(shift=0, first_k=False, target_rank_as_position=False, context_rule=True,
                  self_in_query=False):
    def partial_prediction(z, num_predict):
        T = z.shape[-1]
        r = xlnet_ref.factorisation_ranks(z)
        c = T - num_predict - shift
        r_i, r_j = r.unsqueeze(-1), r.unsqueeze(-2)
        ctx = (r_j < c) if context_rule else torch.zeros_like(r_j < c)
        content = (r_j <= r_i) | ctx
        query = ((r_j <= r_i) if self_in_query else (r_j < r_i)) | ctx
        if first_k:
            targets = r < num_predict
        elif target_rank_as_position:  # the last positions, not the last of the order
            targets = (torch.arange(T) >= c).expand_as(z).clone()
        else:
            targets = r >= c
        return content, query, targets
    return partial_prediction


@register
class XLNetPartial(Exercise):
    """XLNet's partial prediction: the last K of the order are the targets."""
    id = "04.xlnet_partial"
    entry = "partial_prediction"
    forbid = NO_LIBRARIES
    mistakes = (
        Mistake("one target too many", "the targets are the LAST num_predict of the order: the "
                "context is z[:c] with c = T - num_predict, so rank >= c is a target (not "
                "rank >= c - 1).", _partial_with(shift=1)),
        Mistake("one target too few", "c = T - num_predict: exactly num_predict positions are "
                "targets (rank >= c, not rank > c).", _partial_with(shift=-1)),
        Mistake("first K of the order predicted", "XLNet predicts the END of the order, where the "
                "most context is available: the targets are z[c:], not z[:num_predict].",
                _partial_with(first_k=True)),
        Mistake("last K positions, not last K of the order", "the targets are the positions "
                "z[c:], the last of the FACTORISATION ORDER, not the positions T - K .. T - 1 of "
                "the sequence.", _partial_with(target_rank_as_position=True)),
        Mistake("context keys hidden from the context", "a context key (rank[j] < c) is visible "
                "to every query, so the context reads itself in both directions: or the order's "
                "masks with rank[j] < c.", _partial_with(context_rule=False)),
        Mistake("query stream sees itself", "a target's query stream must not see its own token: "
                "query[i, j] = rank[j] < rank[i] or rank[j] < c.", _partial_with(self_in_query=True)),
    )

    def reference(self, z, num_predict):
        return xlnet_ref.partial_prediction(z, num_predict)

    def cases(self, seed, hidden):
        g = generator(seed)
        cases = [
            Case("T=6, z = [3, 0, 5, 1, 4, 2], K=2", (torch.tensor([3, 0, 5, 1, 4, 2]), 2)),
            Case("batch of 3 random orders, T=8, K=3", (_order(g, 8, 3), 3)),
            Case("T=5, z = [4, 2, 0, 3, 1], K=1", (torch.tensor([4, 2, 0, 3, 1]), 1)),
        ]
        if hidden:
            cases += [
                Case("K = T: every token a target", (_order(g, 6, 2), 6)),
                Case("batch of 4 random orders, T=20, K=7", (_order(g, 20, 4), 7)),
                Case("one random order, T=12, K=11", (_order(g, 12), 11)),
            ]
        return cases

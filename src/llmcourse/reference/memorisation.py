"""Chapter 10: memorisation (记忆) and membership inference (成员推断).

Conventions (the book states them the same way):

* Exposure (Carlini et al. 2019, "The Secret Sharer"): a canary ``s[r]`` is a fixed format with a
  random part ``r`` from a space ``R``. Rank all candidates of ``R`` by the model's negative
  log-likelihood, lowest first; ``rank(s[r]) = 1 + #{r' in R : nll(r') < nll(r)}`` (ties do not
  count against the canary), and ``exposure = log2 |R| - log2 rank``. A canary the model prefers
  to every other candidate has exposure ``log2 |R|``; an unremarkable one about 1.
* ROC AUC of a membership score (higher = "member"): the probability that a random member scores
  higher than a random non-member, ties counting one half. Equals the Mann-Whitney U statistic
  over ``n_members * n_non_members``, computed here from average ranks.

Verified in ``tests/test_reference_ch10.py`` against closed forms, brute force over all pairs,
and scikit-learn's ``roc_auc_score`` when it is installed.
"""

from __future__ import annotations

import math

import torch


def exposure(canary_nll: torch.Tensor, space_nll: torch.Tensor) -> torch.Tensor:
    """float64 ``(C,)``: exposure of each of ``C`` canaries. ``canary_nll`` ``(C,)``;
    ``space_nll`` ``(C, R)``: the NLL of every candidate of canary c's space (the canary among
    them)."""
    rank = 1 + (space_nll < canary_nll[:, None]).sum(-1)
    return math.log2(space_nll.shape[-1]) - torch.log2(rank.double())


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """float64 ranks 1..n of ``x`` (n,), ties sharing the mean of their ranks."""
    xs = x.double()
    less = (xs[None, :] < xs[:, None]).sum(-1).double()
    equal = (xs[None, :] == xs[:, None]).sum(-1).double()
    return less + (equal + 1) / 2


def roc_auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """ROC AUC of ``scores`` (n,) for binary ``labels`` (n,) (1 = member); Python float."""
    pos = labels.bool()
    n1, n0 = int(pos.sum()), int((~pos).sum())
    if n1 == 0 or n0 == 0:
        raise ValueError("the AUC needs at least one member and one non-member")
    r = average_ranks(scores)
    return ((r[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0)).item()

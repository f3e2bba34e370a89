"""Chapter 04: XLNet's permutation language modelling (排列语言模型), the attention masks.

XLNet (Yang et al., 2019) never shuffles its input. It samples a **factorisation order**
``z``, a permutation of the positions ``0..T-1``, and predicts the tokens in that order:
``p(x) = prod_t p(x[z[t]] | x[z[0]], ..., x[z[t-1]])``. Every token keeps its position (and
its positional encoding); only *who may attend to whom* changes, and that is a mask.

``z[t]`` is the position predicted t-th; ``rank[p]`` (the inverse permutation) is when
position ``p`` comes in the order. Two attention streams:

* the **content stream** (内容流) ``h``: position i sees every j with rank[j] <= rank[i]
  (itself included), like an ordinary causal LM in the permuted order;
* the **query stream** (查询流) ``g``: position i sees every j with rank[j] < rank[i], not
  itself: it knows *where* it predicts (its position) but not *what* (its token).

**Partial prediction** (部分预测): only the last K tokens of the order are predicted (the
targets); the first c = T - K of the order are context. As in XLNet's code and in Hugging
Face's ``DataCollatorForPermutationLanguageModeling``, the context keys are visible to every
query, so the context reads itself bidirectionally (and never sees a target).

Masks are bool, True = query i (row) may attend to key j (column), the course's convention
(``reference.attention``). Hugging Face's XLNet takes the opposite: ``perm_mask[b, i, j] = 1``
means i may NOT attend to j, and it is the query stream's mask (the model derives the content
stream by letting every position see itself); :func:`hf_inputs` converts.
"""

from __future__ import annotations

import torch


def factorisation_ranks(z: torch.Tensor) -> torch.Tensor:
    """The inverse permutation: rank[..., z[..., t]] = t. z: (T,) or (B, T) int64."""
    rank = torch.empty_like(z)
    t = torch.arange(z.shape[-1], device=z.device).expand_as(z)
    return rank.scatter_(-1, z, t)


def two_stream_masks(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(content, query) bool masks of the factorisation order z, True = may attend.

    z: (T,) or (B, T) int64, each row a permutation of 0..T-1 (z[t] = the position predicted
    t-th). Returns two (T, T) or (B, T, T) bool masks: content[i, j] = rank[j] <= rank[i],
    query[i, j] = rank[j] < rank[i] (the query stream never sees its own position's token).
    """
    rank = factorisation_ranks(z)
    r_i, r_j = rank.unsqueeze(-1), rank.unsqueeze(-2)
    return r_j <= r_i, r_j < r_i


def partial_prediction(z: torch.Tensor, num_predict: int
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(content, query, targets) with only the last ``num_predict`` tokens of the order predicted.

    z: (T,) or (B, T) int64 permutations; 1 <= num_predict <= T. With c = T - num_predict,
    a key j in the context (rank[j] < c) is visible to every query, in both streams:
    content[i, j] = rank[j] <= rank[i] or rank[j] < c; query[i, j] = rank[j] < rank[i] or
    rank[j] < c. targets: (T,) or (B, T) bool, True at the positions z[c:], the predicted ones.
    num_predict = T gives :func:`two_stream_masks` and every position a target.
    """
    rank = factorisation_ranks(z)
    c = z.shape[-1] - num_predict
    r_i, r_j = rank.unsqueeze(-1), rank.unsqueeze(-2)
    context_key = r_j < c
    return (r_j <= r_i) | context_key, (r_j < r_i) | context_key, rank >= c


def hf_inputs(z: torch.Tensor, num_predict: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Hugging Face XLNet's ``(perm_mask, target_mapping)`` for the order z (B, T).

    perm_mask: (B, T, T) float, 1 where the QUERY stream may not attend (``~query``).
    target_mapping: (B, num_predict, T) float, row k one-hot at z[:, c + k], the k-th target
    in the factorisation order.
    """
    _, query, _ = partial_prediction(z, num_predict)
    c = z.shape[-1] - num_predict
    mapping = torch.nn.functional.one_hot(z[:, c:], z.shape[-1]).float()
    return (~query).float(), mapping

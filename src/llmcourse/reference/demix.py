"""Chapter 08: DEMix layers (Gururangan et al., 2021): one feed-forward expert per domain.

Training routes every sequence of domain d through expert d only (attention, embeddings and
norms are shared). At inference the domain is unknown: each expert path scores the prefix,
and Bayes' rule turns those likelihoods into a domain posterior,

    p(d | x_<t) = p(x_<t | d) p(d) / sum_d' p(x_<t | d') p(d'),
    p(x_<t | d) = prod_{s<t} p_d(x_s | x_<s),

computed in log space (a product of a few hundred probabilities underflows even in float64).
The next-token distribution is the posterior-weighted mixture of the experts' distributions,
``p(x_t | x_<t) = sum_d p(d | x_<t) p_d(x_t | x_<t)``. The prior p(d) is the paper's *cached
prior*: estimated from a few held-out sequences and updated as an exponential moving average,
``prior <- decay * prior + (1 - decay) * mean posterior`` (this course's convention: ``decay``
weighs the old prior, the mean is over the sequences' final posteriors).

Modularity: a new domain gets a new expert, a copy of the existing expert its data finds most
probable, trained on that domain while everything else stays frozen; removing a domain deletes
its expert and renormalises the prior.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def domain_posterior(token_log_probs: torch.Tensor, log_prior: torch.Tensor) -> torch.Tensor:
    """token_log_probs (D, B, T): log p_d(x_t | x_<t) along each expert path; log_prior (D,).

    Returns (B, T, D): p(d | x_<t), the posterior *before* token t is seen (position 0 gets the
    prior), each row summing to one."""
    seen = token_log_probs.cumsum(dim=-1) - token_log_probs  # sum over s < t
    joint = seen + log_prior[:, None, None]
    return torch.softmax(joint, dim=0).permute(1, 2, 0)


def update_prior(prior: torch.Tensor, posterior: torch.Tensor, decay: float) -> torch.Tensor:
    """prior (D,), posterior (N, D) of N held-out sequences -> the new prior (D,):
    decay * prior + (1 - decay) * posterior.mean(0)."""
    return decay * prior + (1.0 - decay) * posterior.mean(dim=0)


def mixture_log_probs(expert_logits: torch.Tensor, posterior: torch.Tensor) -> torch.Tensor:
    """expert_logits (D, B, T, V), posterior (B, T, D) -> log of the mixture (B, T, V):
    log sum_d p(d | x_<t) softmax(logits_d), by logsumexp (no underflow)."""
    logp = F.log_softmax(expert_logits, dim=-1)  # (D, B, T, V)
    log_w = posterior.permute(2, 0, 1).log()[..., None]  # (D, B, T, 1)
    return torch.logsumexp(logp + log_w, dim=0)


def gelu_mlp(x: torch.Tensor, w_fc, b_fc, w_proj, b_proj) -> torch.Tensor:
    """GPT-2's MLP (tanh GELU): x (..., C), w_fc (H, C), b_fc (H,), w_proj (C, H), b_proj (C,)."""
    return F.gelu(x @ w_fc.T + b_fc, approximate="tanh") @ w_proj.T + b_proj


def domain_routed_ffn(x: torch.Tensor, domains: torch.Tensor, w_fc, b_fc, w_proj, b_proj
                      ) -> torch.Tensor:
    """The DEMix layer at training time: x (B, T, C), domains (B,) int64; every sequence goes
    through its domain's expert only. Expert weights are stacked: w_fc (D, H, C), b_fc (D, H),
    w_proj (D, C, H), b_proj (D, C). Returns (B, T, C)."""
    out = torch.zeros_like(x)
    for d in domains.unique().tolist():
        rows = domains == d
        out[rows] = gelu_mlp(x[rows], w_fc[d], b_fc[d], w_proj[d], b_proj[d])
    return out


def add_expert(expert_weights: list[torch.Tensor], posterior: torch.Tensor) -> list[torch.Tensor]:
    """Add a new domain's expert: every tensor (D, ...) -> (D + 1, ...), the old experts
    unchanged in place 0..D-1 and the new one a copy of the expert with the largest posterior
    ``posterior`` (D,) on the new domain's held-out data."""
    src = int(posterior.argmax())
    return [torch.cat([w, w[src:src + 1].clone()]) for w in expert_weights]


def remove_expert(expert_weights: list[torch.Tensor], prior: torch.Tensor, d: int
                  ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Remove domain ``d``: its expert from every tensor (D, ...) and its entry from the prior
    (D,), the remaining prior renormalised to sum to one."""
    keep = [i for i in range(len(prior)) if i != d]
    new_prior = prior[keep]
    return [w[keep] for w in expert_weights], new_prior / new_prior.sum()

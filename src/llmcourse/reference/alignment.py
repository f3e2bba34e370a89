"""Chapter 10: alignment after pre-training -- Direct Preference Optimization (DPO).

Given a prompt x and two completions, the preferred y_w ("chosen") and the other y_l
("rejected"), DPO (Rafailov et al. 2023) trains the policy pi_theta against a frozen
reference model pi_ref with

    L = -log sigmoid( beta * [ (log pi_theta(y_w|x) - log pi_ref(y_w|x))
                              - (log pi_theta(y_l|x) - log pi_ref(y_l|x)) ] ),

averaged over the pairs. ``beta * log(pi_theta / pi_ref)`` is the *implicit reward*; the loss
is the Bradley-Terry likelihood of the preference under it, so its minimiser is the policy
that RLHF's KL-regularised objective (reward - beta * KL(pi || pi_ref)) would reach, without
training a reward model or sampling during training.

A sequence's log-probability is the SUM of its completion tokens' log-probabilities (prompt
tokens and padding are masked out): :func:`sequence_logprob`. :func:`sample` draws
completions from a course GPT with a KV cache.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sequence_logprob(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor
                     ) -> torch.Tensor:
    """sum_t mask[b, t] * log softmax(logits[b, t])[targets[b, t]]: (B, T, V), (B, T), (B, T)
    bool -> (B,) in the logits' dtype. ``logits[b, t]`` predicts ``targets[b, t]``."""
    logp = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (logp * mask.to(logp.dtype)).sum(-1)


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
             ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, beta: float = 0.1
             ) -> torch.Tensor:
    """Mean DPO loss over pairs from (B,) sequence log-probabilities (see the module
    docstring). ``-log sigmoid(h) = softplus(-h)``, stable for any margin h."""
    h = beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))
    return F.softplus(-h).mean()


@torch.no_grad()
def sample(model, prompt: torch.Tensor, n: int, max_new_tokens: int, generator: torch.Generator,
           temperature: float = 1.0, stop: int = 10) -> torch.Tensor:
    """``n`` completions of ``prompt`` (1-D ids) sampled from a course GPT: (n, max_new_tokens)
    ids; after a sequence emits ``stop`` (newline) the rest of its row is ``stop`` too."""
    was_training = model.training
    model.eval()
    idx = prompt.unsqueeze(0).expand(n, -1)
    limit = model.config.block_size - prompt.numel()
    steps = min(max_new_tokens, limit)
    out = torch.full((n, max_new_tokens), stop, dtype=torch.long)
    done = torch.zeros(n, dtype=torch.bool)
    past, fresh = None, idx
    for t in range(steps):
        logits, past = model(fresh, past, use_cache=True)
        probs = torch.softmax(logits[:, -1].double() / temperature, dim=-1)
        nxt = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        nxt = torch.where(done, torch.full_like(nxt, stop), nxt)
        out[:, t] = nxt
        done |= nxt == stop
        if done.all():
            break
        fresh = nxt[:, None]
    model.train(was_training)
    return out


def completion_batch(prompt: torch.Tensor, completions: torch.Tensor, stop: int = 10
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs (B, P + L - 1), targets and the completion mask for scoring ``completions``
    (B, L) after ``prompt`` (P,): the mask covers each completion up to and including its
    first ``stop`` token."""
    B, L = completions.shape
    full = torch.cat([prompt.unsqueeze(0).expand(B, -1), completions], dim=1)
    x, y = full[:, :-1], full[:, 1:]
    P = prompt.numel()
    pos = torch.arange(L)
    first_stop = torch.where(completions == stop, pos, L).amin(1)  # (B,)
    keep = pos[None, :] <= first_stop[:, None]
    mask = torch.zeros_like(y, dtype=torch.bool)
    mask[:, P - 1:] = keep
    return x, y, mask


def completion_logprob(model, prompt: torch.Tensor, completions: torch.Tensor) -> torch.Tensor:
    """(B,) log-probability of each completion given the prompt under ``model``."""
    x, y, mask = completion_batch(prompt, completions)
    return sequence_logprob(model(x), y, mask)

"""alignment.ipynb: a completion's log-probability and the DPO loss (Rafailov et al. 2023)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...reference import alignment as ref
from .. import register
from ..core import Case, Exercise, Mistake
from ..kit import F32, F64, generator, randn

# The notebook samples and trains with the course's GPT and trainer helpers.
TRAINER = ("training", "gpt")


# ---------------------------------------------------------------------------------------
# 10.sequence_logprob

def _tok_logp(logits, targets):
    return torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def _slp_mean(logits, targets, mask):
    m = mask.to(logits.dtype)
    return (_tok_logp(logits, targets) * m).sum(-1) / m.sum(-1).clamp_min(1)


def _slp_no_mask(logits, targets, mask):
    return _tok_logp(logits, targets).sum(-1)


def _slp_raw_logits(logits, targets, mask):
    return (logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) * mask.to(logits.dtype)).sum(-1)


def _slp_probs(logits, targets, mask):
    p = torch.softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (p * mask.to(logits.dtype)).sum(-1)


@register
class SequenceLogprob(Exercise):
    """Sum of the completion tokens' log-probabilities."""

    id = "10.sequence_logprob"
    entry = "sequence_logprob"
    allow_reference = TRAINER
    mistakes = (
        Mistake("averaged over the tokens instead of summed", "log p(y | x) of a sequence is the "
                "SUM of its tokens' log-probabilities (a product of probabilities); DPO compares "
                "sequence probabilities.", _slp_mean),
        Mistake("mask ignored (prompt and padding counted)", "multiply each token's "
                "log-probability by the mask: only the completion's tokens count.", _slp_no_mask),
        Mistake("raw logits instead of log-probabilities", "take log_softmax over the vocabulary "
                "first; a logit is a log-probability only up to the row's log-normaliser.",
                _slp_raw_logits),
        Mistake("summed probabilities, not log-probabilities", "sum log p, not p.", _slp_probs),
    )

    def reference(self, logits, targets, mask):
        return ref.sequence_logprob(logits, targets, mask)

    def cases(self, seed, hidden):
        g = generator(seed)

        def case(label, B, T, V, dtype=F32, prompt=2):
            logits = randn(g, B, T, V, dtype=dtype, scale=2.0)
            targets = torch.randint(0, V, (B, T), generator=g)
            lengths = torch.randint(1, T - prompt + 1, (B,), generator=g)
            pos = torch.arange(T)
            mask = (pos >= prompt) & (pos < prompt + lengths[:, None])
            return Case(label, (logits, targets, mask))

        cases = [case("(B, T, V) = (3, 8, 10), prompt of 2", 3, 8, 10),
                 case("(2, 12, 256), prompt of 5", 2, 12, 256, prompt=5),
                 case("float64 (4, 6, 7)", 4, 6, 7, dtype=F64)]
        if hidden:
            cases += [case("one sequence (1, 5, 3), no prompt", 1, 5, 3, prompt=0),
                      case("(6, 20, 30), prompt of 10", 6, 20, 30, prompt=10),
                      case("float64 (2, 4, 256), prompt of 3", 2, 4, 256, dtype=F64, prompt=3)]
        return cases


# ---------------------------------------------------------------------------------------
# 10.dpo_loss

def _margin(pc, pr, rc, rr, beta):
    return beta * ((pc - rc) - (pr - rr))


def _dpo_ref_flipped(pc, pr, rc, rr, beta=0.1):
    return F.softplus(-beta * ((pc + rc) - (pr + rr))).mean()


def _dpo_swapped(pc, pr, rc, rr, beta=0.1):
    return F.softplus(_margin(pc, pr, rc, rr, beta)).mean()


def _dpo_no_beta(pc, pr, rc, rr, beta=0.1):
    return F.softplus(-_margin(pc, pr, rc, rr, 1.0)).mean()


def _dpo_beta_outside(pc, pr, rc, rr, beta=0.1):
    return beta * F.softplus(-_margin(pc, pr, rc, rr, 1.0)).mean()


def _dpo_no_reference(pc, pr, rc, rr, beta=0.1):
    return F.softplus(-beta * (pc - pr)).mean()


def _dpo_linear(pc, pr, rc, rr, beta=0.1):
    return (-_margin(pc, pr, rc, rr, beta)).mean()


def _dpo_sum(pc, pr, rc, rr, beta=0.1):
    return F.softplus(-_margin(pc, pr, rc, rr, beta)).sum()


def _dpo_log_sigmoid_naive(pc, pr, rc, rr, beta=0.1):
    return -torch.log(torch.sigmoid(_margin(pc, pr, rc, rr, beta))).mean()


@register
class DPOLoss(Exercise):
    """The DPO loss from sequence log-probabilities."""

    id = "10.dpo_loss"
    entry = "dpo_loss"
    allow_reference = TRAINER
    mistakes = (
        Mistake("reference log-ratio sign flipped", "the implicit reward is beta * (log pi_theta "
                "- log pi_ref): SUBTRACT the reference's log-probability of each completion. "
                "Adding it rewards the policy for what the reference already prefers.",
                _dpo_ref_flipped),
        Mistake("chosen and rejected swapped", "the loss -log sigmoid(beta * (reward margin of "
                "CHOSEN over rejected)) falls as the policy prefers the chosen completion.",
                _dpo_swapped),
        Mistake("beta missing", "multiply the log-ratio margin by beta inside the sigmoid: beta "
                "sets how far the policy may move from the reference.", _dpo_no_beta),
        Mistake("beta outside the log-sigmoid", "beta scales the margin INSIDE: "
                "-log sigmoid(beta * margin), not beta * -log sigmoid(margin).", _dpo_beta_outside),
        Mistake("reference model left out", "DPO's margin is between log-RATIOS to the frozen "
                "reference: (pi_c - ref_c) - (pi_r - ref_r).", _dpo_no_reference),
        Mistake("no log-sigmoid (linear loss)", "the loss is -log sigmoid(h), which saturates "
                "once a pair is learned; -h grows without bound.", _dpo_linear),
        Mistake("summed over pairs", "average the loss over the pairs.", _dpo_sum),
        Mistake("log of sigmoid underflows", "-log(sigmoid(h)) is inf in float32 for h below "
                "about -104; use F.logsigmoid(h) or F.softplus(-h).", _dpo_log_sigmoid_naive),
    )

    def reference(self, policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1):
        return ref.dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)

    def cases(self, seed, hidden):
        g = generator(seed)

        def logps(B, dtype, scale=20.0):
            return tuple(-(randn(g, B, dtype=F64, scale=scale).abs() + 5.0).to(dtype)
                         for _ in range(4))

        big = logps(3, F32, scale=1.0)
        big = (big[0] - 300.0, big[1], big[2], big[3])  # margin about -300 * beta
        cases = [Case("8 pairs, beta = 0.1", logps(8, F32), {"beta": 0.1}),
                 Case("float64, 5 pairs, beta = 0.5", logps(5, F64), {"beta": 0.5}),
                 Case("policy = reference: loss log 2", (lambda a, b: (a, b, a.clone(), b.clone()))(
                     *logps(4, F32)[:2]), {"beta": 0.3}),
                 Case("16 pairs, beta = 1", logps(16, F32, scale=3.0), {"beta": 1.0}),
                 Case("float32, huge negative margin (beta = 1)", big, {"beta": 1.0})]
        if hidden:
            cases += [Case("one pair, beta = 0.05", logps(1, F32), {"beta": 0.05}),
                      Case("float64, margin about -3000, beta = 0.5",
                           (lambda a, b, c, d: (a - 3000.0, b, c, d))(*logps(2, F64)), {"beta": 0.5}),
                      Case("float64, 32 pairs, beta = 2", logps(32, F64, scale=5.0), {"beta": 2.0})]
        return cases

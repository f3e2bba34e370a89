"""experiment.ipynb: dense vs DEMix vs sparse routing at equal active compute, scored by the
excess loss over the exact log-probability of every test text."""

from __future__ import annotations

import torch

from .. import register
from ..core import Case, Exercise, Mistake, Rule
from ..kit import F32, F64, generator, knob

NO_HF = (Rule("transformers", "write it yourself instead of calling Hugging Face's code"),)


def _excess(token_log_probs, mask, exact_log_probs, domains, n_domains, *, how="ref"):
    m = mask.to(token_log_probs.dtype)
    nll = -(token_log_probs * m).sum(-1)  # (B,)
    chars = m.sum(-1)
    if how == "padding":
        nll, chars = -token_log_probs.sum(-1), torch.full_like(chars, mask.shape[-1])
    gap = nll + (0 if how == "no floor" else exact_log_probs)
    out = torch.zeros(n_domains, dtype=torch.float64)
    for d in range(n_domains):
        sel = domains == d
        if how == "per doc":
            out[d] = (gap[sel] / chars[sel]).mean()
        else:
            out[d] = gap[sel].sum() / chars[sel].sum()
    return out


@register
class ExcessPerChar(Exercise):
    id = "08.excess_per_char"
    entry = "excess_per_char"
    title = "Loss above the exact log-probability, per domain"
    forbid = NO_HF
    allow_reference = ("training", "gpt", "expert_models", "demix", "moe")
    mistakes = (
        Mistake("floor not subtracted", "the excess is the model's NLL MINUS the text's exact "
                "NLL, -log p(text) = -exact_log_probs.", knob(_excess, how="no floor")),
        Mistake("per-document average", "pool the domain's documents: total excess nats over "
                "total characters (a short document must not weigh as much as a long one).",
                knob(_excess, how="per doc")),
        Mistake("padding counted", "only positions where mask is True are characters of a "
                "text: mask the log-probabilities and count the mask.", knob(_excess, how="padding")),
    )

    def reference(self, token_log_probs, mask, exact_log_probs, domains, n_domains):
        return _excess(token_log_probs, mask, exact_log_probs, domains, n_domains)

    def cases(self, seed, hidden):
        g = generator(seed)

        def case(label, B, T, D, dtype=F32):
            lengths = torch.randint(T // 3, T + 1, (B,), generator=g)
            mask = torch.arange(T)[None, :] < lengths[:, None]
            lp = (-torch.rand(B, T, generator=g, dtype=F64) * 2).to(dtype)  # padding too: garbage
            exact = -(torch.rand(B, generator=g, dtype=F64) * 0.3 + 0.1) * lengths
            domains = torch.arange(B) % D
            return Case(label, (lp, mask, exact, domains, D), rtol=1e-5, atol=1e-6)

        cases = [case("6 texts, 3 domains", 6, 20, 3)]
        if hidden:
            cases += [case("10 texts, 4 domains, float64", 10, 33, 4, F64),
                      case("one domain", 4, 12, 1)]
        return cases

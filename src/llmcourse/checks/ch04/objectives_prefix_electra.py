"""objectives.ipynb, second half: the prefix-LM mask and ELECTRA's sampling and joint loss
(the first half, GPT's and BERT's objectives, is in :mod:`.objectives`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...reference import pretraining as pretraining_ref
from .. import register
from ..core import Case, Exercise, Mistake
from ..kit import F32, F64, SeededExercise, draw_seed, generator, randn
from .objectives import IGN, NO_LIBRARIES, _ce


# ---------------------------------------------------------------------------------------
# 04.prefix_lm_mask

def _prefix_transposed(T, prefix_len):
    return pretraining_ref.prefix_lm_mask(T, prefix_len).transpose(-2, -1)


def _prefix_rows(T, prefix_len):
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    return (j <= i)[None] | (i[None] < prefix_len[:, None, None])


def _prefix_off_by_one(T, prefix_len):
    return pretraining_ref.prefix_lm_mask(T, (prefix_len + 1).clamp(max=T))


def _prefix_causal(T, prefix_len):
    return torch.ones(T, T, dtype=torch.bool).tril().expand(len(prefix_len), T, T).clone()


@register
class PrefixLMMask(Exercise):
    """Prefix-LM attention mask."""
    id = "04.prefix_lm_mask"
    entry = "prefix_lm_mask"
    mistakes = (
        Mistake("mask transposed", "mask[b, i, j] is about query i (row) and key j (column): the "
                "prefix COLUMNS j < prefix_len are visible to every row.", _prefix_transposed),
        Mistake("prefix rows see the whole sequence", "the prefix's queries may look at the whole "
                "prefix, not at the suffix: the condition is on the key, j < prefix_len.",
                _prefix_rows),
        Mistake("prefix one token too long", "keys j < prefix_len are the prefix; j <= prefix_len "
                "lets everyone see the first suffix token.", _prefix_off_by_one),
        Mistake("plain causal mask", "inside the prefix attention is bidirectional: key j < "
                "prefix_len is visible to every query.", _prefix_causal),
    )

    def reference(self, T, prefix_len):
        return pretraining_ref.prefix_lm_mask(T, prefix_len)

    def cases(self, seed, hidden):
        g = generator(seed)
        cases = [
            Case("T=6, prefixes 0, 2, 6", (6, torch.tensor([0, 2, 6]))),
            Case("T=5, one prefix of 3", (5, torch.tensor([3]))),
            Case("T=8, random prefixes", (8, torch.randint(0, 9, (4,), generator=g))),
        ]
        if hidden:
            cases += [
                Case("T=1", (1, torch.tensor([0, 1]))),
                Case("T=12, random prefixes", (12, torch.randint(0, 13, (6,), generator=g))),
                Case("prefix of 1", (7, torch.tensor([1, 1]))),
            ]
        return cases


# ---------------------------------------------------------------------------------------
# 04.electra_replace

def _electra_with(labels="changed", noise="gumbel", everywhere=False):
    def electra_replace(input_ids, masked, gen_logits, generator):
        u = torch.rand(gen_logits.shape, dtype=gen_logits.dtype, generator=generator)
        z = {"gumbel": -torch.log(-torch.log(u)), "none": 0.0, "single_log": -torch.log(u)}[noise]
        sampled = (gen_logits + z).argmax(-1)
        corrupted = sampled if everywhere else torch.where(masked, sampled, input_ids)
        lab = masked.long() if labels == "masked" else (corrupted != input_ids).long()
        return corrupted, lab
    return electra_replace


@register
class ElectraReplace(SeededExercise):
    """ELECTRA: generator samples and discriminator labels."""
    id = "04.electra_replace"
    entry = "electra_replace"
    forbid = NO_LIBRARIES
    mistakes = (
        Mistake("labels mark every masked position", "a sampled token equal to the original is "
                "NOT replaced: label = (corrupted != original), not the mask.",
                _electra_with(labels="masked")),
        Mistake("greedy generator (no noise)", "ELECTRA samples from the generator: add the Gumbel "
                "noise -log(-log(u)) before the argmax.", _electra_with(noise="none")),
        Mistake("noise -log(u) instead of -log(-log(u))", "the Gumbel-max trick needs the double "
                "log: g = -log(-log(u)).", _electra_with(noise="single_log")),
        Mistake("every position replaced", "only the masked positions take the generator's "
                "sample; the others keep the original token.", _electra_with(everywhere=True)),
    )

    def reference(self, input_ids, masked, gen_logits, generator):
        return pretraining_ref.electra_replace(input_ids, masked, gen_logits, generator)

    def cases(self, seed, hidden):
        g = generator(seed)

        def case(label, B, T, V, dtype=F32, sure=0.0, p=0.3):
            ids = torch.randint(0, V, (B, T), generator=g)
            masked = torch.rand(B, T, generator=g) < p
            logits = randn(g, B, T, V, dtype=dtype)
            logits += sure * F.one_hot(ids, V).to(dtype)  # a confident generator: often right
            return Case(label, (ids, masked, logits), {"seed": draw_seed(g)})

        cases = [
            case("2 x 12, V=6, random generator", 2, 12, 6),
            case("confident generator (samples often = original)", 3, 10, 8, sure=3.0, p=0.6),
            case("float64 logits, V=20", 2, 16, 20, dtype=F64, sure=1.0),
        ]
        if hidden:
            cases += [
                case("one sequence, everything masked", 1, 9, 5, p=1.1),
                case("float64, very confident", 4, 8, 30, dtype=F64, sure=5.0, p=0.5),
                case("larger batch", 6, 20, 12, sure=2.0),
            ]
        return cases


# ---------------------------------------------------------------------------------------
# 04.electra_loss

def _eloss_with(weight_gen=False, disc_at="real", use_weight=True):
    def electra_loss(gen_logits, mlm_labels, disc_logits, disc_labels, attention_mask,
                     disc_weight=50.0):
        gen = _ce(gen_logits, mlm_labels, IGN)
        per = F.binary_cross_entropy_with_logits(disc_logits, disc_labels.to(disc_logits.dtype),
                                                 reduction="none")
        where = {"real": attention_mask, "masked": mlm_labels != IGN,
                 "all": torch.ones_like(attention_mask)}[disc_at]
        disc = per[where].mean()
        w = disc_weight if use_weight else 1.0
        total = w * gen + disc if weight_gen else gen + w * disc
        return total, gen, disc
    return electra_loss


@register
class ElectraLoss(Exercise):
    """ELECTRA's joint loss."""
    id = "04.electra_loss"
    entry = "electra_loss"
    mistakes = (
        Mistake("weight on the generator", "lambda = 50 multiplies the DISCRIMINATOR loss: "
                "gen_loss + disc_weight * disc_loss.", _eloss_with(weight_gen=True)),
        Mistake("discriminator scored at masked positions only", "the discriminator is trained on "
                "EVERY real token (that is ELECTRA's point), not just the masked ones.",
                _eloss_with(disc_at="masked")),
        Mistake("padding counted in the discriminator loss", "average the discriminator's loss "
                "over positions where attention_mask is True only.", _eloss_with(disc_at="all")),
        Mistake("disc_weight ignored", "use the `disc_weight` argument: total = gen_loss + "
                "disc_weight * disc_loss.", _eloss_with(use_weight=False)),
    )

    def reference(self, gen_logits, mlm_labels, disc_logits, disc_labels, attention_mask,
                  disc_weight=50.0):
        return pretraining_ref.electra_loss(gen_logits, mlm_labels, disc_logits, disc_labels, attention_mask,
                              disc_weight)

    def cases(self, seed, hidden):
        g = generator(seed)

        def case(label, B, T, V, dtype=F32, n_pad=(), **kw):
            attn = torch.ones(B, T, dtype=torch.bool)
            for r, k in n_pad:
                attn[r, T - k:] = False
            ids = torch.randint(0, V, (B, T), generator=g)
            sel = (torch.rand(B, T, generator=g) < 0.3) & attn
            sel[0, 1] = True
            mlm = ids.masked_fill(~sel, IGN)
            disc_labels = ((torch.rand(B, T, generator=g) < 0.2) & attn).long()
            return Case(label, (randn(g, B, T, V, dtype=dtype), mlm,
                                randn(g, B, T, dtype=dtype, scale=2.0), disc_labels, attn), kw)

        cases = [
            case("2 x 8, V=10, padding", 2, 8, 10, n_pad=[(1, 3)]),
            case("3 x 6, V=7, no padding", 3, 6, 7),
            case("float64, disc_weight=10", 2, 10, 12, dtype=F64, n_pad=[(0, 2)], disc_weight=10.0),
        ]
        if hidden:
            cases += [
                case("one sequence, mostly padding", 1, 12, 5, n_pad=[(0, 8)]),
                case("float64, larger", 4, 16, 25, dtype=F64, n_pad=[(2, 5), (3, 1)]),
                case("disc_weight=1", 2, 5, 6, disc_weight=1.0),
            ]
        return cases

"""objectives.ipynb: the pre-training objectives (causal LM loss, BERT's masked-LM
corruption and NSP pairs, the prefix-LM mask, ELECTRA's sampling and joint loss).

Randomised exercises take a ``torch.Generator``. A case stores only its integer ``seed`` (a
generator cannot travel to the grader's kernel); :class:`~llmcourse.checks.kit.SeededExercise`
builds a generator from it and passes it as ``generator=``, so the learner's function and the
reference see the same random numbers and must agree exactly. The order of the draws is part
of each task.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...reference import pretraining as pretraining_ref
from .. import register
from ..core import Case, Exercise, Mistake, Rule
from ..kit import F32, F64, SeededExercise, draw_seed, generator, randn


IGN = pretraining_ref.IGNORE_INDEX

NO_BUILTIN_CE = (
    Rule(".cross_entropy", "pick the target log-probabilities yourself instead of F.cross_entropy"),
    Rule(".nll_loss", "pick the target log-probabilities yourself instead of F.nll_loss"),
    Rule("torch.nn.CrossEntropyLoss", "compute it yourself instead of nn.CrossEntropyLoss"),
    Rule("torch.nn.NLLLoss", "compute it yourself instead of nn.NLLLoss"),
)
NO_LIBRARIES = (
    Rule("transformers", "write it yourself instead of calling Hugging Face's code"),
)


# ---------------------------------------------------------------------------------------
# 04.causal_lm_loss

def _ce(logits, targets, ignore_index):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           ignore_index=ignore_index)


def _clm_no_shift(logits, labels, ignore_index=IGN):
    return _ce(logits, labels, ignore_index)


def _clm_wrong_direction(logits, labels, ignore_index=IGN):
    return _ce(logits[:, 1:], labels[:, :-1], ignore_index)


def _clm_mean_over_all(logits, labels, ignore_index=IGN):
    y = labels[:, 1:]
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), y.reshape(-1),
                          ignore_index=ignore_index, reduction="sum")
    return nll / y.numel()


def _clm_sum(logits, labels, ignore_index=IGN):
    y = labels[:, 1:]
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), y.reshape(-1),
                           ignore_index=ignore_index, reduction="sum")


def _clm_fixed_ignore(logits, labels, ignore_index=IGN):
    y = labels[:, 1:]
    valid = y != IGN
    logp = torch.log_softmax(logits[:, :-1], -1)
    safe = y.clamp(min=0)  # the ignored labels are read as token 0
    picked = logp.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    return -picked[valid].mean()


@register
class CausalLMLoss(Exercise):
    """Causal LM loss: shift inside, ignore index."""
    id = "04.causal_lm_loss"
    entry = "causal_lm_loss"
    forbid = NO_BUILTIN_CE
    mistakes = (
        Mistake("no shift", "position t must predict the NEXT token: compare logits[:, :-1] with "
                "labels[:, 1:], not logits with labels at the same position.", _clm_no_shift),
        Mistake("shifted the wrong way", "drop the LAST logit and the FIRST label "
                "(logits[:, :-1] vs labels[:, 1:]), not the other way round.", _clm_wrong_direction),
        Mistake("ignored targets counted in the mean", "divide by the number of targets that are "
                "not ignore_index, not by every position.", _clm_mean_over_all),
        Mistake("sum instead of mean", "average over the counted targets; do not sum them.", _clm_sum),
        Mistake("ignore_index hard-coded", "use the `ignore_index` argument, not the constant -100.",
                _clm_fixed_ignore),
    )

    def reference(self, logits, labels, ignore_index=IGN):
        return pretraining_ref.causal_lm_loss(logits, labels, ignore_index)

    def cases(self, seed, hidden):
        g = generator(seed)

        def ids(B, T, V):
            return torch.randint(0, V, (B, T), generator=g)

        padded = ids(3, 8, 11)
        padded[0, 5:], padded[2, 3:] = IGN, IGN
        prompt = ids(2, 7, 9)
        prompt[:, :3] = IGN  # the prompt is context only, never a target
        custom = ids(2, 6, 5)
        custom[1, 4:] = -1
        cases = [
            Case("batch 2, T=5, V=7, nothing ignored", (randn(g, 2, 5, 7), ids(2, 5, 7))),
            Case("padding at the end (-100)", (randn(g, 3, 8, 11, scale=2.0), padded)),
            Case("prompt masked at the start", (randn(g, 2, 7, 9), prompt)),
            Case("ignore_index=-1", (randn(g, 2, 6, 5), custom), {"ignore_index": -1}),
        ]
        if hidden:
            one = ids(1, 2, 4)
            mixed = ids(4, 10, 13)
            mixed[mixed % 3 == 0] = IGN
            mixed[:, 1] = 0  # one target per row at least
            cases += [
                Case("float64, V=50", (randn(g, 2, 9, 50, dtype=F64, scale=3.0), ids(2, 9, 50))),
                Case("T=2: a single target", (randn(g, 1, 2, 4), one)),
                Case("ignored positions scattered", (randn(g, 4, 10, 13, dtype=F64), mixed)),
            ]
        return cases


# ---------------------------------------------------------------------------------------
# 04.mask_tokens

def _mask_with(special=True, p_random=0.5, exclusive=True, labels="orig", only_mask=False,
               ids_first=False):
    def mask_tokens(input_ids, special_mask, mask_token_id, vocab_size, generator,
                    mlm_probability=0.15):
        shape = input_ids.shape
        if ids_first:  # the same draws, in another order: the random ids first
            rnd = torch.randint(vocab_size, shape, dtype=torch.long, generator=generator)
        probs = torch.full(shape, mlm_probability)
        if special:
            probs = probs.masked_fill(special_mask, 0.0)
        sel = torch.bernoulli(probs, generator=generator).bool()
        if only_mask:
            return input_ids.masked_fill(sel, mask_token_id), input_ids.masked_fill(~sel, IGN)
        to_mask = torch.bernoulli(torch.full(shape, 0.8), generator=generator).bool() & sel
        to_rand = torch.bernoulli(torch.full(shape, p_random), generator=generator).bool() & sel
        if exclusive:
            to_rand &= ~to_mask
        if not ids_first:
            rnd = torch.randint(vocab_size, shape, dtype=torch.long, generator=generator)
        out = torch.where(to_rand, rnd, input_ids.masked_fill(to_mask, mask_token_id))
        if labels == "all":
            lab = input_ids.clone()
        elif labels == "corrupted":
            lab = out.masked_fill(~sel, IGN)
        else:
            lab = input_ids.masked_fill(~sel, IGN)
        return out, lab
    return mask_tokens


@register
class MaskTokens(SeededExercise):
    """BERT masked-LM corruption (15%; 80/10/10)."""
    id = "04.mask_tokens"
    entry = "mask_tokens"
    forbid = NO_LIBRARIES
    mistakes = (
        Mistake("special tokens can be selected", "set the selection probability to 0 at "
                "special positions ([CLS], [SEP], [PAD]) before drawing.", _mask_with(special=False)),
        Mistake("random for 10% of the selected, not half of the rest", "after 80% became [MASK], "
                "the remaining 20% split evenly: draw the random-token coin with p = 0.5 "
                "(0.1 / 0.2), not 0.1.", _mask_with(p_random=0.1)),
        Mistake("random tokens overwrite [MASK]", "a position that became [MASK] must not also get "
                "a random token: and the random coin with ~to_mask.", _mask_with(exclusive=False)),
        Mistake("every selected token becomes [MASK]", "only 80% of the selected positions become "
                "[MASK]; 10% get a random token and 10% keep theirs.", _mask_with(only_mask=True)),
        Mistake("labels at every position", "labels are -100 wherever the token was not selected, "
                "so the loss only scores the selected positions.", _mask_with(labels="all")),
        Mistake("labels from the corrupted ids", "the label is the ORIGINAL token, not what "
                "replaced it.", _mask_with(labels="corrupted")),
        Mistake("draws in another order", "the random ids were drawn before the coins: make the "
                "four draws in the task's order (selected, to_mask, to_random, then the random "
                "ids), each with generator=generator, so the same seed gives the same result.",
                _mask_with(ids_first=True)),
    )

    def reference(self, input_ids, special_mask, mask_token_id, vocab_size, generator,
                  mlm_probability=0.15):
        return pretraining_ref.mask_tokens(input_ids, special_mask, mask_token_id, vocab_size, generator,
                             mlm_probability)

    def cases(self, seed, hidden):
        g = generator(seed)

        def batch(B, T, V, pad_rows=()):
            ids = torch.randint(5, V, (B, T), generator=g)
            ids[:, 0], ids[:, -1] = 1, 2  # [CLS] ... [SEP]
            for r, start in pad_rows:
                ids[r, start:] = 0  # [PAD]
            return (ids, ids <= 2, 4, V)  # [MASK] = 4

        cases = [
            Case("4 x 64, V=50, padding", batch(4, 64, 50, [(1, 40), (3, 20)]), {"seed": draw_seed(g)}),
            Case("mlm_probability=0.5", batch(3, 40, 30), {"seed": draw_seed(g), "mlm_probability": 0.5}),
            Case("8 x 32, V=1000", batch(8, 32, 1000, [(0, 10)]), {"seed": draw_seed(g)}),
        ]
        if hidden:
            cases += [
                Case("one long sequence", batch(1, 300, 100), {"seed": draw_seed(g)}),
                Case("mlm_probability=0.3, padding", batch(5, 50, 40, [(2, 5), (4, 49)]),
                     {"seed": draw_seed(g), "mlm_probability": 0.3}),
                Case("another seed", batch(6, 60, 70), {"seed": draw_seed(g)}),
            ]
        return cases


# ---------------------------------------------------------------------------------------
# 04.nsp_pairs

def _nsp_with(skip=True, own_range=True, all_a=False, invert=False):
    def nsp_pairs(doc_ids, generator):
        N = doc_ids.numel()
        a = torch.arange(N - 1) if all_a else torch.nonzero(doc_ids[1:] == doc_ids[:-1]).squeeze(1)
        n = a.numel()
        coin = torch.rand(n, generator=generator) < 0.5
        u = torch.rand(n, generator=generator)
        doc = doc_ids[a]
        start = torch.searchsorted(doc_ids, doc)
        size = torch.searchsorted(doc_ids, doc, right=True) - start
        j = (u * ((N - size) if own_range else N)).long()
        b_rand = torch.where(j < start, j, j + size) if skip else j
        b = torch.where(coin, a + 1, b_rand)
        return a, b, (~coin if invert else coin).long()
    return nsp_pairs


@register
class NspPairs(SeededExercise):
    """Next-sentence-prediction pairs (50% next, 50% random)."""
    id = "04.nsp_pairs"
    entry = "nsp_pairs"
    forbid = NO_LIBRARIES
    mistakes = (
        Mistake("negatives may come from A's own document", "the random sentence must come from "
                "ANOTHER document: draw j among the M = N - (size of A's document) other "
                "sentences, not among all N.", _nsp_with(own_range=False, skip=False)),
        Mistake("forgot to skip A's document", "j counts only the sentences OUTSIDE A's document: "
                "when j reaches the start of A's document, add the document's size.",
                _nsp_with(skip=False)),
        Mistake("a document's last sentence used as A", "the last sentence of a document has no "
                "next sentence in it; only sentences i with doc_ids[i + 1] == doc_ids[i] start a "
                "pair.", _nsp_with(all_a=True)),
        Mistake("labels inverted", "is_next is 1 for the TRUE next sentence (coin < 0.5) and 0 for "
                "a random one.", _nsp_with(invert=True)),
    )

    def reference(self, doc_ids, generator):
        return pretraining_ref.nsp_pairs(doc_ids, generator)

    def cases(self, seed, hidden):
        g = generator(seed)

        def docs(*sizes, first=0):
            return torch.repeat_interleave(torch.arange(first, first + len(sizes)),
                                           torch.tensor(sizes))

        cases = [
            Case("5 documents of 3, 1, 4, 2, 5 sentences", (docs(3, 1, 4, 2, 5),), {"seed": draw_seed(g)}),
            Case("8 documents of 4 sentences", (docs(*[4] * 8),), {"seed": draw_seed(g)}),
            Case("ids not starting at 0, with gaps", (torch.tensor([2, 2, 2, 5, 5, 7, 7, 7, 7, 9, 9]),),
                 {"seed": draw_seed(g)}),
        ]
        if hidden:
            sizes = torch.randint(1, 7, (12,), generator=g).tolist()
            cases += [
                Case("two documents", (docs(6, 6),), {"seed": draw_seed(g)}),
                Case("12 random-length documents", (docs(*sizes, first=3),), {"seed": draw_seed(g)}),
                Case("one long document among short ones", (docs(1, 20, 1, 2),), {"seed": draw_seed(g)}),
            ]
        return cases


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

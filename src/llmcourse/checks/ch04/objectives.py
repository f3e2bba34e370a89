"""objectives.ipynb, first half: the causal LM loss, BERT's masked-LM corruption and NSP pairs
(the prefix-LM mask and ELECTRA are in :mod:`.objectives_prefix_electra`).

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
from ..kit import F64, SeededExercise, draw_seed, generator, randn


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

"""Chapter 04 exercises: pre-training objectives, the optimiser pieces, and batching.

Randomised exercises (masked-LM corruption, NSP pairs, ELECTRA sampling, random batches)
take a ``torch.Generator``. A case stores only its integer ``seed`` (a generator cannot
travel to the grader's kernel); :class:`_Seeded` builds ``torch.Generator().manual_seed(seed)``
and passes it as ``generator=``, so the learner's function and the reference see the same
random numbers and must agree exactly. The order of the draws is part of each task.

``04.adamw`` is a class (a ``torch.optim.Optimizer``): the case holds a small regression
problem and the check runs 100 optimisation steps with it, comparing the final parameters.
``04.cosine_lr`` is evaluated at every step of a schedule and compared as a curve.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..reference import optim as O
from ..reference import pretraining as P
from ..reference import training as TR
from . import register
from .ch00 import NO_COURSE_ANSWERS
from .core import GLOBAL_RULES, Case, Exercise, Mistake, Rule

F32, F64 = torch.float32, torch.float64
IGN = P.IGNORE_INDEX

NO_BUILTIN_CE = NO_COURSE_ANSWERS + (
    Rule(".cross_entropy", "pick the target log-probabilities yourself instead of F.cross_entropy"),
    Rule(".nll_loss", "pick the target log-probabilities yourself instead of F.nll_loss"),
    Rule("torch.nn.CrossEntropyLoss", "compute it yourself instead of nn.CrossEntropyLoss"),
    Rule("torch.nn.NLLLoss", "compute it yourself instead of nn.NLLLoss"),
)
NO_LIBRARIES = NO_COURSE_ANSWERS + (
    Rule("transformers", "write it yourself instead of calling Hugging Face's code"),
)
NO_BUILTIN_OPTIM = NO_COURSE_ANSWERS + tuple(
    Rule(f"torch.optim.{name}", f"write the update yourself instead of torch.optim.{name}")
    for name in ("AdamW", "Adam", "adamw", "adam", "_functional", "Adamax", "NAdam", "RAdam"))
NO_BUILTIN_CLIP = NO_COURSE_ANSWERS + (
    Rule("torch.nn.utils", "compute the global norm yourself instead of torch.nn.utils"),
    Rule("._foreach_norm", "compute the norms yourself"),
    Rule(".get_total_norm", "compute the global norm yourself"),
)
# The pre-training notebook trains with the course's GPT and trainer: those names may be
# imported there; get_batch / cosine_lr of the same module (the answers) stay off limits.
TRAINER_ALLOWED = ("gpt",) + tuple(f"training.{n}" for n in (
    "TrainConfig", "History", "VOCAB_SIZE", "encode", "decode", "evaluate_lm", "lm_loss",
    "make_optimizer", "train_lm"))
BATCHING_RULES = (
    Rule("llmcourse.reference", "write it yourself instead of calling the course's reference "
         "(only its GPT and train_lm, evaluate_lm, encode, decode ... are allowed here)",
         allow=TRAINER_ALLOWED),
)
NO_SCHEDULERS = NO_COURSE_ANSWERS + (
    Rule("torch.optim.lr_scheduler", "compute the learning rate yourself instead of a scheduler"),
)


def _randn(g, *shape, dtype=F32, scale=1.0):
    return (torch.randn(*shape, generator=g, dtype=F64) * scale).to(dtype)


class _TrainerAllowed(Exercise):
    """Exercises of the notebook that imports the course's GPT and trainer."""

    @property
    def rules(self):
        keep = tuple(r for r in GLOBAL_RULES if r.target != "llmcourse.reference")
        return tuple(dict.fromkeys(self.forbid + BATCHING_RULES + keep))


class _Seeded(Exercise):
    """An exercise whose function takes ``generator=``: cases carry ``seed`` instead."""

    def call(self, fn, case):
        kw = dict(case.kwargs)
        gen = torch.Generator().manual_seed(kw.pop("seed"))
        return fn(*case.args, generator=gen, **kw)


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
        return P.causal_lm_loss(logits, labels, ignore_index)

    def cases(self, seed, hidden):
        g = torch.Generator().manual_seed(seed)

        def ids(B, T, V):
            return torch.randint(0, V, (B, T), generator=g)

        padded = ids(3, 8, 11)
        padded[0, 5:], padded[2, 3:] = IGN, IGN
        prompt = ids(2, 7, 9)
        prompt[:, :3] = IGN  # the prompt is context only, never a target
        custom = ids(2, 6, 5)
        custom[1, 4:] = -1
        cases = [
            Case("batch 2, T=5, V=7, nothing ignored", (_randn(g, 2, 5, 7), ids(2, 5, 7))),
            Case("padding at the end (-100)", (_randn(g, 3, 8, 11, scale=2.0), padded)),
            Case("prompt masked at the start", (_randn(g, 2, 7, 9), prompt)),
            Case("ignore_index=-1", (_randn(g, 2, 6, 5), custom), {"ignore_index": -1}),
        ]
        if hidden:
            one = ids(1, 2, 4)
            mixed = ids(4, 10, 13)
            mixed[mixed % 3 == 0] = IGN
            mixed[:, 1] = 0  # one target per row at least
            cases += [
                Case("float64, V=50", (_randn(g, 2, 9, 50, dtype=F64, scale=3.0), ids(2, 9, 50))),
                Case("T=2: a single target", (_randn(g, 1, 2, 4), one)),
                Case("ignored positions scattered", (_randn(g, 4, 10, 13, dtype=F64), mixed)),
            ]
        return cases


# ---------------------------------------------------------------------------------------
# 04.mask_tokens

def _mask_with(special=True, p_random=0.5, exclusive=True, labels="orig", only_mask=False):
    def mask_tokens(input_ids, special_mask, mask_token_id, vocab_size, generator,
                    mlm_probability=0.15):
        shape = input_ids.shape
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
class MaskTokens(_Seeded):
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
    )

    def reference(self, input_ids, special_mask, mask_token_id, vocab_size, generator,
                  mlm_probability=0.15):
        return P.mask_tokens(input_ids, special_mask, mask_token_id, vocab_size, generator,
                             mlm_probability)

    def cases(self, seed, hidden):
        g = torch.Generator().manual_seed(seed)

        def batch(B, T, V, pad_rows=()):
            ids = torch.randint(5, V, (B, T), generator=g)
            ids[:, 0], ids[:, -1] = 1, 2  # [CLS] ... [SEP]
            for r, start in pad_rows:
                ids[r, start:] = 0  # [PAD]
            return (ids, ids <= 2, 4, V)  # [MASK] = 4

        def s():
            return int(torch.randint(0, 2**31 - 1, (1,), generator=g))

        cases = [
            Case("4 x 64, V=50, padding", batch(4, 64, 50, [(1, 40), (3, 20)]), {"seed": s()}),
            Case("mlm_probability=0.5", batch(3, 40, 30), {"seed": s(), "mlm_probability": 0.5}),
            Case("8 x 32, V=1000", batch(8, 32, 1000, [(0, 10)]), {"seed": s()}),
        ]
        if hidden:
            cases += [
                Case("one long sequence", batch(1, 300, 100), {"seed": s()}),
                Case("mlm_probability=0.3, padding", batch(5, 50, 40, [(2, 5), (4, 49)]),
                     {"seed": s(), "mlm_probability": 0.3}),
                Case("another seed", batch(6, 60, 70), {"seed": s()}),
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
class NspPairs(_Seeded):
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
        return P.nsp_pairs(doc_ids, generator)

    def cases(self, seed, hidden):
        g = torch.Generator().manual_seed(seed)

        def docs(*sizes, first=0):
            return torch.repeat_interleave(torch.arange(first, first + len(sizes)),
                                           torch.tensor(sizes))

        def s():
            return int(torch.randint(0, 2**31 - 1, (1,), generator=g))

        cases = [
            Case("5 documents of 3, 1, 4, 2, 5 sentences", (docs(3, 1, 4, 2, 5),), {"seed": s()}),
            Case("8 documents of 4 sentences", (docs(*[4] * 8),), {"seed": s()}),
            Case("ids not starting at 0, with gaps", (torch.tensor([2, 2, 2, 5, 5, 7, 7, 7, 7, 9, 9]),),
                 {"seed": s()}),
        ]
        if hidden:
            sizes = torch.randint(1, 7, (12,), generator=g).tolist()
            cases += [
                Case("two documents", (docs(6, 6),), {"seed": s()}),
                Case("12 random-length documents", (docs(*sizes, first=3),), {"seed": s()}),
                Case("one long document among short ones", (docs(1, 20, 1, 2),), {"seed": s()}),
            ]
        return cases


# ---------------------------------------------------------------------------------------
# 04.prefix_lm_mask

def _prefix_transposed(T, prefix_len):
    return P.prefix_lm_mask(T, prefix_len).transpose(-2, -1)


def _prefix_rows(T, prefix_len):
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    return (j <= i)[None] | (i[None] < prefix_len[:, None, None])


def _prefix_off_by_one(T, prefix_len):
    return P.prefix_lm_mask(T, (prefix_len + 1).clamp(max=T))


def _prefix_causal(T, prefix_len):
    return torch.ones(T, T, dtype=torch.bool).tril().expand(len(prefix_len), T, T).clone()


@register
class PrefixLMMask(Exercise):
    """Prefix-LM attention mask."""
    id = "04.prefix_lm_mask"
    entry = "prefix_lm_mask"
    forbid = NO_COURSE_ANSWERS
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
        return P.prefix_lm_mask(T, prefix_len)

    def cases(self, seed, hidden):
        g = torch.Generator().manual_seed(seed)
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
class ElectraReplace(_Seeded):
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
        return P.electra_replace(input_ids, masked, gen_logits, generator)

    def cases(self, seed, hidden):
        g = torch.Generator().manual_seed(seed)

        def s():
            return int(torch.randint(0, 2**31 - 1, (1,), generator=g))

        def case(label, B, T, V, dtype=F32, sure=0.0, p=0.3):
            ids = torch.randint(0, V, (B, T), generator=g)
            masked = torch.rand(B, T, generator=g) < p
            logits = _randn(g, B, T, V, dtype=dtype)
            logits += sure * F.one_hot(ids, V).to(dtype)  # a confident generator: often right
            return Case(label, (ids, masked, logits), {"seed": s()})

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
    forbid = NO_COURSE_ANSWERS
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
        return P.electra_loss(gen_logits, mlm_labels, disc_logits, disc_labels, attention_mask,
                              disc_weight)

    def cases(self, seed, hidden):
        g = torch.Generator().manual_seed(seed)

        def case(label, B, T, V, dtype=F32, n_pad=(), **kw):
            attn = torch.ones(B, T, dtype=torch.bool)
            for r, k in n_pad:
                attn[r, T - k:] = False
            ids = torch.randint(0, V, (B, T), generator=g)
            sel = (torch.rand(B, T, generator=g) < 0.3) & attn
            sel[0, 1] = True
            mlm = ids.masked_fill(~sel, IGN)
            disc_labels = ((torch.rand(B, T, generator=g) < 0.2) & attn).long()
            return Case(label, (_randn(g, B, T, V, dtype=dtype), mlm,
                                _randn(g, B, T, dtype=dtype, scale=2.0), disc_labels, attn), kw)

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


# ---------------------------------------------------------------------------------------
# 04.adamw

class _AdamWLike(torch.optim.Optimizer):
    """AdamW with knobs, to build the known mistakes from."""

    coupled = False  # L2 in the gradient instead of decoupled decay
    bias_correction = True
    decay_times_lr = True
    eps_inside = False
    decay_after = False
    global_step = False  # one step counter incremented per parameter
    use_defaults = False  # ignores the parameter groups' own settings

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        self.t = 0

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            h = self.defaults if self.use_defaults else group
            lr, (b1, b2), eps, wd = h["lr"], h["betas"], h["eps"], h["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad + wd * p if self.coupled else p.grad
                st = self.state[p]
                if not st:
                    st["step"], st["m"], st["v"] = 0, torch.zeros_like(p), torch.zeros_like(p)
                st["step"] += 1
                self.t += 1
                t = self.t if self.global_step else st["step"]
                if not self.coupled and not self.decay_after:
                    p.mul_(1 - (lr * wd if self.decay_times_lr else wd))
                st["m"].mul_(b1).add_(g, alpha=1 - b1)
                st["v"].mul_(b2).addcmul_(g, g, value=1 - b2)
                m_hat, v_hat = st["m"], st["v"]
                if self.bias_correction:
                    m_hat, v_hat = m_hat / (1 - b1 ** t), v_hat / (1 - b2 ** t)
                denom = (v_hat + eps).sqrt() if self.eps_inside else v_hat.sqrt() + eps
                p.sub_(lr * m_hat / denom)
                if not self.coupled and self.decay_after:
                    p.mul_(1 - lr * wd)


def _variant(name, **knobs):
    return type(name, (_AdamWLike,), knobs)


@register
class AdamWExercise(Exercise):
    """AdamW from scratch (= torch.optim.AdamW over 100 steps)."""
    id = "04.adamw"
    entry = "AdamW"
    forbid = NO_BUILTIN_OPTIM
    mistakes = (
        Mistake("Adam with L2 in the gradient (coupled decay)", "that is torch.optim.Adam's "
                "weight_decay: AdamW does NOT add weight_decay * p to the gradient; it shrinks "
                "p directly, p *= 1 - lr * weight_decay, outside the adaptive update.",
                _variant("AdamL2", coupled=True)),
        Mistake("no bias correction", "divide m by 1 - beta1^t and v by 1 - beta2^t; without it "
                "the first steps are far too small.", _variant("NoBC", bias_correction=False)),
        Mistake("decay not multiplied by lr", "the decoupled decay is p *= 1 - lr * weight_decay "
                "(PyTorch's convention), not 1 - weight_decay.", _variant("DecayNoLr", decay_times_lr=False)),
        Mistake("eps inside the square root", "the denominator is sqrt(v_hat) + eps, not "
                "sqrt(v_hat + eps).", _variant("EpsInside", eps_inside=True)),
        Mistake("decay applied after the Adam update", "shrink the parameter from its value "
                "BEFORE this step's update (decay first, then the Adam step).",
                _variant("DecayAfter", decay_after=True)),
        Mistake("one step counter for all parameters", "t counts the steps of EACH parameter "
                "(store it in self.state[p]); a single counter incremented inside the loop over "
                "parameters runs too fast.", _variant("GlobalStep", global_step=True)),
        Mistake("ignores the parameter groups' settings", "read lr, betas, eps and weight_decay "
                "from each `group` (a scheduler changes group['lr']; biases often have "
                "weight_decay 0), not from self.defaults.", _variant("Defaults", use_defaults=True)),
    )

    def reference(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        return O.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)

    def call(self, fn, case):
        kw = case.kwargs
        X, Y = kw["X"], kw["Y"]
        W = kw["W"].clone().requires_grad_()
        b = kw["b"].clone().requires_grad_()
        frozen = [kw["unused"].clone().requires_grad_()] if "unused" in kw else []
        if "bias_group" in kw:
            groups = [{"params": [W] + frozen}, {"params": [b], **kw["bias_group"]}]
        else:
            groups = [{"params": [W, b] + frozen}]
        opt = fn(groups, **kw["hyper"])
        for _ in range(kw["steps"]):
            for p in [W, b] + frozen:
                p.grad = None
            loss = ((torch.tanh(X @ W + b) - Y) ** 2).mean()
            loss.backward()
            opt.step()
        return [p.detach() for p in [W, b] + frozen]

    def cases(self, seed, hidden):
        g = torch.Generator().manual_seed(seed)

        def case(label, n, d_in, d_out, hyper, dtype=F64, steps=100, **extra):
            tol = {} if dtype == F64 else {"rtol": 1e-4, "atol": 1e-5}
            tol = {"rtol": 1e-7, "atol": 1e-9} if dtype == F64 else tol
            kw = dict(X=_randn(g, n, d_in, dtype=dtype), Y=_randn(g, n, d_out, dtype=dtype, scale=0.5),
                      W=_randn(g, d_in, d_out, dtype=dtype), b=_randn(g, d_out, dtype=dtype),
                      hyper=hyper, steps=steps, **extra)
            return Case(label, (), kw, **tol)

        cases = [
            case("float64, lr=0.02, weight_decay=0.1", 24, 4, 3, dict(lr=0.02, weight_decay=0.1)),
            case("two groups: bias with its own lr, no decay", 16, 5, 2,
                 dict(lr=0.01, weight_decay=0.3), bias_group={"lr": 0.05, "weight_decay": 0.0}),
            case("float64, betas (0.8, 0.95), eps=1e-3", 20, 3, 3,
                 dict(lr=0.05, betas=(0.8, 0.95), eps=1e-3, weight_decay=0.05)),
            case("float32, defaults", 32, 6, 4, {}, dtype=F32),
        ]
        if hidden:
            cases += [
                case("a parameter without gradient is left alone", 10, 3, 2,
                     dict(lr=0.03, weight_decay=0.2), unused=_randn(g, 4)),
                case("float64, strong decay, 120 steps", 12, 2, 5,
                     dict(lr=0.01, betas=(0.85, 0.99), weight_decay=1.0), steps=120),
                case("float32, two groups", 40, 8, 3, dict(lr=3e-3, weight_decay=0.1),
                     dtype=F32, bias_group={"weight_decay": 0.0, "betas": (0.5, 0.9)}),
            ]
        return cases


# ---------------------------------------------------------------------------------------
# 04.clip_grad_norm

def _total(grads):
    return torch.stack([g.pow(2).sum() for g in grads]).sum().sqrt()


def _clip_value(grads, max_norm):
    return [g.clamp(-max_norm, max_norm) for g in grads], _total(grads)


def _clip_each(grads, max_norm):
    return [O.clip_grad_norm([g], max_norm)[0][0] for g in grads], _total(grads)


def _clip_always(grads, max_norm):
    total = _total(grads)
    return [g * (max_norm / (total + 1e-6)) for g in grads], total


def _clip_squared(grads, max_norm):
    total = torch.stack([g.pow(2).sum() for g in grads]).sum()
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    return [g * coef for g in grads], total


def _clip_sum_of_norms(grads, max_norm):
    total = torch.stack([g.norm() for g in grads]).sum()
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    return [g * coef for g in grads], total


def _clip_returns_new_norm(grads, max_norm):
    clipped, _ = O.clip_grad_norm(grads, max_norm)
    return clipped, _total(clipped)


@register
class ClipGradNorm(Exercise):
    """Gradient clipping by global norm (= clip_grad_norm_)."""
    id = "04.clip_grad_norm"
    entry = "clip_grad_norm"
    forbid = NO_BUILTIN_CLIP
    mistakes = (
        Mistake("clipped by value, not by norm", "clamping each element to [-max_norm, max_norm] "
                "changes the gradient's direction; rescale ALL gradients by one factor "
                "min(1, max_norm / (total + 1e-6)).", _clip_value),
        Mistake("each tensor clipped on its own", "the norm is GLOBAL: one total over every "
                "tensor, one factor for all of them.", _clip_each),
        Mistake("small gradients scaled up", "the factor is min(1, max_norm / (total + 1e-6)): "
                "gradients already below max_norm stay as they are.", _clip_always),
        Mistake("squared norm (no square root)", "total = sqrt(sum of g^2).", _clip_squared),
        Mistake("sum of the per-tensor norms", "the global norm is sqrt of the sum of SQUARED "
                "norms (the norm of all elements together), not the sum of the norms.",
                _clip_sum_of_norms),
        Mistake("returned the norm after clipping", "return the total norm BEFORE clipping (what "
                "clip_grad_norm_ returns, the number you log).", _clip_returns_new_norm),
    )

    def reference(self, grads, max_norm):
        return O.clip_grad_norm(grads, max_norm)

    def cases(self, seed, hidden):
        g = torch.Generator().manual_seed(seed)
        cases = [
            Case("two tensors, norm above max_norm=1", ([_randn(g, 4, 3), _randn(g, 5)], 1.0)),
            Case("below the threshold: unchanged", ([_randn(g, 3, 2, scale=0.1), _randn(g, 2, scale=0.1)], 1.0)),
            Case("one tensor, large values", ([_randn(g, 6, scale=10.0)], 5.0)),
            Case("float64, three tensors", ([_randn(g, 2, 2, dtype=F64, scale=3.0), _randn(g, 3, dtype=F64),
                                             _randn(g, 1, 4, dtype=F64, scale=0.5)], 2.0)),
        ]
        if hidden:
            cases += [
                Case("max_norm=0.01", ([_randn(g, 7, 2), _randn(g, 3, 3)], 0.01)),
                Case("float64, a zero gradient among others", ([torch.zeros(3, dtype=F64),
                                                                _randn(g, 4, 2, dtype=F64, scale=4.0)], 1.5)),
                Case("many small tensors, total just above", ([_randn(g, 2, scale=0.4) for _ in range(6)], 1.0)),
            ]
        return cases


# ---------------------------------------------------------------------------------------
# 04.cosine_lr

def _lr_warmup_from_zero(step, max_lr, warmup_steps, total_steps, min_lr=0.0):
    if step < warmup_steps:
        return max_lr * step / warmup_steps
    return TR.cosine_lr(step, max_lr, warmup_steps, total_steps, min_lr)


def _lr_no_min(step, max_lr, warmup_steps, total_steps, min_lr=0.0):
    return TR.cosine_lr(step, max_lr, warmup_steps, total_steps, 0.0)


def _lr_progress_from_zero(step, max_lr, warmup_steps, total_steps, min_lr=0.0):
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    return min_lr + 0.5 * (max_lr - min_lr) * (1 + math.cos(math.pi * step / total_steps))


def _lr_no_clamp(step, max_lr, warmup_steps, total_steps, min_lr=0.0):
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + 0.5 * (max_lr - min_lr) * (1 + math.cos(math.pi * progress))


@register
class CosineLR(Exercise):
    """Linear warm-up + cosine decay."""
    id = "04.cosine_lr"
    entry = "cosine_lr"
    forbid = NO_SCHEDULERS
    mistakes = (
        Mistake("warm-up off by one", "step 0 gets max_lr / warmup_steps (step + 1 over "
                "warmup_steps), so the last warm-up step reaches max_lr; yours starts at 0.",
                _lr_warmup_from_zero),
        Mistake("cosine does not reach min_lr", "decay from max_lr to min_lr: "
                "min_lr + 0.5 (max_lr - min_lr)(1 + cos(pi * progress)).", _lr_no_min),
        Mistake("cosine progress counted from step 0", "the cosine starts when the warm-up "
                "ends: progress = (step - warmup_steps) / (total_steps - warmup_steps).",
                _lr_progress_from_zero),
        Mistake("cosine keeps going after total_steps", "after total_steps the rate stays at "
                "min_lr; the cosine would climb back up.", _lr_no_clamp),
    )

    def reference(self, step, max_lr, warmup_steps, total_steps, min_lr=0.0):
        return TR.cosine_lr(step, max_lr, warmup_steps, total_steps, min_lr)

    def call(self, fn, case):
        kw = dict(case.kwargs)
        n = kw.pop("n_steps")
        return torch.tensor([float(fn(s, **kw)) for s in range(n)], dtype=F64)

    def cases(self, seed, hidden):
        def c(label, max_lr, warm, total, min_lr, extra=10):
            return Case(label, (), dict(max_lr=max_lr, warmup_steps=warm, total_steps=total,
                                        min_lr=min_lr, n_steps=total + extra), rtol=1e-9, atol=1e-15)

        cases = [
            c("warm-up 10, total 50, min_lr 1e-4", 1e-3, 10, 50, 1e-4),
            c("no warm-up, min_lr 0", 1.0, 0, 20, 0.0),
            c("warm-up 5, total 30", 3e-3, 5, 30, 3e-4),
        ]
        if hidden:
            cases += [
                c("warm-up 1", 0.1, 1, 12, 0.01),
                c("warm-up = total", 0.5, 8, 8, 0.05),
                c("long schedule", 6e-4, 100, 1000, 6e-5, extra=50),
            ]
        return cases


# ---------------------------------------------------------------------------------------
# 04.get_batch and 04.eval_windows

def _gb_unshifted(tokens, batch_size, block_size, generator):
    x, _ = TR.get_batch(tokens, batch_size, block_size, generator)
    return x, x.clone()


def _gb_short_range(tokens, batch_size, block_size, generator):
    starts = torch.randint(0, len(tokens) - block_size - 1, (batch_size,), generator=generator)
    w = tokens[starts[:, None] + torch.arange(block_size + 1)]
    return w[:, :-1], w[:, 1:]


def _gb_two_draws(tokens, batch_size, block_size, generator):
    sx = torch.randint(0, len(tokens) - block_size, (batch_size,), generator=generator)
    sy = torch.randint(0, len(tokens) - block_size, (batch_size,), generator=generator)
    r = torch.arange(block_size)
    return tokens[sx[:, None] + r], tokens[sy[:, None] + r + 1]


def _gb_transposed(tokens, batch_size, block_size, generator):
    x, y = TR.get_batch(tokens, batch_size, block_size, generator)
    return x.T.contiguous(), y.T.contiguous()


@register
class GetBatch(_Seeded, _TrainerAllowed):
    """Random training windows from a token stream."""
    id = "04.get_batch"
    entry = "get_batch"
    forbid = ()
    mistakes = (
        Mistake("targets not shifted", "y is x shifted left by one: y[b, t] = tokens[start + t + 1].",
                _gb_unshifted),
        Mistake("last window never drawn", "starts go up to len(tokens) - block_size - 1 "
                "inclusive: torch.randint(0, len(tokens) - block_size, ...) (high is exclusive).",
                _gb_short_range),
        Mistake("x and y from different windows", "draw ONE start per row and cut x and y from it.",
                _gb_two_draws),
        Mistake("batch and time swapped", "return (batch_size, block_size): one window per row.",
                _gb_transposed),
    )

    def reference(self, tokens, batch_size, block_size, generator):
        return TR.get_batch(tokens, batch_size, block_size, generator)

    def cases(self, seed, hidden):
        g = torch.Generator().manual_seed(seed)

        def s():
            return int(torch.randint(0, 2**31 - 1, (1,), generator=g))

        def stream(n):
            return torch.randint(0, 256, (n,), generator=g)

        cases = [
            Case("1000 tokens, 8 windows of 16", (stream(1000), 8, 16), {"seed": s()}),
            Case("short stream, 4 windows of 5", (stream(20), 4, 5), {"seed": s()}),
            Case("one window of 32", (stream(300), 1, 32), {"seed": s()}),
        ]
        if hidden:
            cases += [
                Case("stream of block_size + 2", (stream(10), 6, 8), {"seed": s()}),
                Case("text bytes", (TR.encode("Once upon a time, there was a cat. " * 5), 5, 12),
                     {"seed": s()}),
                Case("64 windows of 64", (stream(5000), 64, 64), {"seed": s()}),
            ]
        return cases


def _ew_unshifted(tokens, block_size):
    x, _ = P.eval_windows(tokens, block_size)
    return x, x.clone()


def _ew_stride(tokens, block_size):
    n = (len(tokens) - 1) // block_size
    m = len(tokens) // (block_size + 1)
    starts = torch.arange(min(n, m)) * (block_size + 1)
    w = tokens[starts[:, None] + torch.arange(block_size + 1)]
    return w[:, :-1], w[:, 1:]


def _ew_drop_last(tokens, block_size):
    x, y = P.eval_windows(tokens, block_size)
    return x[:-1], y[:-1]


def _ew_too_many(tokens, block_size):
    n = len(tokens) // block_size
    starts = torch.arange(n) * block_size
    w = tokens[starts[:, None] + torch.arange(block_size + 1)]
    return w[:, :-1], w[:, 1:]


@register
class EvalWindows(_TrainerAllowed):
    """Consecutive evaluation windows."""
    id = "04.eval_windows"
    entry = "eval_windows"
    forbid = ()
    mistakes = (
        Mistake("targets not shifted", "y[k] = tokens[k*T + 1 : k*T + T + 1], x shifted by one.",
                _ew_unshifted),
        Mistake("windows of T + 1 tokens laid end to end", "consecutive windows start every T "
                "tokens (the last target of a window is the first input of the next), not every "
                "T + 1: every token after the first is a target exactly once.", _ew_stride),
        Mistake("last window dropped", "n = (len(tokens) - 1) // block_size windows fit.",
                _ew_drop_last),
        Mistake("one window too many", "the last window needs its target too: "
                "n = (len(tokens) - 1) // block_size, not len(tokens) // block_size.", _ew_too_many),
    )

    def reference(self, tokens, block_size):
        return P.eval_windows(tokens, block_size)

    def cases(self, seed, hidden):
        g = torch.Generator().manual_seed(seed)

        def stream(n):
            return torch.randint(0, 256, (n,), generator=g)

        cases = [
            Case("101 tokens, T=10", (stream(101), 10)),
            Case("100 tokens, T=10 (the tail is too short)", (stream(100), 10)),
            Case("1000 tokens, T=16", (stream(1000), 16)),
        ]
        if hidden:
            cases += [
                Case("exactly one window", (stream(9), 8)),
                Case("T=1", (stream(12), 1)),
                Case("text bytes, T=7", (TR.encode("The end.\nMath: 3 + 4 = 7.\n" * 3), 7)),
            ]
        return cases

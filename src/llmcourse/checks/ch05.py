"""Chapter 05 exercises: last-token pooling, a classification head, a LoRA layer, the chat
template with its loss mask, and the masked language-model loss.

Masks are bool, True = a real token (pooling) or a token that counts in the loss. The LoRA
check builds the learner's ``LoRALinear(in_features, out_features, r, alpha)`` and reports,
besides its output on the case's input, what the task asks of the layer as a whole: the
merged layer's weight and output, the number of trainable parameters, and whether
``lora_B`` starts at zero and ``lora_A`` does not.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..reference import finetuning as FT
from ..reference import lora as L
from . import register
from .kit import PARAM, ModuleExercise, SpecError, load_params
from .core import Case, Exercise, Mistake, Rule

F32, F64 = torch.float32, torch.float64

NO_COURSE_ANSWERS = (
    Rule("llmcourse.reference", "write it yourself instead of calling the course's reference"),
)


def _randn(g, *shape, dtype=F32, scale=1.0) -> torch.Tensor:
    return (torch.randn(*shape, generator=g, dtype=F64) * scale).to(dtype)


def _right_padded(lengths: list[int], T: int) -> torch.Tensor:
    return torch.arange(T) < torch.tensor(lengths)[:, None]


def _left_padded(lengths: list[int], T: int) -> torch.Tensor:
    return torch.arange(T) >= T - torch.tensor(lengths)[:, None]


# ---------------------------------------------------------------------------------------
# 05.last_token_pool

def _rows(hidden, index):
    return hidden[torch.arange(hidden.shape[0]), index]


def _pool_last_position(hidden, attention_mask):
    return hidden[:, -1]


def _pool_first_real(hidden, attention_mask):
    return _rows(hidden, attention_mask.long().argmax(dim=-1))


def _pool_mean(hidden, attention_mask):
    m = attention_mask[..., None].to(hidden.dtype)
    return (hidden * m).sum(dim=1) / m.sum(dim=1)


def _pool_lengths(hidden, attention_mask):
    return _rows(hidden, attention_mask.sum(dim=-1) - 1)


POOL_MISTAKES = (
    Mistake("last position, padding ignored", "hidden[:, -1] is a padding position for every "
            "right-padded sequence; take each row's last position where the mask is True.",
            _pool_last_position),
    Mistake("first real token instead of the last", "mask.argmax(-1) finds the FIRST True; a GPT "
            "has read the whole text only at the LAST real token.", _pool_first_real),
    Mistake("mean over the real tokens", "this task pools the last real token (GPT-style), not "
            "the average of the real tokens (BERT-style mean pooling).", _pool_mean),
    Mistake("lengths - 1: assumes right padding", "mask.sum(-1) - 1 is the last real position "
            "only when the padding is on the right; with left padding (or holes) take the "
            "rightmost True, e.g. max over where(mask, arange(T), -1).", _pool_lengths),
)


def _pool_cases(g, hidden_cases: bool, dtype_hidden=F64):
    """(label, hidden, mask) triples shared by the pooling and head exercises."""
    out = [
        ("right padding, lengths [5, 2, 1], C = 4", _randn(g, 3, 5, 4), _right_padded([5, 2, 1], 5)),
        ("left padding, lengths [6, 3, 1, 4]", _randn(g, 4, 6, 3), _left_padded([6, 3, 1, 4], 6)),
        ("no padding (2, 4, 5)", _randn(g, 2, 4, 5), torch.ones(2, 4, dtype=torch.bool)),
    ]
    if hidden_cases:
        holes = torch.tensor([[True, False, True, True, False, False, False],
                              [False, True, True, False, True, False, True],
                              [True, True, True, True, True, True, True]])
        out += [
            ("float64, right padding (4, 9, 6)", _randn(g, 4, 9, 6, dtype=dtype_hidden),
             _right_padded([3, 9, 1, 7], 9)),
            ("a single token (1, 1, 3)", _randn(g, 1, 1, 3), torch.ones(1, 1, dtype=torch.bool)),
            ("masks with holes: the rightmost True counts", _randn(g, 3, 7, 2), holes),
            ("left padding, float64", _randn(g, 2, 8, 5, dtype=dtype_hidden), _left_padded([2, 7], 8)),
        ]
    return out


@register
class LastTokenPool(Exercise):
    """Last-token pooling with padding."""
    id = "05.last_token_pool"
    entry = "last_token_pool"
    forbid = NO_COURSE_ANSWERS
    mistakes = POOL_MISTAKES

    def reference(self, hidden, attention_mask):
        return FT.last_token_pool(hidden, attention_mask)

    def cases(self, seed, hidden):
        g = torch.Generator().manual_seed(seed)
        return [Case(label, (h, m)) for label, h, m in _pool_cases(g, hidden)]


# ---------------------------------------------------------------------------------------
# 05.ClassificationHead

def _wrong_head(pool=None, probabilities=False):
    class WrongClassificationHead(FT.ClassificationHead):
        def forward(self, hidden, attention_mask):
            pooled = (pool or FT.last_token_pool)(hidden, attention_mask)
            logits = self.score(pooled)
            return logits.softmax(-1) if probabilities else logits
    return WrongClassificationHead


@register
class ClassificationHeadExercise(ModuleExercise):
    """Classification head on a GPT (last-token pooling + score)."""
    id = "05.ClassificationHead"
    entry = "ClassificationHead"
    init = ("n_embd", "n_classes")
    reference = FT.ClassificationHead
    forbid = NO_COURSE_ANSWERS + (
        Rule("transformers", "build the head yourself instead of Hugging Face's"),
    )
    mistakes = tuple(Mistake(m.name, m.explain, _wrong_head(pool=m.impl)) for m in POOL_MISTAKES) + (
        Mistake("softmax probabilities instead of logits", "return the raw scores (logits); the "
                "cross-entropy loss applies the (log-)softmax itself.", _wrong_head(probabilities=True)),
    )

    def cases(self, seed, hidden):
        g = torch.Generator().manual_seed(seed)
        out = []
        for i, (label, h, m) in enumerate(_pool_cases(g, hidden)):
            k = (2, 3, 5, 2, 4, 3, 2)[i]
            out.append(self.case(g, f"{label}, {k} classes", {"n_embd": h.shape[-1], "n_classes": k},
                                 (h,), h.dtype, attention_mask=m))
        return out


# ---------------------------------------------------------------------------------------
# 05.LoRALinear

def _wrong_lora(scale=None, merge_scaled=True, freeze_base=True, init=None):
    class WrongLoRALinear(L.LoRALinear):
        def __init__(self, in_features, out_features, r, alpha):
            super().__init__(in_features, out_features, r, alpha)
            if scale is not None:
                self.scaling = {"alpha": alpha, "r/alpha": r / alpha, "1": 1.0}[scale]
            if not freeze_base:
                self.weight.requires_grad_(True)
                self.bias.requires_grad_(True)
            with torch.no_grad():
                if init in ("B random", "A zero, B random"):
                    nn.init.kaiming_uniform_(self.lora_B, a=5 ** 0.5)
                if init in ("A zero, B random", "both zero"):
                    self.lora_A.zero_()

        @torch.no_grad()
        def merge(self):
            out = super().merge()
            if not merge_scaled:
                out.weight.copy_(self.weight + self.lora_B @ self.lora_A)
            return out
    return WrongLoRALinear


@register
class LoRALinearExercise(ModuleExercise):
    """A LoRA linear layer: forward, merge, trainable parameters."""
    id = "05.LoRALinear"
    entry = "LoRALinear"
    init = ("in_features", "out_features", "r", "alpha")
    reference = L.LoRALinear
    forbid = NO_COURSE_ANSWERS + (
        Rule("peft", "write the adapter yourself instead of Hugging Face peft"),
    )
    mistakes = (
        Mistake("scaled by alpha instead of alpha / r", "the update is (alpha / r) * B A: dividing "
                "by r keeps its size the same when you change the rank.", _wrong_lora(scale="alpha")),
        Mistake("no alpha / r scaling", "multiply the low-rank path by alpha / r.",
                _wrong_lora(scale="1")),
        Mistake("merged weight without the scaling", "merge() must add (alpha / r) * B @ A, the "
                "same update forward() applies.", _wrong_lora(merge_scaled=False)),
        Mistake("frozen weights left trainable", "weight and bias are the pre-trained layer: "
                "create them with requires_grad=False; only lora_A and lora_B train.",
                _wrong_lora(freeze_base=False)),
        Mistake("lora_B not initialised to zero", "B = 0 at the start makes the adapted layer "
                "equal the pre-trained one before training; initialise A randomly, B with zeros.",
                _wrong_lora(init="B random")),
        Mistake("both A and B initialised to zero", "with A = B = 0 the gradients of both are 0 "
                "and the adapter never learns; initialise A randomly.", _wrong_lora(init="both zero")),
    )

    def call(self, fn, case):
        kw = dict(case.kwargs)
        init = {k: kw.pop(k) for k in self.init}
        params = {k[len(PARAM):]: kw.pop(k) for k in list(kw) if k.startswith(PARAM)}
        (x,) = case.args
        with torch.random.fork_rng(devices=[]):  # the learner's init must not move their seed
            torch.manual_seed(0)
            module = self.build(fn, init)
        if not isinstance(module, nn.Module):
            raise SpecError(f"{self.entry}(...) should build a torch.nn.Module, got "
                            f"{type(module).__name__}")
        module = module.to(x.dtype)
        have = dict(module.named_parameters())
        trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
        b0 = bool((have["lora_B"] == 0).all()) if "lora_B" in have else None
        a0 = bool((have["lora_A"] != 0).any()) if "lora_A" in have else None
        with torch.no_grad():
            try:
                load_params(module, params, self.optional, self.entry)
            except SpecError:
                try:  # a stub whose forward is still `raise NotImplementedError`: say so instead
                    module(x)
                except NotImplementedError:
                    raise
                except Exception:
                    pass
                raise
            y = module.eval()(x)
            merged = module.merge()
            if not isinstance(merged, nn.Linear):
                raise SpecError(f"merge() should return a torch.nn.Linear, got {type(merged).__name__}")
            return {"output": y, "merged_weight": merged.weight.detach().clone(),
                    "merged_output": merged(x), "trainable_parameters": trainable,
                    "lora_B_zero_at_init": b0, "lora_A_nonzero_at_init": a0}

    def cases(self, seed, hidden):
        g = torch.Generator().manual_seed(seed)

        def case(label, n_in, n_out, r, alpha, *lead, dtype=F32):
            init = {"in_features": n_in, "out_features": n_out, "r": r, "alpha": alpha}
            # float32: the two paths (x A^T B^T vs x (W + s B A)^T) round differently: atol 1e-5
            tol = dict(rtol=1e-5, atol=1e-5) if dtype == F32 else {}
            return self.case(g, label, init, (_randn(g, *lead, n_in, dtype=dtype),), dtype, **tol)

        cases = [
            case("in 6, out 4, r 2, alpha 8; x (3, 6)", 6, 4, 2, 8.0, 3),
            case("in 5, out 7, r 3, alpha 6; x (2, 4, 5)", 5, 7, 3, 6.0, 2, 4),
        ]
        if hidden:
            cases += [
                case("float64, in 16, out 16, r 4, alpha 16; x (2, 3, 16)", 16, 16, 4, 16.0, 2, 3,
                     dtype=F64),
                case("r 1, alpha 2; x (5, 3)", 3, 9, 1, 2.0, 5),
                case("float64, r 8 > in 4; x (1, 4)", 4, 10, 8, 4.0, 1, dtype=F64),
            ]
        return cases


# ---------------------------------------------------------------------------------------
# 05.chat_tokens

def _chat_with(messages, add_generation_prompt=False, *, header_in_loss=False, end_in_loss=True,
               every_message=False, invert=False, end=True, gen_prompt=True, chars=False,
               int_mask=False):
    ids, mask = [], []
    for m in messages:
        head = FT.header(m["role"]).encode()
        text = m["content"] + (FT.END if end else "")
        body = text.encode()
        counts = every_message or m["role"] == "assistant"
        ids += list(head) + list(body)
        n_body = len(text) if chars else len(body)
        if counts and not end_in_loss:
            body_mask = [True] * len(m["content"].encode()) + [False] * len(FT.END)
        else:
            body_mask = [counts] * n_body
        mask += [header_in_loss and counts] * len(head) + body_mask
    if add_generation_prompt and gen_prompt:
        head = FT.header("assistant").encode()
        ids += list(head)
        mask += [False] * len(head)
    mask = torch.tensor(mask, dtype=torch.bool)
    if invert:
        mask = ~mask
    return torch.tensor(ids, dtype=torch.long), mask.long() if int_mask else mask


def _chat_mistake(**how):
    def wrong(messages, add_generation_prompt=False):
        return _chat_with(messages, add_generation_prompt, **how)
    return wrong


def _msgs(*pairs):
    return [{"role": r, "content": c} for r, c in pairs]


@register
class ChatTokens(Exercise):
    """Chat template and the assistant-only loss mask."""
    id = "05.chat_tokens"
    entry = "chat_tokens"
    forbid = NO_COURSE_ANSWERS + (
        Rule("transformers", "render the template yourself instead of Hugging Face's"),
        Rule(".apply_chat_template", "render the template yourself"),
    )
    mistakes = (
        Mistake("role headers in the loss", "the header <|assistant|> is part of the prompt (the "
                "template writes it, not the model): mask it False.", _chat_mistake(header_in_loss=True)),
        Mistake("<|end|> left out of the loss", "the model must learn to STOP: the <|end|> after "
                "each assistant reply counts in the loss.", _chat_mistake(end_in_loss=False)),
        Mistake("every message in the loss", "only the assistant's replies count; the user's and "
                "the system's messages are given, not predicted.", _chat_mistake(every_message=True)),
        Mistake("no <|end|> after the messages", "every message, of every role, ends with <|end|>.",
                _chat_mistake(end=False)),
        Mistake("generation prompt ignored", "with add_generation_prompt=True append the header "
                "<|assistant|> (mask False) so the model writes the reply next.",
                _chat_mistake(gen_prompt=False)),
        Mistake("mask counts characters, not bytes", "the ids are UTF-8 bytes: a non-ASCII "
                "character such as 'é' is 2 bytes, so build the mask per byte (len(s.encode())).",
                _chat_mistake(chars=True)),
    )

    def reference(self, messages, add_generation_prompt=False):
        return FT.chat_tokens(messages, add_generation_prompt)

    def cases(self, seed, hidden):
        cases = [
            Case("one exchange", (_msgs(("user", "What is 2 + 3?"), ("assistant", "5")),)),
            Case("system, user, assistant", (_msgs(("system", "Be brief."),
                                                   ("user", "Is this review positive or negative? "
                                                            "The soup was great."),
                                                   ("assistant", "positive")),)),
            Case("two turns, non-ASCII text", (_msgs(("user", "Say café."), ("assistant", "café"),
                                                     ("user", "Again?"), ("assistant", "Oui, café!")),)),
            Case("a prompt for generation", (_msgs(("user", "What is 7 * 6?")),),
                 {"add_generation_prompt": True}),
        ]
        if hidden:
            cases += [
                Case("an empty reply", (_msgs(("user", "Say nothing."), ("assistant", "")),)),
                Case("generation prompt after a finished exchange",
                     (_msgs(("system", "You rate reviews."), ("user", "The food was bad."),
                            ("assistant", "negative"), ("user", "The staff was nice.")),),
                     {"add_generation_prompt": True}),
                Case("three turns", (_msgs(("user", "1 + 1?"), ("assistant", "2"), ("user", "2 + 2?"),
                                           ("assistant", "4"), ("user", "3 + 3?"),
                                           ("assistant", "6 — easy")),)),
                Case("only a system message", (_msgs(("system", "Hello, naïve model.")),)),
            ]
        return cases


# ---------------------------------------------------------------------------------------
# 05.masked_lm_loss

def _nll(logits, targets):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           reduction="none").reshape(targets.shape)


def _mlm_mask_ignored(logits, targets, loss_mask):
    return _nll(logits, targets).mean()


def _mlm_per_sequence(logits, targets, loss_mask):
    m = loss_mask.to(logits.dtype)
    return ((_nll(logits, targets) * m).sum(-1) / m.sum(-1)).mean()


def _mlm_sum(logits, targets, loss_mask):
    return (_nll(logits, targets) * loss_mask).sum()


def _mlm_all_positions(logits, targets, loss_mask):
    return (_nll(logits, targets) * loss_mask).sum() / loss_mask.numel()


def _mlm_inverted(logits, targets, loss_mask):
    return FT.masked_lm_loss(logits, targets, ~loss_mask)


def _mlm_zero_targets(logits, targets, loss_mask):
    return _nll(logits, targets.masked_fill(~loss_mask, 0)).mean()


@register
class MaskedLMLoss(Exercise):
    """Next-token loss over the response tokens only."""
    id = "05.masked_lm_loss"
    entry = "masked_lm_loss"
    forbid = NO_COURSE_ANSWERS
    mistakes = (
        Mistake("mask ignored: mean over every position", "only positions where loss_mask is True "
                "count: sum their losses and divide by how many there are.", _mlm_mask_ignored),
        Mistake("mean of per-sequence means", "average over all counted TOKENS of the batch at "
                "once (sum / mask.sum()); a mean of per-sequence means weights a short reply as "
                "much as a long one, and is nan for a sequence with no counted token.",
                _mlm_per_sequence),
        Mistake("sum instead of mean", "divide the summed loss by the number of counted tokens.",
                _mlm_sum),
        Mistake("divided by every position, not the counted ones", "the denominator is "
                "loss_mask.sum(), not the number of positions.", _mlm_all_positions),
        Mistake("mask inverted", "True marks the targets that count (the response).", _mlm_inverted),
        Mistake("masked targets set to 0 but still counted", "replacing the prompt's targets by "
                "token 0 still trains the model to predict 0 there; drop those positions "
                "(or use ignore_index=-100 in F.cross_entropy).", _mlm_zero_targets),
    )

    def reference(self, logits, targets, loss_mask):
        return FT.masked_lm_loss(logits, targets, loss_mask)

    def cases(self, seed, hidden):
        g = torch.Generator().manual_seed(seed)

        def args(B, T, V, lengths, prompt, dtype=F32):
            """Sequence b: prompt[b] positions that do not count, then lengths[b] that do,
            then padding that does not."""
            t = torch.arange(T)
            mask = (t >= torch.tensor(prompt)[:, None]) & (
                t < (torch.tensor(prompt) + torch.tensor(lengths))[:, None])
            return (_randn(g, B, T, V, dtype=dtype, scale=2.0),
                    torch.randint(0, V, (B, T), generator=g), mask)

        cases = [
            Case("(2, 6, 5): prompts of 2 and 4, replies of 3 and 1", args(2, 6, 5, [3, 1], [2, 4])),
            Case("(3, 8, 11), replies of different lengths", args(3, 8, 11, [5, 2, 1], [1, 3, 6])),
            Case("one sequence, everything counts", args(1, 5, 7, [5], [0])),
        ]
        if hidden:
            cases += [
                Case("float64 (4, 10, 13)", args(4, 10, 13, [6, 1, 3, 9], [2, 5, 7, 0], dtype=F64)),
                Case("a sequence with no counted token", args(3, 6, 4, [2, 0, 4], [3, 6, 1])),
                Case("vocabulary of 256 bytes", args(2, 12, 256, [4, 8], [8, 2])),
            ]
        return cases

"""instruction.ipynb: the chat template with its assistant-only loss mask, and the
next-token loss over the response tokens only (mask True = a token that counts).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...reference import finetuning as finetuning_ref
from .. import register
from ..core import Case, Exercise, Mistake, Rule
from ..kit import F32, F64, generator, knob, randn


# ---------------------------------------------------------------------------------------
# 05.chat_tokens

def _chat_with(messages, add_generation_prompt=False, *, header_in_loss=False, end_in_loss=True,
               every_message=False, invert=False, end=True, gen_prompt=True, chars=False,
               int_mask=False):
    ids, mask = [], []
    for m in messages:
        head = finetuning_ref.header(m["role"]).encode()
        text = m["content"] + (finetuning_ref.END if end else "")
        body = text.encode()
        counts = every_message or m["role"] == "assistant"
        ids += list(head) + list(body)
        n_body = len(text) if chars else len(body)
        if counts and not end_in_loss:
            body_mask = [True] * len(m["content"].encode()) + [False] * len(finetuning_ref.END)
        else:
            body_mask = [counts] * n_body
        mask += [header_in_loss and counts] * len(head) + body_mask
    if add_generation_prompt and gen_prompt:
        head = finetuning_ref.header("assistant").encode()
        ids += list(head)
        mask += [False] * len(head)
    mask = torch.tensor(mask, dtype=torch.bool)
    if invert:
        mask = ~mask
    return torch.tensor(ids, dtype=torch.long), mask.long() if int_mask else mask


def _msgs(*pairs):
    return [{"role": r, "content": c} for r, c in pairs]


@register
class ChatTokens(Exercise):
    """Chat template and the assistant-only loss mask."""
    id = "05.chat_tokens"
    entry = "chat_tokens"
    forbid = (
        Rule("transformers", "render the template yourself instead of Hugging Face's"),
        Rule(".apply_chat_template", "render the template yourself"),
    )
    mistakes = (
        Mistake("role headers in the loss", "the header <|assistant|> is part of the prompt (the "
                "template writes it, not the model): mask it False.", knob(_chat_with, header_in_loss=True)),
        Mistake("<|end|> left out of the loss", "the model must learn to STOP: the <|end|> after "
                "each assistant reply counts in the loss.", knob(_chat_with, end_in_loss=False)),
        Mistake("every message in the loss", "only the assistant's replies count; the user's and "
                "the system's messages are given, not predicted.", knob(_chat_with, every_message=True)),
        Mistake("no <|end|> after the messages", "every message, of every role, ends with <|end|>.",
                knob(_chat_with, end=False)),
        Mistake("generation prompt ignored", "with add_generation_prompt=True append the header "
                "<|assistant|> (mask False) so the model writes the reply next.",
                knob(_chat_with, gen_prompt=False)),
        Mistake("mask counts characters, not bytes", "the ids are UTF-8 bytes: a non-ASCII "
                "character such as 'é' is 2 bytes, so build the mask per byte (len(s.encode())).",
                knob(_chat_with, chars=True)),
    )

    def reference(self, messages, add_generation_prompt=False):
        return finetuning_ref.chat_tokens(messages, add_generation_prompt)

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
    return finetuning_ref.masked_lm_loss(logits, targets, ~loss_mask)


def _mlm_zero_targets(logits, targets, loss_mask):
    return _nll(logits, targets.masked_fill(~loss_mask, 0)).mean()


@register
class MaskedLMLoss(Exercise):
    """Next-token loss over the response tokens only."""
    id = "05.masked_lm_loss"
    entry = "masked_lm_loss"
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
        return finetuning_ref.masked_lm_loss(logits, targets, loss_mask)

    def cases(self, seed, hidden):
        g = generator(seed)

        def args(B, T, V, lengths, prompt, dtype=F32):
            """Sequence b: prompt[b] positions that do not count, then lengths[b] that do,
            then padding that does not."""
            t = torch.arange(T)
            mask = (t >= torch.tensor(prompt)[:, None]) & (
                t < (torch.tensor(prompt) + torch.tensor(lengths))[:, None])
            return (randn(g, B, T, V, dtype=dtype, scale=2.0),
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

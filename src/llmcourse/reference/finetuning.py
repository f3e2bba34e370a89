"""Chapter 05: fine-tuning a pre-trained GPT, for classification and for instructions.

Classification. The synthetic language's reviews end in "Rating: N stars." where N is
computed compositionally from the sentiment words (see :mod:`llmcourse.data.synthetic`).
:func:`review_dataset` strips that suffix, so the model has to infer the rating from the
text, and labels a review positive (N >= 4, label 1) or negative (N <= 2, label 0); the
neutral 3-star reviews are left out. A GPT reads left to right, so the only position that
has seen the whole review is the last one: the classifier pools the hidden state of the
**last non-padding token** (:func:`last_token_pool`, as Hugging Face's
``GPT2ForSequenceClassification`` does) and applies a linear ``score`` layer without bias.

Instruction tuning. :func:`chat_tokens` renders a conversation with the course's chat
template and returns the byte ids together with a loss mask that is True exactly on the
bytes the assistant wrote (its replies and their end markers); :func:`masked_lm_loss`
averages the next-token loss over those positions only.
"""

from __future__ import annotations

import random
import re

import torch
import torch.nn.functional as F
from torch import nn

from ..data.synthetic import documents, domain_of
from .gpt import hidden_states as gpt_hidden_states  # (B, T) -> (B, T, C), after ln_f

PAD_ID = 0  # byte 0 never occurs in the course's text
NEGATIVE, POSITIVE = 0, 1
LABEL_NAMES = ("negative", "positive")
_RATING = re.compile(r" Rating: ([1-5]) stars?\.\n$")


# ---------------------------------------------------------------------------------------
# Review sentiment data

def split_review(doc: str) -> tuple[str, int]:
    """A review document -> (its text without " Rating: ..." and the newline, its stars)."""
    m = _RATING.search(doc)
    if m is None or domain_of(doc) != "review":
        raise ValueError(f"not a review: {doc[:40]!r}")
    return doc[:m.start()], int(m.group(1))


def sentiment_label(stars: int) -> int | None:
    """1 (positive) for 4-5 stars, 0 (negative) for 1-2 stars, None for 3 stars."""
    return POSITIVE if stars >= 4 else NEGATIVE if stars <= 2 else None


def review_dataset(n_docs: int, seed: int, max_len: int = 128) -> tuple[list[str], list[int]]:
    """Texts and binary labels of the non-neutral reviews among the first ``n_docs``
    documents of seed ``seed`` whose text is at most ``max_len`` bytes."""
    texts, labels = [], []
    for doc in documents(n_docs, seed):
        if domain_of(doc) != "review":
            continue
        text, stars = split_review(doc)
        label = sentiment_label(stars)
        if label is not None and len(text) <= max_len:
            texts.append(text)
            labels.append(label)
    return texts, labels


def pad_batch(seqs: list[torch.Tensor], pad_id: int = PAD_ID) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad 1-D id tensors to the longest: ids (B, T) int64 and mask (B, T) bool
    (True = real token)."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), T, dtype=torch.bool)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = s
        mask[i, :len(s)] = True
    return ids, mask


# ---------------------------------------------------------------------------------------
# Pooling and the classification head

def last_token_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Hidden state of each sequence's last real token.

    hidden (B, T, C); attention_mask (B, T) bool, True = real token, at least one per row.
    Returns (B, C): row b is hidden[b, t_b] with t_b the rightmost True of mask[b], which
    works for right padding and left padding alike."""
    T = attention_mask.shape[-1]
    positions = torch.arange(T, device=attention_mask.device)
    last = torch.where(attention_mask, positions, -1).amax(dim=-1)  # (B,)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


class ClassificationHead(nn.Module):
    """Last-token pooling then a linear ``score`` layer without bias (HF's GPT2 naming).

    forward(hidden (B, T, n_embd), attention_mask (B, T) bool) -> logits (B, n_classes)."""

    def __init__(self, n_embd: int, n_classes: int):
        super().__init__()
        self.score = nn.Linear(n_embd, n_classes, bias=False)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.score(last_token_pool(hidden, attention_mask))


class GPTClassifier(nn.Module):
    """A pre-trained GPT body with a classification head (its LM head is not used).

    forward(idx (B, T) int64, attention_mask (B, T) bool) -> logits (B, n_classes). Padding
    must be on the right: causal attention then keeps it out of every real token's view, so
    the body needs no attention mask; only the pooling has to know where the text ends."""

    def __init__(self, gpt: nn.Module, n_classes: int):
        super().__init__()
        self.gpt = gpt
        self.head = ClassificationHead(gpt.config.n_embd, n_classes)
        nn.init.normal_(self.head.score.weight, std=0.02)

    def forward(self, idx: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(gpt_hidden_states(self.gpt, idx), attention_mask)


def set_trainable(model: GPTClassifier, mode: str) -> int:
    """Freeze for a linear probe (``"probe"``: only the head trains) or unfreeze everything
    (``"full"``: full fine-tuning, the standard way to fine-tune BERT or GPT). Returns the
    number of trainable parameters."""
    if mode not in ("probe", "full"):
        raise ValueError("mode is 'probe' or 'full'")
    for p in model.gpt.parameters():
        p.requires_grad_(mode == "full")
    for p in model.head.parameters():
        p.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ---------------------------------------------------------------------------------------
# Instruction tuning: the chat template and the loss mask

ROLES = ("system", "user", "assistant")
END = "<|end|>"


def header(role: str) -> str:
    return f"<|{role}|>"


# The same template in Jinja, for Hugging Face's renderer (tests compare the two);
# {% generation %} marks the assistant's tokens.
CHAT_TEMPLATE_JINJA = (
    "{% for m in messages %}<|{{ m['role'] }}|>"
    "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}<|end|>{% endgeneration %}"
    "{% else %}{{ m['content'] }}<|end|>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def chat_text(messages: list[dict], add_generation_prompt: bool = False) -> str:
    """The conversation as text: ``<|role|>content<|end|>`` per message, then
    ``<|assistant|>`` if ``add_generation_prompt`` (the model writes the reply after it)."""
    return "".join(header(m["role"]) + m["content"] + END for m in messages) + (
        header("assistant") if add_generation_prompt else "")


def chat_tokens(messages: list[dict], add_generation_prompt: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Byte ids (T,) int64 of :func:`chat_text`, and a loss mask (T,) bool that is True on
    the bytes of every assistant message's content and its ``<|end|>`` marker (so the model
    learns to stop), False on the role headers, the other messages and the generation
    prompt."""
    ids, mask = [], []
    for m in messages:
        if m["role"] not in ROLES:
            raise ValueError(f"unknown role {m['role']!r}; roles are {ROLES}")
        head, body = header(m["role"]).encode(), (m["content"] + END).encode()
        ids += list(head) + list(body)
        mask += [False] * len(head) + [m["role"] == "assistant"] * len(body)
    if add_generation_prompt:
        head = header("assistant").encode()
        ids += list(head)
        mask += [False] * len(head)
    return torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.bool)


def masked_lm_loss(logits: torch.Tensor, targets: torch.Tensor, loss_mask: torch.Tensor
                   ) -> torch.Tensor:
    """Mean next-token cross-entropy over the positions where ``loss_mask`` is True.

    logits (B, T, V), targets (B, T) int64, loss_mask (B, T) bool aligned with the targets
    (True = target t counts). One mean over all counted tokens of the batch (what Hugging
    Face computes from labels set to -100 elsewhere), not a mean of per-sequence means."""
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                          reduction="none")
    m = loss_mask.reshape(-1)
    return (nll * m).sum() / m.sum()


def sft_example(messages: list[dict], block_size: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One training example: inputs x = ids[:-1], targets y = ids[1:] and the mask shifted
    with the targets, mask[1:] (target t is byte t + 1). Truncated to ``block_size``."""
    ids, mask = chat_tokens(messages)
    if block_size is not None:
        ids, mask = ids[:block_size + 1], mask[:block_size + 1]
    return ids[:-1], ids[1:], mask[1:]


def sft_batch(examples: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad examples from :func:`sft_example` to (B, T); padding gets mask False."""
    x, _ = pad_batch([e[0] for e in examples])
    y, _ = pad_batch([e[1] for e in examples])
    m, _ = pad_batch([e[2].long() for e in examples])
    return x, y, m.bool()


def instruction_data(n: int, seed: int) -> list[list[dict]]:
    """``n`` conversations of two kinds, alternating: the sentiment of a review
    ("Positive or negative? <review>" -> "positive" / "negative") and the animal of a story
    ("Which animal? <a story's first sentence>" -> e.g. "dog"), made from the synthetic
    language's documents of seed ``seed``. Each fits the tiny GPT's 128-byte context."""
    rng = random.Random(seed)
    texts, labels = review_dataset(20 * n, seed, max_len=64)
    stories = []
    for doc in documents(20 * n, seed):
        if domain_of(doc) == "story":
            first = doc.split(". ", 1)[0] + "."
            if len(first) <= 72:
                stories.append((first, first.split(" named ")[0].rsplit(" ", 1)[1]))
    out = []
    for i in range(n):
        if i % 2 == 0:
            j = rng.randrange(len(texts))
            review = texts[j].removeprefix("Review: ")
            prompt, answer = f"Positive or negative? {review}", LABEL_NAMES[labels[j]]
        else:
            story, animal = stories[rng.randrange(len(stories))]
            prompt, answer = f"Which animal? {story}", animal
        out.append([{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}])
    return out


@torch.no_grad()
def generate_reply(gpt: nn.Module, messages: list[dict], max_new_tokens: int = 12) -> str:
    """Greedy reply of ``gpt`` to a conversation, cut at the first ``<|end|>``."""
    ids, _ = chat_tokens(messages, add_generation_prompt=True)
    out = gpt.generate(ids[None], max_new_tokens)[0, len(ids):]
    text = bytes(int(i) for i in out).decode("utf-8", errors="replace")
    return text.split(END)[0]

"""Chapters 04 and 03's challenges, the instructor's solution: pre-train a small neural
language model on the training text within a time budget, then predict the next byte.

``fit_and_predict(train_text, contexts, ...)`` trains a byte-level MLP language model in the
style of Bengio et al. (chapter 01's :class:`~llmcourse.reference.mlp_lm.MLPLanguageModel`:
the last ``context`` bytes, embedded and concatenated, one tanh layer, logits over 256 bytes)
with AdamW, linear warm-up and cosine decay (chapter 04), on random windows of the text. A
share ``word_start_share`` of each batch's windows ends right after a space: the challenge
measures the next byte at word starts, so the training distribution leans towards where the
figure is taken. Fixed number of steps, seeded: the same text gives the same answer.
Returns log-probabilities of shape (len(contexts), 256), float64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .mlp_lm import MLPLanguageModel
from .training import cosine_lr

VOCAB = 256
PAD = 0  # the byte that stands before the start of a text


def _ids(text: str) -> torch.Tensor:
    return torch.tensor([min(ord(c), VOCAB - 1) for c in text], dtype=torch.long)


def _windows(texts: list[str], context: int) -> torch.Tensor:
    """The last ``context`` bytes of each text, left-padded with PAD: (len(texts), context)."""
    rows = [[PAD] * max(0, context - len(t)) + [min(ord(c), VOCAB - 1) for c in t[-context:]]
            for t in texts]
    return torch.tensor(rows, dtype=torch.long)


def fit_and_predict(train_text: str, contexts: list[str], *, context: int = 16, embed: int = 16,
                    hidden: int = 256, steps: int = 800, batch: int = 256, lr: float = 4e-3,
                    warmup: int = 100, word_start_share: float = 0.9, seed: int = 0
                    ) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = MLPLanguageModel(VOCAB, context, embed, hidden)
    ids = torch.cat([torch.full((context,), PAD, dtype=torch.long), _ids(train_text)])
    n = ids.numel() - context  # window i = ids[i : i + context], its target ids[i + context]
    after_space = (ids[context - 1:-1] == ord(" ")).nonzero()[:, 0]
    offsets = torch.arange(context + 1)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    n_ws = int(round(batch * word_start_share)) if after_space.numel() else 0
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, lr, warmup, steps, min_lr=lr / 10)
        starts = torch.cat([after_space[torch.randint(after_space.numel(), (n_ws,), generator=g)],
                            torch.randint(n, (batch - n_ws,), generator=g)])
        w = ids[starts[:, None] + offsets]
        loss = F.cross_entropy(model(w[:, :-1]), w[:, -1])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return torch.log_softmax(model(_windows(contexts, context)).double(), dim=-1)

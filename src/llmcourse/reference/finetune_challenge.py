"""Chapter 05 challenge: the instructor's fine-tuning recipe for review sentiment.

``fit_and_predict`` starts from the course's pre-trained tiny GPT (:mod:`llmcourse.pretrained`)
and adds a classification head (last-token pooling, :mod:`.finetuning`). The lower blocks stay
frozen, so their outputs are computed **once** for every review (a cache of activations); the
top ``train_blocks`` blocks, the final LayerNorm and the head are fine-tuned on the cache with
AdamW (warm-up + cosine), with early stopping on the validation split (the checkpoint of the
best validation accuracy is kept). ``train_blocks=0`` is a linear probe (the head only).
Returns the test logits (N, 2).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..pretrained import tiny_gpt
from . import finetuning as ft
from .training import encode


@torch.no_grad()
def _frozen_features(gpt, texts: list[str], n_frozen: int, batch: int = 256):
    """The output of the first ``n_frozen`` blocks for every text (right-padded to the
    longest text: causal attention keeps the padding out of every real token's view)."""
    ids, mask = ft.pad_batch([encode(t) for t in texts], pad_id=ft.PAD_ID)
    tr = gpt.transformer
    out = []
    for i in range(0, len(texts), batch):
        x = tr.wte(ids[i:i + batch]) + tr.wpe(torch.arange(ids.shape[1]))
        for block in tr.h[:n_frozen]:
            x, _ = block(x, None)
        out.append(x)
    return torch.cat(out), mask


class _Top(nn.Module):
    def __init__(self, gpt, n_frozen: int):
        super().__init__()
        self.blocks = nn.ModuleList(gpt.transformer.h[n_frozen:])
        self.ln_f = gpt.transformer.ln_f
        self.head = ft.ClassificationHead(gpt.config.n_embd, 2)
        nn.init.normal_(self.head.score.weight, std=0.02)

    def forward(self, x, mask):
        for block in self.blocks:
            x, _ = block(x, None)
        return self.head(self.ln_f(x), mask)


@torch.no_grad()
def _predict(top, x, mask, batch: int = 256) -> torch.Tensor:
    top.eval()
    return torch.cat([top(x[i:i + batch], mask[i:i + batch]) for i in range(0, len(x), batch)])


def fit_and_predict(train_texts, train_labels, valid_texts, valid_labels, test_texts, *,
                    train_blocks: int = 1, steps: int = 200, lr: float = 1e-3,
                    batch_size: int = 32, eval_every: int = 25, seed: int = 0,
                    train: bool = True) -> torch.Tensor:
    """Logits (len(test_texts), 2), float32. ``train=False``: the random head, untrained."""
    torch.manual_seed(seed)
    gpt = tiny_gpt()
    n_frozen = gpt.config.n_layer - train_blocks
    for p in gpt.parameters():
        p.requires_grad_(False)
    top = _Top(gpt, n_frozen)
    for p in top.parameters():
        p.requires_grad_(True)
    xs = {k: _frozen_features(gpt, t, n_frozen)
          for k, t in (("train", train_texts), ("valid", valid_texts), ("test", test_texts))}
    if not train:
        return _predict(top, *xs["test"])
    x, mask = xs["train"]
    y, yv = torch.as_tensor(train_labels).long(), torch.as_tensor(valid_labels).long()
    opt = torch.optim.AdamW(top.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(seed)
    best, best_state = -1.0, None
    for step in range(1, steps + 1):
        top.train()
        idx = torch.randint(len(x), (batch_size,), generator=g)
        m = mask[idx]
        T = int(m.sum(-1).max())  # trim the batch's common padding
        loss = F.cross_entropy(top(x[idx, :T], m[:, :T]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % eval_every == 0 or step == steps:  # early stopping: keep the best checkpoint
            acc = (_predict(top, *xs["valid"]).argmax(-1) == yv).float().mean().item()
            if acc > best:
                best, best_state = acc, copy.deepcopy(top.state_dict())
    top.load_state_dict(best_state)
    return _predict(top, *xs["test"])

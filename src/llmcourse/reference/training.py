"""Training a small language model on a token stream: the loop every later chapter reuses.

Byte-level tokens (``encode``/``decode``: a token is one UTF-8 byte, vocabulary 256), random
windows from the stream (``get_batch``), linear warm-up then cosine decay (``cosine_lr``), and
``train_lm`` / ``evaluate_lm`` for a model that maps ids (B, T) to logits (B, T, V).

Chapter 04 asks learners to write these pieces themselves (and AdamW from scratch); this
module is the reference later chapters import, so a learner stuck in chapter 04 can still do
chapters 05-07.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

VOCAB_SIZE = 256  # one token per byte


def encode(text: str) -> torch.Tensor:
    """Text -> its UTF-8 bytes as a 1-D int64 tensor."""
    return torch.tensor(list(text.encode("utf-8")), dtype=torch.long)


def decode(ids) -> str:
    """Byte ids -> text (bytes that do not form valid UTF-8 become U+FFFD)."""
    return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


def get_batch(tokens: torch.Tensor, batch_size: int, block_size: int,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_size`` random windows of a 1-D stream: inputs x (B, T) and targets y = x shifted
    left by one (y[b, t] = tokens[start_b + t + 1])."""
    if tokens.ndim != 1 or len(tokens) < block_size + 1:
        raise ValueError(f"need a 1-D stream of at least block_size + 1 = {block_size + 1} tokens")
    starts = torch.randint(0, len(tokens) - block_size, (batch_size,), generator=generator)
    offsets = torch.arange(block_size + 1)
    windows = tokens[starts[:, None] + offsets]  # (B, T + 1)
    return windows[:, :-1], windows[:, 1:]


def cosine_lr(step: int, max_lr: float, warmup_steps: int, total_steps: int,
              min_lr: float = 0.0) -> float:
    """Learning rate at ``step`` (0-based): linear warm-up to ``max_lr`` over ``warmup_steps``
    (step 0 gets max_lr / warmup_steps), then half a cosine from max_lr down to ``min_lr`` at
    ``total_steps``; ``min_lr`` after that."""
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + 0.5 * (max_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def eval_windows(tokens: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Consecutive non-overlapping windows of a 1-D stream for evaluation.

    n = (len(tokens) - 1) // block_size windows; x[k] = tokens[k*T : k*T + T] and
    y[k] = tokens[k*T + 1 : k*T + T + 1] (T = block_size). Every token after the first is a
    target exactly once, up to the leftover tail. Returns (x, y), each (n, T) int64.
    """
    n = (tokens.numel() - 1) // block_size
    starts = torch.arange(n) * block_size
    windows = tokens[starts[:, None] + torch.arange(block_size + 1)]
    return windows[:, :-1], windows[:, 1:]


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy (nats) of logits (B, T, V) against targets (B, T)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def evaluate_lm(model: nn.Module, tokens: torch.Tensor, block_size: int, batch_size: int = 32,
                max_windows: int | None = None) -> float:
    """Mean cross-entropy (nats per token) over consecutive non-overlapping windows of a
    held-out stream: deterministic, every token scored once (up to ``max_windows``)."""
    x, y = eval_windows(tokens, block_size)
    return evaluate_windows(model, x, y, batch_size, max_windows)


@torch.no_grad()
def evaluate_windows(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 32,
                     max_windows: int | None = None) -> float:
    """Mean cross-entropy (nats per token) of ``model`` on given windows (x, y), e.g. a
    learner's own ``eval_windows`` (chapter 04's pre-training notebook passes them)."""
    was_training = model.training
    model.eval()
    if max_windows is not None:
        x, y = x[:max_windows], y[:max_windows]
    if len(x) == 0:
        raise ValueError("the stream is shorter than one window")
    total = 0.0
    for i in range(0, len(x), batch_size):
        logits = model(x[i:i + batch_size])
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y[i:i + batch_size].reshape(-1),
                                 reduction="sum").item()
    model.train(was_training)
    return total / y.numel()


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 32
    block_size: int = 128
    max_lr: float = 3e-3
    min_lr: float = 3e-4
    warmup_steps: int = 50
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0


@dataclass
class History:
    step: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    seconds: float = 0.0


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only (not on biases, LayerNorm or embeddings'
    ... tied heads are matrices too: decayed), as in GPT-2/nanoGPT."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    other = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": other, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.max_lr, betas=(0.9, 0.95))


def train_lm(model: nn.Module, tokens: torch.Tensor, cfg: TrainConfig,
             optimizer: torch.optim.Optimizer | None = None, start_step: int = 0,
             stop_step: int | None = None, history: History | None = None,
             loss_fn=None) -> History:
    """Train ``model`` on random windows of ``tokens`` for steps [start_step, stop_step).

    Resumable: call it again with the same optimizer and history and a later ``start_step``
    (notebooks train in chunks that each fit a cell's time limit). ``loss_fn(model, x, y)``
    replaces the plain next-token loss (distillation passes its own)."""
    def batches(gen: torch.Generator):
        return get_batch(tokens, cfg.batch_size, cfg.block_size, gen)

    return train_steps(model, batches, cfg, optimizer, start_step, stop_step, history, loss_fn)


def train_steps(model: nn.Module, batches, cfg: TrainConfig,
                optimizer: torch.optim.Optimizer | None = None, start_step: int = 0,
                stop_step: int | None = None, history: History | None = None,
                loss_fn=None) -> History:
    """:func:`train_lm` with the batches from ``batches(gen) -> (x, y)``, a generator seeded
    by the step alone (chapter 04's pre-training notebook passes the learner's get_batch)."""
    optimizer = optimizer or make_optimizer(model, cfg)
    history = history or History()
    stop = cfg.steps if stop_step is None else min(stop_step, cfg.steps)
    gen = torch.Generator()
    model.train()
    t0 = time.perf_counter()
    for step in range(start_step, stop):
        lr = cosine_lr(step, cfg.max_lr, cfg.warmup_steps, cfg.steps, cfg.min_lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        gen.manual_seed(cfg.seed * 1_000_003 + step)  # batch depends on the step alone
        x, y = batches(gen)
        loss = loss_fn(model, x, y) if loss_fn is not None else lm_loss(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        history.step.append(step)
        history.loss.append(loss.item())
        history.lr.append(lr)
    history.seconds += time.perf_counter() - t0
    return history

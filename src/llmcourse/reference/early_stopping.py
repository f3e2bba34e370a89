"""Chapter 05: a train / validation split and early stopping (早停) on the validation loss.

Model selection must not look at the test set. :func:`train_valid_split` holds out a
validation set (验证集) from the training data, deterministically from a seed (the same
permutation as ``torch.utils.data.random_split`` with a generator seeded alike), and the
early-stopping rule :func:`early_stopping` reads the validation loss of each evaluation
(every epoch, or every k steps) and says when to stop and which checkpoint to restore.

The rule (Keras's ``EarlyStopping(monitor="val_loss", patience, min_delta,
restore_best_weights=True)``):

* evaluation 0 is the first best; evaluation ``e`` **improves** when
  ``val_loss[e] < best - min_delta`` (strictly: a tie is no improvement), and only then
  becomes the new best;
* every evaluation without an improvement adds one to a counter that an improvement resets;
  training stops at the first evaluation where the counter reaches ``patience``;
* the checkpoint to restore is the best evaluation, not the last one.

Hugging Face's ``EarlyStoppingCallback`` agrees exactly when ``min_delta = 0``. With a
threshold it differs in one respect: the Trainer's best checkpoint (``state.best_metric``)
moves on *any* strict improvement, and the patience counter compares each evaluation with
that moving best, so a slow steady improvement smaller than the threshold per evaluation
stops training (and restores the latest of those small improvements), where this rule keeps
the last improvement by more than ``min_delta`` as its reference.
"""

from __future__ import annotations

import torch


def train_valid_split(n: int, valid_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(train_idx, valid_idx)`` (int64, disjoint, together ``0..n-1``) of a seeded
    random split with ``round(valid_fraction * n)`` validation items (at least 1).

    The permutation is ``torch.randperm(n, generator=Generator().manual_seed(seed))``: the
    first ``n - n_valid`` entries train, the rest validate (``random_split``'s order)."""
    if not 0.0 < valid_fraction < 1.0 or n < 2:
        raise ValueError("need n >= 2 and 0 < valid_fraction < 1")
    n_valid = min(n - 1, max(1, round(valid_fraction * n)))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    return perm[:n - n_valid], perm[n - n_valid:]


def early_stopping(history: dict[str, list[float]], patience: int, min_delta: float = 0.0
                   ) -> tuple[int | None, int]:
    """Early stopping on ``history["val_loss"]`` (one value per evaluation, lower is better).

    Returns ``(stop, best)``: ``stop`` is the index of the evaluation after which training
    stops (``None`` if the rule never fires on this history) and ``best`` the index of the
    checkpoint to restore. Other keys of ``history`` (``train_loss``, ``test_loss``) are
    ignored: selecting on the test set would make the reported test score optimistic."""
    losses = [float(v) for v in history["val_loss"]]
    if not losses or patience < 1:
        raise ValueError("need at least one evaluation and patience >= 1")
    best, best_epoch, wait = losses[0], 0, 0
    for epoch in range(1, len(losses)):
        if losses[epoch] < best - min_delta:
            best, best_epoch, wait = losses[epoch], epoch, 0
        else:
            wait += 1
            if wait >= patience:
                return epoch, best_epoch
    return None, best_epoch

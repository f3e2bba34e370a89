"""Chapter 03: checkpoints (检查点) that resume a training run bit for bit.

A checkpoint must hold everything the rest of the run depends on:

* the model's parameters and buffers (``model.state_dict()``);
* the optimizer's state (AdamW's step counts and moment estimates; without them the first
  steps after a resume take different, larger updates);
* the position in the schedule (the step number: the learning rate and, in the course's
  trainer, the batches are functions of it);
* the random-number generators' states (torch's CPU generator, CUDA's when present, and
  Python's ``random``): dropout masks, data sampling and anything else drawn after the
  resume must be the numbers the uninterrupted run would have drawn.

Every tensor is COPIED (``state_dict()`` returns references to the live tensors: a
"checkpoint" that keeps those references changes as training goes on).
"""

from __future__ import annotations

import copy
import random
from pathlib import Path

import torch
from torch import nn


def rng_state() -> dict:
    """The states of torch's CPU generator, every CUDA generator and Python's ``random``."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_python_state(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_python_state(s):
    """``random.getstate()`` is (version, tuple of ints, gauss); a file round trip may turn the
    tuples into lists."""
    version, internal, gauss = s
    return (version, tuple(internal), gauss)


def save_checkpoint(model: nn.Module, optimizer: torch.optim.Optimizer, step: int,
                    path: str | Path | None = None) -> dict:
    """A dict with deep copies of the model's and optimizer's state, the next step to run and
    the RNG states; also written to ``path`` with ``torch.save`` when one is given."""
    ckpt = {"model": copy.deepcopy(model.state_dict()),
            "optimizer": copy.deepcopy(optimizer.state_dict()),
            "step": int(step), "rng": copy.deepcopy(rng_state())}
    if path is not None:
        torch.save(ckpt, path)
    return ckpt


def load_checkpoint(ckpt: dict | str | Path, model: nn.Module,
                    optimizer: torch.optim.Optimizer) -> int:
    """Restore model, optimizer and RNG states from a checkpoint (a dict or a file written by
    :func:`save_checkpoint`); return the step to continue from."""
    if not isinstance(ckpt, dict):
        ckpt = torch.load(ckpt, map_location="cpu", weights_only=False)
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(copy.deepcopy(ckpt["optimizer"]))
    set_rng_state(ckpt["rng"])
    return int(ckpt["step"])

"""The tiny GPT the course ships, pre-trained on the synthetic language (design section 5).

Chapters 05-07 start from a pre-trained model without waiting for one to train: ``tiny_gpt()``
loads ``llmcourse/data/tiny_gpt.pt`` (shipped data; this module, which builds it from the
reference GPT and trainer, stays out of ``llmcourse.data``). It was made by this module's
command, deterministically from the course's own data and seeds::

    python -m llmcourse.pretrained            # retrain and overwrite data/tiny_gpt.pt

The model reads bytes (vocabulary 256, :mod:`llmcourse.reference.training`), and was trained
on 2 MB of the synthetic language (seed 0) with AdamW, warm-up + cosine. The weights are
stored in float16 (half the size; loading restores float32).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from .data.synthetic import corpus
from .reference.gpt import GPT, GPTConfig
from .reference.training import TrainConfig, encode, evaluate_lm, train_lm

PATH = Path(__file__).parent / "data" / "tiny_gpt.pt"
TINY_GPT = GPTConfig(vocab_size=256, block_size=128, n_layer=4, n_head=4, n_embd=128)
TINY_TRAIN = TrainConfig(steps=800, batch_size=32, block_size=128, max_lr=3e-3, min_lr=3e-4,
                         warmup_steps=100, weight_decay=0.1, grad_clip=1.0, seed=0)
TRAIN_CHARS, TRAIN_SEED, VALID_SEED = 2_000_000, 0, 1


def tiny_gpt(path: str | Path | None = None) -> GPT:
    """The shipped pre-trained tiny GPT (float32, eval mode). Its ``info`` attribute holds
    how it was trained and its validation loss (nats per byte)."""
    path = Path(path or PATH)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `python -m llmcourse.pretrained`")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    model = GPT(GPTConfig(**blob["config"]))
    model.load_state_dict({k: v.float() for k, v in blob["state"].items()})
    model.info = dict(blob["info"])
    return model.eval()


def build(path: str | Path = PATH, steps: int | None = None, log=print) -> dict:
    """Train the tiny GPT from scratch (seeded) and save it; returns its ``info``."""
    torch.manual_seed(TINY_TRAIN.seed)
    cfg = TrainConfig(**{**TINY_TRAIN.__dict__, **({"steps": steps} if steps else {})})
    train = encode(corpus(TRAIN_CHARS, TRAIN_SEED))
    valid = encode(corpus(200_000, VALID_SEED))
    model = GPT(TINY_GPT)
    hist = train_lm(model, train, cfg)
    val = evaluate_lm(model, valid, cfg.block_size)
    info = {"steps": cfg.steps, "batch_size": cfg.batch_size, "block_size": cfg.block_size,
            "train_chars": TRAIN_CHARS, "train_seed": TRAIN_SEED, "valid_seed": VALID_SEED,
            "final_train_loss": sum(hist.loss[-50:]) / len(hist.loss[-50:]),
            "valid_loss": val, "train_seconds": round(hist.seconds, 1),
            "torch": str(torch.__version__)}
    state = {k: v.half() for k, v in model.state_dict().items()}
    torch.save({"config": TINY_GPT.__dict__, "state": state, "info": info}, path)
    log(f"saved {path} ({Path(path).stat().st_size / 1e6:.1f} MB): {info}")
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m llmcourse.pretrained",
                                description="retrain the shipped tiny GPT")
    p.add_argument("--out", type=Path, default=PATH)
    p.add_argument("--steps", type=int, help=f"training steps (default {TINY_TRAIN.steps})")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    build(args.out, args.steps)
    print(f"{time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""pretrain.ipynb: random training windows and consecutive evaluation windows.

The notebook trains with the course's GPT and training loop, fed by the learner's own
``get_batch`` and ``eval_windows``: those names may be imported there (``allow_reference``);
the answers (and ``train_lm`` / ``evaluate_lm``, which call them) stay off limits.
"""

from __future__ import annotations

import torch

from ...reference import pretraining as pretraining_ref
from ...reference import training as training_ref
from .. import register
from ..core import Case, Exercise, Mistake
from ..kit import SeededExercise, draw_seed, generator


# The pre-training notebook trains with the course's GPT and training loop: those names may
# be imported there; get_batch / eval_windows (the answers), and train_lm / evaluate_lm that
# call them, stay off limits (the notebook passes the learner's own to train_steps).
TRAINER_ALLOWED = ("gpt",) + tuple(f"training.{n}" for n in (
    "TrainConfig", "History", "VOCAB_SIZE", "encode", "decode", "evaluate_windows", "lm_loss",
    "make_optimizer", "train_steps"))
TRAINER_WHY = ("write it yourself instead of calling the course's reference (only its GPT and "
               "train_steps, evaluate_windows, encode, decode ... are allowed here)")


# ---------------------------------------------------------------------------------------
# 04.get_batch and 04.eval_windows

def _gb_unshifted(tokens, batch_size, block_size, generator):
    x, _ = training_ref.get_batch(tokens, batch_size, block_size, generator)
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
    x, y = training_ref.get_batch(tokens, batch_size, block_size, generator)
    return x.T.contiguous(), y.T.contiguous()


@register
class GetBatch(SeededExercise):
    """Random training windows from a token stream."""
    id = "04.get_batch"
    entry = "get_batch"
    allow_reference = TRAINER_ALLOWED
    reference_why = TRAINER_WHY
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
        return training_ref.get_batch(tokens, batch_size, block_size, generator)

    def cases(self, seed, hidden):
        g = generator(seed)

        def stream(n):
            return torch.randint(0, 256, (n,), generator=g)

        cases = [
            Case("1000 tokens, 8 windows of 16", (stream(1000), 8, 16), {"seed": draw_seed(g)}),
            Case("short stream, 4 windows of 5", (stream(20), 4, 5), {"seed": draw_seed(g)}),
            Case("one window of 32", (stream(300), 1, 32), {"seed": draw_seed(g)}),
        ]
        if hidden:
            cases += [
                Case("stream of block_size + 2", (stream(10), 6, 8), {"seed": draw_seed(g)}),
                Case("text bytes", (training_ref.encode("Once upon a time, there was a cat. " * 5), 5, 12),
                     {"seed": draw_seed(g)}),
                Case("64 windows of 64", (stream(5000), 64, 64), {"seed": draw_seed(g)}),
            ]
        return cases


def _ew_unshifted(tokens, block_size):
    x, _ = pretraining_ref.eval_windows(tokens, block_size)
    return x, x.clone()


def _ew_stride(tokens, block_size):
    n = (len(tokens) - 1) // block_size
    m = len(tokens) // (block_size + 1)
    starts = torch.arange(min(n, m)) * (block_size + 1)
    w = tokens[starts[:, None] + torch.arange(block_size + 1)]
    return w[:, :-1], w[:, 1:]


def _ew_drop_last(tokens, block_size):
    x, y = pretraining_ref.eval_windows(tokens, block_size)
    return x[:-1], y[:-1]


def _ew_too_many(tokens, block_size):
    n = len(tokens) // block_size
    starts = torch.arange(n) * block_size
    w = tokens[starts[:, None] + torch.arange(block_size + 1)]
    return w[:, :-1], w[:, 1:]


@register
class EvalWindows(Exercise):
    """Consecutive evaluation windows."""
    id = "04.eval_windows"
    entry = "eval_windows"
    allow_reference = TRAINER_ALLOWED
    reference_why = TRAINER_WHY
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
        return pretraining_ref.eval_windows(tokens, block_size)

    def cases(self, seed, hidden):
        g = generator(seed)

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
                Case("text bytes, T=7", (training_ref.encode("The end.\nMath: 3 + 4 = 7.\n" * 3), 7)),
            ]
        return cases

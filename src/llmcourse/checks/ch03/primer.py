"""primer.ipynb: Primer's squared-ReLU feed-forward and causal depthwise convolution, and a
checkpoint that makes a stopped-and-resumed run equal an uninterrupted one bit for bit.

Tolerances: the defaults (float32 rtol 1e-5, atol 1e-6; float64 rtol 1e-7, atol 1e-10). The
checkpoint's losses and weights must be EXACTLY equal (rtol = atol = 0): a resume either
reproduces the run or it does not.
"""

from __future__ import annotations

import copy

import torch.nn.functional as F

from ...reference import checkpointing as ck_ref
from ...reference import primer as ref
from .. import calls, register
from ..core import Case, Exercise, Mistake
from ..kit import F32, F64, generator, knob, randn


# ---------------------------------------------------------------------------------------
# 03.squared_relu_ffn

def _sq(x, w_up, w_down, *, how="relu^2"):
    h = x @ w_up.T
    if how == "relu":
        return F.relu(h) @ w_down.T
    if how == "square first":
        return F.relu(h.square()) @ w_down.T
    if how == "gelu^2":
        return F.gelu(h).square() @ w_down.T
    if how == "square after":
        return (F.relu(h) @ w_down.T).square()
    return F.relu(h).square() @ w_down.T


@register
class SquaredReLUFFN(Exercise):
    id = "03.squared_relu_ffn"
    entry = "squared_relu_ffn"
    title = "Primer's squared-ReLU feed-forward"
    mistakes = (
        Mistake("ReLU not squared", "Primer's activation is relu(z)^2: square the ReLU's output.",
                knob(_sq, how="relu")),
        Mistake("squared before the ReLU", "relu(z^2) = z^2 lets negative pre-activations through "
                "(squared); take the ReLU first, then square: relu(z)^2.", knob(_sq, how="square first")),
        Mistake("squared after the down projection", "the square is the activation, between the two "
                "projections: relu(x W_up^T)^2 W_down^T.", knob(_sq, how="square after")),
        Mistake("GELU squared instead of ReLU squared", "Primer squares the ReLU.",
                knob(_sq, how="gelu^2")),
    )

    def reference(self, x, w_up, w_down):
        return ref.squared_relu_ffn(x, w_up, w_down)

    def cases(self, seed, hidden):
        g = generator(seed)

        def case(label, lead, d, d_ff, dtype=F32):
            return Case(label, (randn(g, *lead, d, dtype=dtype), randn(g, d_ff, d, dtype=dtype, scale=d ** -0.5),
                                randn(g, d, d_ff, dtype=dtype, scale=d_ff ** -0.5)))

        cases = [case("(2, 5, 8) -> 32", (2, 5), 8, 32), case("(4, 6) -> 12", (4,), 6, 12)]
        if hidden:
            cases += [case("float64 (3, 2, 16) -> 64", (3, 2), 16, 64, dtype=F64),
                      case("d_ff = 1", (5,), 4, 1)]
        return cases


# ---------------------------------------------------------------------------------------
# 03.causal_dconv

def _conv(x, weight, *, pad="left", flip=False, shared=False):
    T, C, K = x.shape[-2], x.shape[-1], weight.shape[-1]
    w = weight.flip(-1) if flip else weight
    if shared:
        w = w[:1].expand(C, K)
    left = {"left": K - 1, "centre": (K - 1) // 2, "right": 0}[pad]
    xp = F.pad(x.transpose(-1, -2), (left, K - 1 - left))
    return F.conv1d(xp, w[:, None, :], groups=C).transpose(-1, -2)


@register
class CausalDepthwiseConv(Exercise):
    id = "03.causal_dconv"
    entry = "causal_depthwise_conv"
    title = "Causal depthwise convolution along the sequence"
    mistakes = (
        Mistake("conv not causal: a centred window", "pad K - 1 zeros on the LEFT only: out[t] may "
                "read x[t-K+1..t], never x[t+1]. 'same' padding centres the window and looks ahead.",
                knob(_conv, pad="centre")),
        Mistake("conv not causal: padded on the right", "the window must END at t; padding after the "
                "sequence makes out[t] read x[t..t+K-1], the future.", knob(_conv, pad="right")),
        Mistake("kernel reversed", "weight[c, K-1] multiplies the CURRENT position and weight[c, 0] "
                "the one K-1 steps back (a cross-correlation, like nn.Conv1d).", knob(_conv, flip=True)),
        Mistake("one kernel shared by all channels", "depthwise: channel c has its own kernel "
                "weight[c].", knob(_conv, shared=True)),
    )

    def reference(self, x, weight):
        return ref.causal_depthwise_conv(x, weight)

    def cases(self, seed, hidden):
        g = generator(seed)

        def case(label, B, T, C, K, dtype=F32):
            return Case(label, (randn(g, B, T, C, dtype=dtype), randn(g, C, K, dtype=dtype)))

        cases = [case("width 3, (2, 8, 4)", 2, 8, 4, 3), case("width 3, T = 2 < K", 1, 2, 3, 3),
                 case("width 4, (3, 6, 5)", 3, 6, 5, 4)]
        if hidden:
            cases += [case("float64 width 3, (2, 20, 8)", 2, 20, 8, 3, dtype=F64),
                      case("width 1 (a per-channel gain)", 2, 5, 3, 1), case("one channel, T = 1", 1, 1, 1, 3)]
        return cases


# ---------------------------------------------------------------------------------------
# 03.checkpoint

_train_with_resume = calls.train_with_resume


class _Ref:
    @staticmethod
    def save(model, optimizer, step):
        return ck_ref.save_checkpoint(model, optimizer, step)

    @staticmethod
    def load(ckpt, model, optimizer):
        return ck_ref.load_checkpoint(ckpt, model, optimizer)


def _wrong(rng=True, optimizer=True, step=True, copy_tensors=True):
    class WrongCheckpoint:
        @staticmethod
        def save(model, opt, s):
            sd, osd = model.state_dict(), opt.state_dict()
            if copy_tensors:
                sd, osd = copy.deepcopy(sd), copy.deepcopy(osd)
            return {"model": sd, "optimizer": osd if optimizer else None, "step": s,
                    "rng": ck_ref.rng_state() if rng else None}

        @staticmethod
        def load(c, model, opt):
            model.load_state_dict(c["model"])
            if c["optimizer"] is not None:
                opt.load_state_dict(copy.deepcopy(c["optimizer"]))
            if c["rng"] is not None:
                ck_ref.set_rng_state(c["rng"])
            return c["step"] if step else 0
    return WrongCheckpoint


@register
class CheckpointExercise(Exercise):
    id = "03.checkpoint"
    entry = "Checkpoint"
    title = "Checkpoints that resume bit for bit"
    reference = _Ref
    mistakes = (
        Mistake("checkpoint without RNG state", "save torch.get_rng_state() (and random.getstate()) "
                "and restore them: the batches and dropout masks after the resume must be the ones "
                "the uninterrupted run would have drawn.", _wrong(rng=False)),
        Mistake("optimizer state not saved", "AdamW keeps a step count and two moment estimates per "
                "parameter; a fresh optimizer takes different steps. Save optimizer.state_dict().",
                _wrong(optimizer=False)),
        Mistake("step not restored: the schedule restarts", "return the saved step, so the learning "
                "rate (and everything else that depends on the step) continues where it stopped.",
                _wrong(step=False)),
        Mistake("state dicts not copied", "model.state_dict() and optimizer.state_dict() hold "
                "REFERENCES to the live tensors, which keep training after the save; deep-copy them "
                "(copy.deepcopy, or torch.save to a file).", _wrong(copy_tensors=False)),
    )

    call = calls.checkpoint_resume

    def cases(self, seed, hidden):
        exact = dict(rtol=0.0, atol=0.0)
        cases = [Case("20 steps, resume at step 9", (seed, 20, 9), **exact),
                 Case("12 steps, resume at step 4", (seed + 1, 12, 4), **exact)]
        if hidden:
            cases += [Case("30 steps, resume at step 25", (seed + 2, 30, 25), **exact),
                      Case("resume at step 1", (seed + 3, 8, 1), **exact)]
        return cases

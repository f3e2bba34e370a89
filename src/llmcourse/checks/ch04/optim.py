"""optim.ipynb: AdamW from scratch, gradient clipping by global norm, warm-up + cosine.

``04.adamw`` is a class (a ``torch.optim.Optimizer``): the case holds a small regression
problem and the check runs 100 optimisation steps with it, comparing the final parameters.
``04.cosine_lr`` is evaluated at every step of a schedule and compared as a curve.
"""

from __future__ import annotations

import math

import torch

from ...reference import optim as optim_ref
from ...reference import training as training_ref
from .. import calls, register
from ..core import Case, Exercise, Mistake, Rule
from ..kit import F32, F64, generator, randn


NO_BUILTIN_OPTIM = tuple(
    Rule(f"torch.optim.{name}", f"write the update yourself instead of torch.optim.{name}")
    for name in ("AdamW", "Adam", "adamw", "adam", "_functional", "Adamax", "NAdam", "RAdam"))
NO_BUILTIN_CLIP = (
    Rule("torch.nn.utils", "compute the global norm yourself instead of torch.nn.utils"),
    Rule("._foreach_norm", "compute the norms yourself"),
    Rule(".get_total_norm", "compute the global norm yourself"),
)


NO_SCHEDULERS = (
    Rule("torch.optim.lr_scheduler", "compute the learning rate yourself instead of a scheduler"),
)


# ---------------------------------------------------------------------------------------
# 04.adamw

class _AdamWLike(torch.optim.Optimizer):
    """AdamW with knobs, to build the known mistakes from."""

    coupled = False  # L2 in the gradient instead of decoupled decay
    bias_correction = True
    decay_times_lr = True
    eps_inside = False
    decay_after = False
    global_step = False  # one step counter incremented per parameter
    use_defaults = False  # ignores the parameter groups' own settings

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        self.t = 0

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            h = self.defaults if self.use_defaults else group
            lr, (b1, b2), eps, wd = h["lr"], h["betas"], h["eps"], h["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad + wd * p if self.coupled else p.grad
                st = self.state[p]
                if not st:
                    st["step"], st["m"], st["v"] = 0, torch.zeros_like(p), torch.zeros_like(p)
                st["step"] += 1
                self.t += 1
                t = self.t if self.global_step else st["step"]
                if not self.coupled and not self.decay_after:
                    p.mul_(1 - (lr * wd if self.decay_times_lr else wd))
                st["m"].mul_(b1).add_(g, alpha=1 - b1)
                st["v"].mul_(b2).addcmul_(g, g, value=1 - b2)
                m_hat, v_hat = st["m"], st["v"]
                if self.bias_correction:
                    m_hat, v_hat = m_hat / (1 - b1 ** t), v_hat / (1 - b2 ** t)
                denom = (v_hat + eps).sqrt() if self.eps_inside else v_hat.sqrt() + eps
                p.sub_(lr * m_hat / denom)
                if not self.coupled and self.decay_after:
                    p.mul_(1 - lr * wd)


def _variant(name, **knobs):
    return type(name, (_AdamWLike,), knobs)


@register
class AdamWExercise(Exercise):
    """AdamW from scratch (= torch.optim.AdamW over 100 steps)."""
    id = "04.adamw"
    entry = "AdamW"
    forbid = NO_BUILTIN_OPTIM
    mistakes = (
        Mistake("Adam with L2 in the gradient (coupled decay)", "that is torch.optim.Adam's "
                "weight_decay: AdamW does NOT add weight_decay * p to the gradient; it shrinks "
                "p directly, p *= 1 - lr * weight_decay, outside the adaptive update.",
                _variant("AdamL2", coupled=True)),
        Mistake("no bias correction", "divide m by 1 - beta1^t and v by 1 - beta2^t; without it "
                "the first steps are far too small.", _variant("NoBC", bias_correction=False)),
        Mistake("decay not multiplied by lr", "the decoupled decay is p *= 1 - lr * weight_decay "
                "(PyTorch's convention), not 1 - weight_decay.", _variant("DecayNoLr", decay_times_lr=False)),
        Mistake("eps inside the square root", "the denominator is sqrt(v_hat) + eps, not "
                "sqrt(v_hat + eps).", _variant("EpsInside", eps_inside=True)),
        Mistake("decay applied after the Adam update", "shrink the parameter from its value "
                "BEFORE this step's update (decay first, then the Adam step).",
                _variant("DecayAfter", decay_after=True)),
        Mistake("one step counter for all parameters", "t counts the steps of EACH parameter "
                "(store it in self.state[p]); a single counter incremented inside the loop over "
                "parameters runs too fast.", _variant("GlobalStep", global_step=True)),
        Mistake("ignores the parameter groups' settings", "read lr, betas, eps and weight_decay "
                "from each `group` (a scheduler changes group['lr']; biases often have "
                "weight_decay 0), not from self.defaults.", _variant("Defaults", use_defaults=True)),
    )

    def reference(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        return optim_ref.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)

    call = calls.optimizer_steps

    def cases(self, seed, hidden):
        g = generator(seed)

        def case(label, n, d_in, d_out, hyper, dtype=F64, steps=100, **extra):
            tol = {"rtol": 1e-7, "atol": 1e-9} if dtype == F64 else {"rtol": 1e-4, "atol": 1e-5}
            kw = dict(X=randn(g, n, d_in, dtype=dtype), Y=randn(g, n, d_out, dtype=dtype, scale=0.5),
                      W=randn(g, d_in, d_out, dtype=dtype), b=randn(g, d_out, dtype=dtype),
                      hyper=hyper, steps=steps, **extra)
            return Case(label, (), kw, **tol)

        cases = [
            case("float64, lr=0.02, weight_decay=0.1", 24, 4, 3, dict(lr=0.02, weight_decay=0.1)),
            case("two groups: bias with its own lr, no decay", 16, 5, 2,
                 dict(lr=0.01, weight_decay=0.3), bias_group={"lr": 0.05, "weight_decay": 0.0}),
            case("float64, betas (0.8, 0.95), eps=1e-3", 20, 3, 3,
                 dict(lr=0.05, betas=(0.8, 0.95), eps=1e-3, weight_decay=0.05)),
            case("float32, defaults", 32, 6, 4, {}, dtype=F32),
        ]
        if hidden:
            cases += [
                case("a parameter without gradient is left alone", 10, 3, 2,
                     dict(lr=0.03, weight_decay=0.2), unused=randn(g, 4)),
                case("float64, strong decay, 120 steps", 12, 2, 5,
                     dict(lr=0.01, betas=(0.85, 0.99), weight_decay=1.0), steps=120),
                case("float32, two groups", 40, 8, 3, dict(lr=3e-3, weight_decay=0.1),
                     dtype=F32, bias_group={"weight_decay": 0.0, "betas": (0.5, 0.9)}),
            ]
        return cases


# ---------------------------------------------------------------------------------------
# 04.clip_grad_norm

def _total(grads):
    return torch.stack([g.pow(2).sum() for g in grads]).sum().sqrt()


def _clip_value(grads, max_norm):
    return [g.clamp(-max_norm, max_norm) for g in grads], _total(grads)


def _clip_each(grads, max_norm):
    return [optim_ref.clip_grad_norm([g], max_norm)[0][0] for g in grads], _total(grads)


def _clip_always(grads, max_norm):
    total = _total(grads)
    return [g * (max_norm / (total + 1e-6)) for g in grads], total


def _clip_squared(grads, max_norm):
    total = torch.stack([g.pow(2).sum() for g in grads]).sum()
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    return [g * coef for g in grads], total


def _clip_sum_of_norms(grads, max_norm):
    total = torch.stack([g.norm() for g in grads]).sum()
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    return [g * coef for g in grads], total


def _clip_returns_new_norm(grads, max_norm):
    clipped, _ = optim_ref.clip_grad_norm(grads, max_norm)
    return clipped, _total(clipped)


@register
class ClipGradNorm(Exercise):
    """Gradient clipping by global norm (= clip_grad_norm_)."""
    id = "04.clip_grad_norm"
    entry = "clip_grad_norm"
    forbid = NO_BUILTIN_CLIP
    mistakes = (
        Mistake("clipped by value, not by norm", "clamping each element to [-max_norm, max_norm] "
                "changes the gradient's direction; rescale ALL gradients by one factor "
                "min(1, max_norm / (total + 1e-6)).", _clip_value),
        Mistake("each tensor clipped on its own", "the norm is GLOBAL: one total over every "
                "tensor, one factor for all of them.", _clip_each),
        Mistake("small gradients scaled up", "the factor is min(1, max_norm / (total + 1e-6)): "
                "gradients already below max_norm stay as they are.", _clip_always),
        Mistake("squared norm (no square root)", "total = sqrt(sum of g^2).", _clip_squared),
        Mistake("sum of the per-tensor norms", "the global norm is sqrt of the sum of SQUARED "
                "norms (the norm of all elements together), not the sum of the norms.",
                _clip_sum_of_norms),
        Mistake("returned the norm after clipping", "return the total norm BEFORE clipping (what "
                "clip_grad_norm_ returns, the number you log).", _clip_returns_new_norm),
    )

    def reference(self, grads, max_norm):
        return optim_ref.clip_grad_norm(grads, max_norm)

    def cases(self, seed, hidden):
        g = generator(seed)
        cases = [
            Case("two tensors, norm above max_norm=1", ([randn(g, 4, 3), randn(g, 5)], 1.0)),
            Case("below the threshold: unchanged", ([randn(g, 3, 2, scale=0.1), randn(g, 2, scale=0.1)], 1.0)),
            Case("one tensor, large values", ([randn(g, 6, scale=10.0)], 5.0)),
            Case("float64, three tensors", ([randn(g, 2, 2, dtype=F64, scale=3.0), randn(g, 3, dtype=F64),
                                             randn(g, 1, 4, dtype=F64, scale=0.5)], 2.0)),
        ]
        if hidden:
            cases += [
                Case("max_norm=0.01", ([randn(g, 7, 2), randn(g, 3, 3)], 0.01)),
                Case("float64, a zero gradient among others", ([torch.zeros(3, dtype=F64),
                                                                randn(g, 4, 2, dtype=F64, scale=4.0)], 1.5)),
                Case("many small tensors, total just above", ([randn(g, 2, scale=0.4) for _ in range(6)], 1.0)),
            ]
        return cases


# ---------------------------------------------------------------------------------------
# 04.cosine_lr

def _lr_warmup_from_zero(step, max_lr, warmup_steps, total_steps, min_lr=0.0):
    if step < warmup_steps:
        return max_lr * step / warmup_steps
    return training_ref.cosine_lr(step, max_lr, warmup_steps, total_steps, min_lr)


def _lr_no_min(step, max_lr, warmup_steps, total_steps, min_lr=0.0):
    return training_ref.cosine_lr(step, max_lr, warmup_steps, total_steps, 0.0)


def _lr_progress_from_zero(step, max_lr, warmup_steps, total_steps, min_lr=0.0):
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    return min_lr + 0.5 * (max_lr - min_lr) * (1 + math.cos(math.pi * step / total_steps))


def _lr_no_clamp(step, max_lr, warmup_steps, total_steps, min_lr=0.0):
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + 0.5 * (max_lr - min_lr) * (1 + math.cos(math.pi * progress))


@register
class CosineLR(Exercise):
    """Linear warm-up + cosine decay."""
    id = "04.cosine_lr"
    entry = "cosine_lr"
    forbid = NO_SCHEDULERS
    mistakes = (
        Mistake("warm-up off by one", "step 0 gets max_lr / warmup_steps (step + 1 over "
                "warmup_steps), so the last warm-up step reaches max_lr; yours starts at 0.",
                _lr_warmup_from_zero),
        Mistake("cosine does not reach min_lr", "decay from max_lr to min_lr: "
                "min_lr + 0.5 (max_lr - min_lr)(1 + cos(pi * progress)).", _lr_no_min),
        Mistake("cosine progress counted from step 0", "the cosine starts when the warm-up "
                "ends: progress = (step - warmup_steps) / (total_steps - warmup_steps).",
                _lr_progress_from_zero),
        Mistake("cosine keeps going after total_steps", "after total_steps the rate stays at "
                "min_lr; the cosine would climb back up.", _lr_no_clamp),
    )

    def reference(self, step, max_lr, warmup_steps, total_steps, min_lr=0.0):
        return training_ref.cosine_lr(step, max_lr, warmup_steps, total_steps, min_lr)

    call = calls.schedule

    def cases(self, seed, hidden):
        def c(label, max_lr, warm, total, min_lr, extra=10):
            return Case(label, (), dict(max_lr=max_lr, warmup_steps=warm, total_steps=total,
                                        min_lr=min_lr, n_steps=total + extra), rtol=1e-9, atol=1e-15)

        cases = [
            c("warm-up 10, total 50, min_lr 1e-4", 1e-3, 10, 50, 1e-4),
            c("no warm-up, min_lr 0", 1.0, 0, 20, 0.0),
            c("warm-up 5, total 30", 3e-3, 5, 30, 3e-4),
        ]
        if hidden:
            cases += [
                c("warm-up 1", 0.1, 1, 12, 0.01),
                c("warm-up = total", 0.5, 8, 8, 0.05),
                c("long schedule", 6e-4, 100, 1000, 6e-5, extra=50),
            ]
        return cases

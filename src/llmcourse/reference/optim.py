"""Chapter 04: the optimiser pieces of pre-training, written out.

* :class:`AdamW`: Adam with decoupled weight decay (Loshchilov & Hutter, 2019), the same
  update as ``torch.optim.AdamW`` (default options, no AMSGrad).
* :func:`clip_grad_norm`: rescale gradients so their global L2 norm is at most ``max_norm``,
  the same coefficient as ``torch.nn.utils.clip_grad_norm_``, without modifying its input.

The learning-rate schedule (warm-up + cosine) and random batching live in
:mod:`llmcourse.reference.training` (``cosine_lr``, ``get_batch``).
"""

from __future__ import annotations

import torch


class AdamW(torch.optim.Optimizer):
    """AdamW. For each parameter p with gradient g, at step t = 1, 2, ...::

        p  <- p * (1 - lr * weight_decay)            # decoupled decay, from p_{t-1}
        m  <- beta1 * m + (1 - beta1) * g
        v  <- beta2 * v + (1 - beta2) * g * g
        p  <- p - lr * (m / (1 - beta1**t)) / (sqrt(v / (1 - beta2**t)) + eps)

    Hyper-parameters are read from each parameter group (so groups may differ, e.g. no
    decay on biases); m, v and t live in ``self.state[p]`` under "exp_avg", "exp_avg_sq",
    "step". Parameters whose ``.grad`` is None are skipped (their t does not advance).
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (beta1, beta2) = group["lr"], group["betas"]
            eps, wd = group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t = state["step"]
                m, v = state["exp_avg"], state["exp_avg_sq"]
                p.mul_(1.0 - lr * wd)
                m.mul_(beta1).add_(g, alpha=1.0 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
                m_hat = m / (1.0 - beta1 ** t)
                v_hat = v / (1.0 - beta2 ** t)
                p.sub_(lr * m_hat / (v_hat.sqrt() + eps))
        return loss


def clip_grad_norm(grads: list[torch.Tensor], max_norm: float, eps: float = 1e-6
                   ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Global-norm gradient clipping. Returns (clipped gradients, total norm before clipping).

    total = sqrt(sum over all tensors and elements of g^2); every gradient is multiplied by
    min(1, max_norm / (total + eps)) - the same coefficient (eps = 1e-6 included) as
    ``torch.nn.utils.clip_grad_norm_``. Gradients below the threshold come back unchanged.
    The total is a 0-dim tensor of the gradients' dtype. The inputs are not modified.
    """
    total = torch.stack([g.pow(2).sum() for g in grads]).sum().sqrt()
    coef = torch.clamp(max_norm / (total + eps), max=1.0)
    return [g * coef for g in grads], total

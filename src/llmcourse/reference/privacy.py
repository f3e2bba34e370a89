"""Chapter 10: privacy in training -- DP-SGD's gradient and federated averaging (FedAvg).

The model of the exercises is a one-hidden-layer classifier written as a pure function of a
parameter dict, so that ``torch.func`` can differentiate it per example::

    mlp_logits(params, x) = tanh(x W1^T + b1) W2^T + b2      params: W1 (H, D), b1 (H,),
                                                              W2 (K, H), b2 (K,)
    mlp_loss(params, x, y) = mean cross-entropy of mlp_logits(params, x) against y

**DP-SGD** (Abadi et al. 2016) replaces the batch gradient by

    g~ = ( sum_i clip_C(g_i) + sigma * C * z ) / N,      z ~ N(0, I),
    clip_C(g) = g * min(1, C / ||g||),

where g_i is example i's gradient over *all* parameters together (one flat vector) and N the
batch size. Clipping bounds any one example's influence on the sum by C (the sum's
*sensitivity*); Gaussian noise of standard deviation sigma * C then hides it. This is
Opacus's ``DPOptimizer`` (``noise_multiplier = sigma``, ``max_grad_norm = C``,
``expected_batch_size = N``, ``loss_reduction = "mean"``), up to Opacus's ``+ 1e-6`` in the
clip factor's denominator. How much privacy (epsilon, delta) a run buys is the accountant's
job (Opacus's ``RDPAccountant``), not the optimizer's.

**FedAvg** (McMahan et al. 2017): every client starts from the global parameters, takes
``local_steps`` full-batch gradient steps on its own data, and the server averages the
clients' parameters weighted by their number of examples n_k / n. With one local step each,
this is exactly one centralised full-batch gradient step on all the data.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import grad, vmap

Params = dict[str, torch.Tensor]


def mlp_logits(params: Params, x: torch.Tensor) -> torch.Tensor:
    """(N, D) -> (N, K) logits of the one-hidden-layer tanh classifier (also works on (D,))."""
    h = torch.tanh(x @ params["W1"].T + params["b1"])
    return h @ params["W2"].T + params["b2"]


def mlp_loss(params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the classifier on a batch x (N, D), labels y (N,) int64."""
    return F.cross_entropy(mlp_logits(params, x), y)


def init_mlp(D: int, H: int, K: int, generator: torch.Generator | None = None,
             dtype: torch.dtype = torch.float32) -> Params:
    """Random parameters: matrices ~ N(0, 1/fan_in), biases 0."""
    g = generator
    return {"W1": (torch.randn(H, D, generator=g, dtype=torch.float64) / D ** 0.5).to(dtype),
            "b1": torch.zeros(H, dtype=dtype),
            "W2": (torch.randn(K, H, generator=g, dtype=torch.float64) / H ** 0.5).to(dtype),
            "b2": torch.zeros(K, dtype=dtype)}


def per_example_grads(params: Params, x: torch.Tensor, y: torch.Tensor) -> Params:
    """The gradient of each example's own loss: {name: (N, *shape)}.

    ``vmap`` over the batch of ``grad`` of the loss of ONE example (a batch of size 1, so the
    mean over it is that example's loss); the parameters are shared (``in_dims=None``)."""
    def one(p, xi, yi):
        return mlp_loss(p, xi[None], yi[None])

    return vmap(grad(one), in_dims=(None, 0, 0))(params, x, y)


def per_example_norms(grads: Params) -> torch.Tensor:
    """(N,) L2 norm of each example's gradient over all parameters together."""
    flat = torch.cat([g.reshape(g.shape[0], -1) for g in grads.values()], dim=1)
    return flat.norm(dim=1)


def clip_factors(grads: Params, C: float) -> torch.Tensor:
    """(N,) min(1, C / ||g_i||): 1 for examples already inside the ball (and zero gradients)."""
    norms = per_example_norms(grads)
    return torch.where(norms > C, C / norms.clamp_min(1e-30), torch.ones_like(norms))


def dp_aggregate(grads: Params, C: float, sigma: float, noise: Params) -> Params:
    """DP-SGD's noisy average gradient from per-example gradients {name: (N, *shape)}:
    (sum_i clip_C(g_i) + sigma * C * noise) / N, with ``noise`` {name: shape} standard normal."""
    factors = clip_factors(grads, C)
    N = factors.shape[0]
    out = {}
    for name, g in grads.items():
        f = factors.to(g.dtype).reshape(-1, *([1] * (g.dim() - 1)))
        out[name] = ((f * g).sum(0) + sigma * C * noise[name]) / N
    return out


def dp_sgd_gradient(params: Params, x: torch.Tensor, y: torch.Tensor, C: float, sigma: float,
                    noise: Params) -> Params:
    """Per-example gradients, clipped, summed, noised and averaged: one DP-SGD gradient."""
    return dp_aggregate(per_example_grads(params, x, y), C, sigma, noise)


def local_sgd(params: Params, x: torch.Tensor, y: torch.Tensor, lr: float, steps: int) -> Params:
    """``steps`` full-batch gradient-descent steps on one client's data (a new dict)."""
    p = {k: v.clone() for k, v in params.items()}
    for _ in range(steps):
        g = grad(mlp_loss)(p, x, y)
        p = {k: p[k] - lr * g[k] for k in p}
    return p


def fedavg_round(params: Params, clients: list[tuple[torch.Tensor, torch.Tensor]], lr: float,
                 local_steps: int = 1) -> Params:
    """One FedAvg round: every client trains from ``params``; the average of their parameters
    weighted by n_k / n is the new global model."""
    sizes = torch.tensor([len(y) for _, y in clients], dtype=torch.float64)
    weights = sizes / sizes.sum()
    locals_ = [local_sgd(params, x, y, lr, local_steps) for x, y in clients]
    return {k: sum(w.to(v.dtype) * p[k] for w, p in zip(weights, locals_))
            for k, v in params.items()}

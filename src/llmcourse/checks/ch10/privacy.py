"""privacy.ipynb: per-example gradients, DP-SGD's clipped and noised average, FedAvg.

The model is the notebook's ``mlp_loss(params, x, y)`` (= ``reference.privacy.mlp_loss``):
a tanh classifier written as a pure function of a parameter dict. Gradients are dicts
``{"W1", "b1", "W2", "b2"}``; per-example ones carry a leading batch axis.

Tolerances: float32 gradients computed in another order (a loop, autograd, vmap) agree to a
few ulps of the largest entry, so float32 cases allow rtol 1e-4, atol 1e-6; float64 cases
keep the defaults, except DP-SGD's (Opacus's clip convention, see ``_tol_dp``).
"""

from __future__ import annotations

import torch
from torch.func import grad

from ...reference import privacy as ref
from .. import register
from ..core import Case, Exercise, Mistake, Rule
from ..kit import F32, F64, generator, randn

NO_OPACUS = (Rule("opacus", "write it with torch yourself; Opacus is the authority it is "
                  "compared with, in the tests and in the lab cells"),)
TOL32 = {"rtol": 1e-4, "atol": 1e-6}


def _tol(dtype):
    return TOL32 if dtype == F32 else {}


def _tol_dp(dtype):
    """Opacus clips with C / (||g|| + 1e-6): a relative change of about 1e-6 / ||g||, which a
    learner copying that convention may keep; float64 cases accept it (rtol 1e-5, atol 1e-7)."""
    return TOL32 if dtype == F32 else {"rtol": 1e-5, "atol": 1e-7}


def _data(g, N, D, K, dtype):
    x = randn(g, N, D, dtype=dtype, scale=1.5)
    y = torch.randint(0, K, (N,), generator=g)
    return x, y


def _params(g, D, H, K, dtype):
    p = ref.init_mlp(D, H, K, g, dtype)
    p["b1"] = randn(g, H, dtype=dtype, scale=0.3)
    p["b2"] = randn(g, K, dtype=dtype, scale=0.3)
    return p


# ---------------------------------------------------------------------------------------
# 10.per_example_grads

def _batch_grad(params, x, y):
    return grad(ref.mlp_loss)(params, x, y)


def _peg_batch_copied(params, x, y):
    g = _batch_grad(params, x, y)
    return {k: v.expand(len(y), *v.shape).clone() for k, v in g.items()}


def _peg_over_n(params, x, y):
    return {k: v / len(y) for k, v in ref.per_example_grads(params, x, y).items()}


def _peg_sum_copied(params, x, y):
    g = _batch_grad(params, x, y)
    return {k: (v * len(y)).expand(len(y), *v.shape).clone() for k, v in g.items()}


@register
class PerExampleGrads(Exercise):
    """Per-example gradients with torch.func (vmap of grad)."""

    id = "10.per_example_grads"
    entry = "per_example_grads"
    forbid = NO_OPACUS
    mistakes = (
        Mistake("batch gradient copied to every example", "each row must be the gradient of "
                "that example's OWN loss; the batch gradient is their mean and hides which "
                "example contributed what (the quantity DP-SGD needs to clip).", _peg_batch_copied),
        Mistake("each example's gradient divided by N", "differentiate each example's own loss "
                "(a batch of one), not its share 1/N of the batch mean.", _peg_over_n),
        Mistake("gradient of the summed batch loss copied to every example", "the sum over the "
                "batch is N times the batch gradient, still not any one example's gradient.",
                _peg_sum_copied),
    )

    def reference(self, params, x, y):
        return ref.per_example_grads(params, x, y)

    def cases(self, seed, hidden):
        g = generator(seed)

        def case(label, N, D, H, K, dtype=F32):
            return Case(label, (_params(g, D, H, K, dtype), *_data(g, N, D, K, dtype)), {},
                        **_tol(dtype))

        cases = [case("N = 6, D = 4, H = 8, K = 3", 6, 4, 8, 3),
                 case("N = 16, D = 10, H = 5, K = 2", 16, 10, 5, 2),
                 case("float64, N = 5", 5, 3, 6, 4, dtype=F64)]
        if hidden:
            cases += [case("N = 1 (one example)", 1, 4, 4, 3),
                      case("N = 32, D = 2, H = 16, K = 5", 32, 2, 16, 5),
                      case("float64, N = 12, K = 7", 12, 6, 3, 7, dtype=F64)]
        return cases


# ---------------------------------------------------------------------------------------
# 10.dp_aggregate

def _view(f, g):
    return f.to(g.dtype).reshape(-1, *([1] * (g.dim() - 1)))


def _agg(grads, factors, noise, noise_scale, divide_noise=True, divide=True):
    N = len(factors)
    out = {}
    for k, g in grads.items():
        s = (_view(factors, g) * g).sum(0)
        z = noise_scale * noise[k]
        out[k] = ((s + z) / N if divide_noise else s / N + z) if divide else s + z
    return out


def _dp_batch_clipped(grads, C, sigma, noise):
    N = next(iter(grads.values())).shape[0]
    mean = {k: g.mean(0) for k, g in grads.items()}
    norm = torch.cat([v.reshape(-1) for v in mean.values()]).norm()
    f = min(1.0, float(C / norm)) if norm > 0 else 1.0
    return {k: f * mean[k] + sigma * C * noise[k] / N for k in mean}


def _dp_sigma_only(grads, C, sigma, noise):
    return _agg(grads, ref.clip_factors(grads, C), noise, sigma)


def _dp_per_tensor(grads, C, sigma, noise):
    N = next(iter(grads.values())).shape[0]
    out = {}
    for k, g in grads.items():
        norms = g.reshape(N, -1).norm(dim=1)
        f = torch.where(norms > C, C / norms.clamp_min(1e-30), torch.ones_like(norms))
        out[k] = ((_view(f, g) * g).sum(0) + sigma * C * noise[k]) / N
    return out


def _dp_normalised(grads, C, sigma, noise):
    norms = ref.per_example_norms(grads)
    return _agg(grads, C / norms.clamp_min(1e-30), noise, sigma * C)


def _dp_noise_not_averaged(grads, C, sigma, noise):
    return _agg(grads, ref.clip_factors(grads, C), noise, sigma * C, divide_noise=False)


def _dp_summed(grads, C, sigma, noise):
    return _agg(grads, ref.clip_factors(grads, C), noise, sigma * C, divide=False)


def _dp_no_clip(grads, C, sigma, noise):
    return _agg(grads, torch.ones(next(iter(grads.values())).shape[0]), noise, sigma * C)


@register
class DPAggregate(Exercise):
    """DP-SGD's gradient from per-example gradients: clip each to C, sum, add N(0, (sigma C)^2),
    divide by N."""

    id = "10.dp_aggregate"
    entry = "dp_aggregate"
    forbid = NO_OPACUS
    mistakes = (
        Mistake("clipped the batch gradient instead of each example's", "clip EVERY example's "
                "gradient to norm C before summing: only then can no single example move the sum "
                "by more than C (the sensitivity the noise is calibrated to). Clipping the "
                "average bounds nothing per example.", _dp_batch_clipped),
        Mistake("noise scaled by sigma, not sigma * C", "the noise's standard deviation is "
                "sigma * C: sigma (Opacus's noise_multiplier) is measured in units of the "
                "sensitivity C.", _dp_sigma_only),
        Mistake("each parameter clipped separately", "clip the norm of an example's WHOLE "
                "gradient, all parameters together (one flat vector), as Opacus's flat "
                "clipping does; per-tensor clipping allows a norm up to C * sqrt(#tensors).",
                _dp_per_tensor),
        Mistake("every gradient rescaled to norm C", "clipping is g * min(1, C / ||g||): "
                "gradients already shorter than C stay as they are.", _dp_normalised),
        Mistake("noise not divided by N", "add the noise to the SUM of clipped gradients, then "
                "divide everything by N.", _dp_noise_not_averaged),
        Mistake("summed, not averaged", "divide the noisy sum by the batch size N.", _dp_summed),
        Mistake("no clipping", "scale each example's gradient by min(1, C / ||g_i||) first.",
                _dp_no_clip),
    )

    def reference(self, grads, C, sigma, noise):
        return ref.dp_aggregate(grads, C, sigma, noise)

    def cases(self, seed, hidden):
        g = generator(seed)

        def case(label, N, shapes, C, sigma, dtype=F32, small=0):
            grads = {k: randn(g, N, *s, dtype=dtype, scale=0.7) for k, s in shapes.items()}
            for k in grads:  # the first `small` examples lie inside the ball of radius C
                grads[k][:small] *= 0.02
            noise = {k: randn(g, *s, dtype=dtype) for k, s in shapes.items()}
            return Case(label, (grads, C, sigma, noise), {}, **_tol_dp(dtype))

        mlp = {"W1": (8, 4), "b1": (8,), "W2": (3, 8), "b2": (3,)}
        cases = [
            case("N = 8, MLP shapes, C = 1, sigma = 1.1, two examples inside the ball",
                 8, mlp, 1.0, 1.1, small=2),
            case("N = 5, two tensors, C = 0.5, sigma = 0.7", 5, {"w": (6,), "v": (2, 3)}, 0.5, 0.7,
                 small=1),
            case("float64, N = 16, C = 3, sigma = 2", 16, mlp, 3.0, 2.0, dtype=F64, small=5),
            case("sigma = 0: clipping only, C = 1.5", 6, {"w": (4, 4), "b": (4,)}, 1.5, 0.0, small=2),
        ]
        if hidden:
            cases += [
                case("N = 1, C = 0.8, sigma = 1", 1, mlp, 0.8, 1.0),
                case("huge C: nothing clipped, sigma = 0.5", 10, {"w": (3, 5)}, 1e3, 0.5),
                case("float64, N = 32, C = 0.1, sigma = 4", 32, mlp, 0.1, 4.0, dtype=F64, small=3),
                case("one 3-D tensor, N = 7, C = 2.5, sigma = 0.3", 7, {"k": (2, 3, 4)}, 2.5, 0.3,
                     small=3),
            ]
        return cases


# ---------------------------------------------------------------------------------------
# 10.fedavg

def _fed_unweighted(params, clients, lr, local_steps=1):
    locals_ = [ref.local_sgd(params, x, y, lr, local_steps) for x, y in clients]
    return {k: sum(p[k] for p in locals_) / len(locals_) for k in params}


def _fed_sequential(params, clients, lr, local_steps=1):
    p = params
    for x, y in clients:
        p = ref.local_sgd(p, x, y, lr, local_steps)
    return p


def _fed_sgd(params, clients, lr, local_steps=1):
    n = sum(len(y) for _, y in clients)
    grads = [grad(ref.mlp_loss)(params, x, y) for x, y in clients]
    return {k: params[k] - lr * sum(len(y) / n * gr[k] for (_, y), gr in zip(clients, grads))
            for k in params}


def _fed_weighted_sum(params, clients, lr, local_steps=1):
    locals_ = [ref.local_sgd(params, x, y, lr, local_steps) for x, y in clients]
    n, K = sum(len(y) for _, y in clients), len(clients)
    return {k: sum(len(y) * K / n * p[k] for (_, y), p in zip(clients, locals_)) for k in params}


@register
class FedAvgRound(Exercise):
    """One round of federated averaging: local full-batch SGD, average weighted by n_k / n."""

    id = "10.fedavg"
    entry = "fedavg_round"
    forbid = NO_OPACUS
    mistakes = (
        Mistake("unweighted average of the clients", "weight client k by n_k / n, its share of "
                "the examples: a client with 3 examples must not count as much as one with 40 "
                "(with one local step each, only the weighted average equals centralised "
                "training).", _fed_unweighted),
        Mistake("clients trained one after another", "every client starts from the SAME global "
                "parameters of this round; the server then averages their results.",
                _fed_sequential),
        Mistake("one averaged gradient step (FedSGD), local_steps ignored", "each client takes "
                "`local_steps` full-batch steps on its own data before the average: that is what "
                "saves communication rounds.", _fed_sgd),
        Mistake("weighted by n_k / (n / K) instead of n_k / n", "the weights n_k / n sum to 1; "
                "yours sum to K (the number of clients).", _fed_weighted_sum),
    )

    def reference(self, params, clients, lr, local_steps=1):
        return ref.fedavg_round(params, clients, lr, local_steps)

    def cases(self, seed, hidden):
        g = generator(seed)

        def case(label, sizes, lr, steps, D=4, H=6, K=3, dtype=F32):
            clients = [_data(g, n, D, K, dtype) for n in sizes]
            return Case(label, (_params(g, D, H, K, dtype), clients, lr), {"local_steps": steps},
                        **_tol(dtype))

        cases = [
            case("3 clients of 3, 10, 25 examples, 2 local steps, lr 0.5", (3, 10, 25), 0.5, 2),
            case("2 clients of 4 and 20, 1 local step, lr 0.3", (4, 20), 0.3, 1),
            case("float64, 4 clients of 2, 5, 9, 30, 3 local steps", (2, 5, 9, 30), 0.2, 3,
                 dtype=F64),
        ]
        if hidden:
            cases += [
                case("one client: plain local SGD, 4 steps", (12,), 0.4, 4),
                case("5 clients of 1 example each, 2 steps", (1, 1, 1, 1, 1), 0.1, 2),
                case("float64, 3 clients of 7, 2, 40, 5 local steps, D = 6", (7, 2, 40), 0.25, 5,
                     D=6, dtype=F64),
            ]
        return cases

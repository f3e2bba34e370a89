"""Chapter 07 challenge: predict the loss of larger models from a small sweep.

The sweep is **synthetic**: :func:`sweep` draws a law L(N, D) = E + A / N^alpha + B / D^beta
with seeded constants (near the published Chinchilla fit, so the numbers look like real
ones, but other values for every seed), evaluates it on a grid of small runs and multiplies
each loss by seeded log-normal noise (sd 0.5%), the run-to-run noise of real sweeps. The
truth at the large targets is the law itself, noise-free.

:func:`fit_chinchilla` is the instructor's fit (Hoffmann et al., 2022, appendix D): the Huber
loss (delta 1e-3) of log L against log-sum-exp(a - alpha log N, b - beta log D, e), minimised
by L-BFGS from a grid of starting points, the best fit kept. ``irreducible=False`` drops the
E term: the Kaplan et al. (2020) form A / N^alpha + B / D^beta.
"""

from __future__ import annotations

import itertools
import math

import torch

SMALL_N = (1e6, 3e6, 1e7, 3e7, 1e8)  # parameters of the small runs
SMALL_D = (2e7, 6e7, 2e8, 6e8, 2e9)  # their training tokens
TARGETS = ((1e9, 2e10), (3e9, 6e10), (1e10, 2e11), (7e10, 1.4e12))  # large (N, D)
NOISE = 0.005


def law(seed: int) -> tuple[float, float, float, float, float]:
    """(E, A, B, alpha, beta) of a seed's synthetic law."""
    g = torch.Generator().manual_seed(7000 + seed)
    u = torch.rand(5, generator=g, dtype=torch.float64).tolist()
    return (1.5 + 0.4 * u[0], 300 + 300 * u[1], 300 + 500 * u[2], 0.30 + 0.08 * u[3],
            0.26 + 0.08 * u[4])


def law_loss(seed: int, N: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    E, A, B, alpha, beta = law(seed)
    return E + A / N.double() ** alpha + B / D.double() ** beta


def sweep(seed: int) -> torch.Tensor:
    """The small runs: (25, 3) float64 rows (N, D, loss), loss with seeded noise."""
    N, D = (torch.tensor(v, dtype=torch.float64) for v in zip(*itertools.product(SMALL_N, SMALL_D)))
    g = torch.Generator().manual_seed(8000 + seed)
    noise = torch.exp(NOISE * torch.randn(N.shape, generator=g, dtype=torch.float64))
    return torch.stack([N, D, law_loss(seed, N, D) * noise], dim=1)


def targets() -> torch.Tensor:
    return torch.tensor(TARGETS, dtype=torch.float64)


def fit_chinchilla(runs: torch.Tensor, irreducible: bool = True, delta: float = 1e-3):
    """The fitted (E, A, B, alpha, beta) of ``runs`` (rows N, D, loss); E = 0 without the
    irreducible term."""
    logN, logD, logL = runs[:, 0].log(), runs[:, 1].log(), runs[:, 2].log()
    best, best_p = math.inf, None
    grid = itertools.product((0.0, 5.0, 10.0), (0.0, 5.0, 10.0), (0.0, 0.5) if irreducible
                             else (-30.0,), (0.3,), (0.3,))
    for a, b, e, alpha, beta in grid:
        p = torch.tensor([a, b, e, alpha, beta], dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([p], lr=1, max_iter=200, line_search_fn="strong_wolfe")

        def huber():
            terms = [p[0] - p[3] * logN, p[1] - p[4] * logD]
            if irreducible:
                terms.append(p[2].expand_as(logN))
            pred = torch.logsumexp(torch.stack(terms), dim=0)
            return torch.nn.functional.huber_loss(pred, logL, delta=delta, reduction="sum")

        def objective():
            opt.zero_grad()
            loss = huber()
            loss.backward()
            return loss

        opt.step(objective)
        with torch.no_grad():
            value = float(huber())
        if math.isfinite(value) and value < best:
            best, best_p = value, p.detach().clone()
    a, b, e, alpha, beta = best_p.tolist()
    return (math.exp(e) if irreducible else 0.0, math.exp(a), math.exp(b), alpha, beta)


def predict(runs: torch.Tensor, targets: torch.Tensor, irreducible: bool = True) -> torch.Tensor:
    """Predicted losses (len(targets),) of the fitted law at the targets' (N, D)."""
    E, A, B, alpha, beta = fit_chinchilla(runs, irreducible)
    return E + A / targets[:, 0] ** alpha + B / targets[:, 1] ** beta

"""sweep.ipynb: fitting a power law with an irreducible term to a scaling sweep."""

from __future__ import annotations

import torch

from ...reference import scaling as scaling_ref
from .. import register
from ..core import Case, Exercise, Mistake
from ..kit import F64, generator

# The notebooks train with the course's trainer and GPT: those two reference modules may
# be imported; every other part of the reference stays off limits.
TRAINER = ("training", "gpt")


# ---------------------------------------------------------------------------------------
# 07.fit_power_law

def _fit_loglog(N, L):
    X = torch.stack([torch.ones_like(N), N.log()], 1).to(F64)
    c = torch.linalg.lstsq(X, L.to(F64).log()[:, None]).solution[:, 0]
    return 0.0, float(c[0].exp()), float(-c[1])


def _fit_negative_alpha(N, L):
    E, A, alpha = scaling_ref.fit_power_law(N, L)
    return E, A, -alpha


def _fit_A_not_rescaled(N, L):
    E, A, alpha = scaling_ref.fit_power_law(N, L)
    return E, A / float(N.max()) ** alpha, alpha


@register
class FitPowerLaw(Exercise):
    """Fit L(N) = E + A / N^alpha."""
    id = "07.fit_power_law"
    entry = "fit_power_law"
    allow_reference = TRAINER
    mistakes = (
        Mistake("straight line in log-log space", "log L = log A - alpha log N has no floor: "
                "with E > 0 the points are not on a line; fit E too.", _fit_loglog),
        Mistake("exponent sign", "alpha is positive: L = E + A * N**(-alpha).", _fit_negative_alpha),
        Mistake("A not rescaled", "if you fit in N / N_max, then A = A_scaled * N_max**alpha.",
                _fit_A_not_rescaled),
    )

    def reference(self, N, L):
        return scaling_ref.fit_power_law(N, L)

    def cases(self, seed, hidden):
        g = generator(seed)

        def case(label, N, E, A, alpha, noise=0.0, rtol=1e-5, atol=1e-6):
            L = scaling_ref.power_law(N, E, A, alpha)
            if noise:
                L = L * (1 + noise * torch.randn(len(N), generator=g, dtype=F64))
            return Case(label, (N, L), rtol=rtol, atol=atol)

        cases = [case("6 sizes, exact power law", torch.tensor([1e4, 3e4, 1e5, 3e5, 1e6, 3e6], dtype=F64),
                      1.7, 40.0, 0.3),
                 case("5 sizes, small A", torch.tensor([2e3, 8e3, 3.2e4, 1.28e5, 5.12e5], dtype=F64),
                      0.5, 8.0, 0.5)]
        if hidden:
            N = torch.logspace(3, 7, 9, dtype=F64)
            u = torch.rand(3, generator=g, dtype=F64)
            cases += [case("9 sizes, random constants", N, float(0.2 + 2 * u[0]),
                           float(5 + 100 * u[1]), float(0.15 + 0.5 * u[2])),
                      case("unsorted sizes", torch.tensor([5e5, 1e4, 2e6, 5e4, 1e5], dtype=F64),
                           2.0, 30.0, 0.25),
                      case("0.2% noise", torch.logspace(4, 7, 8, dtype=F64), 1.0, 20.0, 0.35,
                           noise=0.002, rtol=3e-2, atol=1e-3)]
        return cases

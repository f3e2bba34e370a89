"""The shared tools of an exercise spec: random inputs, seeds, mistake variants and
exercises whose answer is an ``nn.Module``.

A chapter file holds only its exercises; everything two exercises need lives here.

* :func:`randn` -- a float tensor drawn in float64 from a generator, then cast (so the values
  do not depend on the dtype asked for).
* :func:`generator` -- a fresh ``torch.Generator`` seeded with ``seed``.
* :func:`draw_seed` -- an int seed drawn from a case generator (for a case's own generator).
* :class:`SeededExercise` -- the learner's function takes ``generator=``; a case carries
  ``seed`` instead and each call gets a fresh generator seeded with it.
* :func:`knob` -- a cataloged mistake as "the reference with one knob turned":
  ``knob(_sdpa, scale=1.0)``.
* :class:`ModuleExercise` -- the learner writes an ``nn.Module`` class whose parameters carry
  the names the task gives. A case holds the constructor's arguments (the names in
  ``ModuleExercise.init``), every weight as a ``"param.<name>"`` keyword, and forward's inputs.
  The check builds the learner's module (without touching the global random state), copies
  the weights in by name, and runs forward in eval mode without gradients. A module whose
  parameter names or shapes differ from the task gets a one-line message naming the first one.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from .core import Case, Exercise

F32, F64 = torch.float32, torch.float64
INF = float("inf")
PARAM = "param."


def randn(g: torch.Generator, *shape, dtype=F32, scale: float = 1.0) -> torch.Tensor:
    """``N(0, scale^2)`` of ``shape``, drawn in float64 from ``g`` and cast to ``dtype``."""
    return (torch.randn(*shape, generator=g, dtype=F64) * scale).to(dtype)


def generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed`` (a case's or a mistake's own randomness)."""
    return torch.Generator().manual_seed(int(seed))


def draw_seed(g: torch.Generator) -> int:
    """A seed in ``[0, 2^31 - 1)`` drawn from ``g``."""
    return int(torch.randint(0, 2**31 - 1, (1,), generator=g))


def knob(fn, /, **how):
    """``fn`` with some keyword arguments fixed: a mistake written as a variant of one
    parametrised implementation. Keeps ``fn``'s name for messages."""
    out = functools.partial(fn, **how)
    out.__name__ = getattr(fn, "__name__", "mistake")  # type: ignore[attr-defined]
    return out


class SeededExercise(Exercise):
    """An exercise whose function takes ``generator=``: cases carry ``seed`` instead."""

    def call(self, fn, case):
        kw = dict(case.kwargs)
        gen = generator(kw.pop("seed"))
        return fn(*case.args, generator=gen, **kw)


class SpecError(Exception):
    """The learner's module does not have the parameters the task asks for."""


def load_params(module: nn.Module, params: dict, optional: tuple, entry: str) -> None:
    have = dict(module.named_parameters(remove_duplicate=False))
    missing = [n for n in params if n not in have and n not in optional]
    if missing:
        yours = ", ".join(list(have)[:6]) + (", ..." if len(have) > 6 else "") or "none"
        raise SpecError(f"your {entry} has no parameter `{missing[0]}` ({len(missing)} of the "
                        f"task's parameters are missing; yours: {yours}). Name the layers as the "
                        "task says.")
    extra = [n for n in have if n not in params]
    if extra:
        raise SpecError(f"your {entry} has a parameter the task does not define: `{extra[0]}` "
                        "(the check cannot set it; remove it or make it a buffer)")
    with torch.no_grad():
        for name, value in params.items():
            if name in have:
                if have[name].shape != value.shape:
                    raise SpecError(f"parameter `{name}` of your {entry} has shape "
                                    f"{tuple(have[name].shape)}, the task says {tuple(value.shape)}")
                have[name].copy_(value)


def random_params(module: nn.Module, g, dtype) -> dict:
    """``{"param.<name>": tensor}`` for every parameter of ``module`` (tied ones share a value):
    matrices ~ N(0, 1/fan_in), biases ~ N(0, 0.1^2), norm weights near 1."""
    # Any normalisation layer (LayerNorm, RMSNorm, ...): its weights start near 1.
    norms = {n for n, m in module.named_modules() if type(m).__name__.endswith("Norm")}
    out, seen = {}, {}
    for name, p in module.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            out[PARAM + name] = out[seen[id(p)]]
            continue
        owner, _, leaf = name.rpartition(".")
        if owner in norms:
            value = randn(g, *p.shape, dtype=dtype, scale=0.2) + (1.0 if leaf == "weight" else 0.0)
        elif p.dim() == 1:
            value = randn(g, *p.shape, dtype=dtype, scale=0.1)
        else:
            value = randn(g, *p.shape, dtype=dtype, scale=p.shape[-1] ** -0.5)
        seen[id(p)] = PARAM + name
        out[PARAM + name] = value
    return out


class ModuleExercise(Exercise):
    """An exercise whose answer is an ``nn.Module`` class (see the module docstring).

    ``reference`` is the reference class; ``init`` names the constructor's arguments;
    :meth:`case` makes a case with random weights for every parameter of the reference.
    """

    init: tuple[str, ...] = ()  # constructor arguments, passed in this order (positionally)
    optional: tuple[str, ...] = ()  # parameters a learner may do without (a tied lm_head)

    def build(self, cls, init: dict) -> nn.Module:
        return cls(*(init[k] for k in self.init))

    def case(self, g, label: str, init: dict, args: tuple, dtype=F32, rtol=None, atol=None,
             **forward) -> Case:
        with torch.device("meta"):
            shapes = self.build(self.reference, init)
        params = random_params(shapes, g, dtype)
        return Case(label, args, {**init, **params, **forward}, rtol, atol)

    def call(self, fn, case: Case):
        kw = dict(case.kwargs)
        init = {k: kw.pop(k) for k in self.init}
        params = {k[len(PARAM):]: kw.pop(k) for k in list(kw) if k.startswith(PARAM)}
        with torch.random.fork_rng(devices=[]):  # the learner's init must not move their seed
            module = self.build(fn, init)
        if not isinstance(module, nn.Module):
            raise SpecError(f"{self.entry}(...) should build a torch.nn.Module, got "
                            f"{type(module).__name__}")
        module = module.to(next(iter(params.values())).dtype).eval()
        with torch.no_grad():
            try:
                load_params(module, params, self.optional, self.entry)
            except SpecError:
                try:  # a stub whose forward is still `raise NotImplementedError`: say so instead
                    module(*case.args, **kw)
                except NotImplementedError:
                    raise
                except Exception:
                    pass
                raise
            return module(*case.args, **kw)

"""Chapter 05: LoRA, low-rank adaptation of a frozen linear layer (Hu et al., 2021).

A frozen weight :math:`W` (out, in) gets a trainable low-rank update :math:`\\Delta W = s\\,BA`
with :math:`A` (r, in), :math:`B` (out, r) and the scaling :math:`s = \\alpha / r`::

    y = x W^T + b + s * (x A^T) B^T

The conventions are those of Hugging Face ``peft`` (``LoraLayer``): ``lora_A`` starts with
Kaiming-uniform values (``a = sqrt(5)``, nn.Linear's default) and ``lora_B`` with zeros, so
the adapted layer starts out *exactly* equal to the frozen one; ``scaling = lora_alpha / r``;
merging adds ``scaling * B @ A`` to the frozen weight (``merge_and_unload``), after which the
layer is a plain ``nn.Linear`` with the same outputs and no extra cost at inference.

Here ``lora_A``/``lora_B`` are parameters of the layer itself (peft wraps them in
``nn.Linear`` modules: ``lora_A.default.weight`` has the same (r, in) layout).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class LoRALinear(nn.Module):
    """A linear layer with frozen ``weight`` (out, in) and ``bias`` (out,) plus a trainable
    rank-``r`` update ``(alpha / r) * lora_B @ lora_A``.

    forward: x (..., in) -> (..., out). ``bias=False`` leaves the bias out (then ``bias`` is
    None, as in nn.Linear)."""

    def __init__(self, in_features: int, out_features: int, r: int, alpha: float,
                 bias: bool = True):
        super().__init__()
        if r < 1:
            raise ValueError("the rank r must be at least 1")
        self.in_features, self.out_features, self.r, self.alpha = in_features, out_features, r, alpha
        self.scaling = alpha / r
        self.weight = nn.Parameter(torch.empty(out_features, in_features), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None
        self.lora_A = nn.Parameter(torch.empty(r, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, r))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # overwritten by from_linear
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # peft's default for A

    @classmethod
    def from_linear(cls, linear: nn.Linear, r: int, alpha: float) -> "LoRALinear":
        """Wrap a (pre-trained) nn.Linear: copy its weight and bias, freeze them."""
        layer = cls(linear.in_features, linear.out_features, r, alpha, linear.bias is not None)
        layer = layer.to(device=linear.weight.device, dtype=linear.weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(linear.weight)
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        return layer

    def delta_weight(self) -> torch.Tensor:
        """The update (alpha / r) * B @ A, shape (out, in): its rank is at most r."""
        return self.scaling * (self.lora_B @ self.lora_A)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x @ self.weight.T
        if self.bias is not None:
            y = y + self.bias
        return y + self.scaling * ((x @ self.lora_A.T) @ self.lora_B.T)

    @torch.no_grad()
    def merge(self) -> nn.Linear:
        """A plain nn.Linear with weight W + (alpha / r) B A: the same function, one matmul."""
        out = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        out = out.to(device=self.weight.device, dtype=self.weight.dtype)
        out.weight.copy_(self.weight + self.delta_weight())
        if self.bias is not None:
            out.bias.copy_(self.bias)
        return out

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, "
                f"alpha={self.alpha}")


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters; tied parameters are counted once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def lora_parameter_count(shapes: list[tuple[int, int]], r: int) -> int:
    """Trainable parameters of LoRA on linear layers of the given (out, in) shapes:
    r * (in + out) each (A is r x in, B is out x r)."""
    return sum(r * (n_in + n_out) for n_out, n_in in shapes)


def _replace(model: nn.Module, make, targets: tuple[str, ...], kind) -> list[str]:
    done = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if isinstance(child, kind) and child_name in targets:
                setattr(module, child_name, make(child))
                done.append(full)
    return done


def add_lora(model: nn.Module, r: int, alpha: float,
             targets: tuple[str, ...] = ("c_attn", "c_proj")) -> list[str]:
    """Freeze every parameter of ``model``, then replace each nn.Linear whose attribute name
    is in ``targets`` by a LoRALinear around it (in place). Returns the replaced names.

    In the course's GPT, ``c_attn``/``c_proj`` of attention and ``c_fc``/``c_proj`` of the MLP
    are the targets one can name (peft's ``target_modules``)."""
    for p in model.parameters():
        p.requires_grad_(False)
    return _replace(model, lambda lin: LoRALinear.from_linear(lin, r, alpha), targets, nn.Linear)


def merge_lora(model: nn.Module) -> list[str]:
    """Replace every LoRALinear of ``model`` by its merged nn.Linear (in place)."""
    names = [n for n, m in model.named_modules() if isinstance(m, LoRALinear)]
    targets = tuple({n.rsplit(".", 1)[-1] for n in names})
    _replace(model, lambda layer: layer.merge(), targets, LoRALinear)
    return names

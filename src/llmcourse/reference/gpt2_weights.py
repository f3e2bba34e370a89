"""Chapter 02's challenge: GPT-2's logits from a config and a Hugging Face state dict.

A functional forward pass of ``GPT2LMHeadModel`` (no ``nn.Module``): the weights come as the
dict ``model.state_dict()`` gives, named as Hugging Face names them. GPT-2's linear layers
are ``Conv1D``: their weight is stored (in, out), so a layer is ``x @ W + b`` (not ``W.T``).
Pre-LN blocks ``x + attn(ln_1(x))``, ``x + mlp(ln_2(x))``, a final ``ln_f``, causal attention
scaled by ``1/sqrt(head_dim)``, GELU with the tanh approximation (``gelu_new``) and the
output layer tied to the token embedding (``lm_head.weight``).

The keyword arguments make the known weak attempts of the challenge (exact GELU, no causal
mask, no final LayerNorm, a fixed LayerNorm eps). Checked against Hugging Face's
``GPT2LMHeadModel`` by the challenge's own rails (``tests/test_challenges.py``: the truth IS
Hugging Face's output).
"""

from __future__ import annotations

import math

import torch

from .attention import causal_mask


def _layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def gpt2_logits(config: dict, weights: dict[str, torch.Tensor], input_ids: torch.Tensor, *,
                exact_gelu: bool = False, causal: bool = True, final_norm: bool = True,
                eps: float | None = None, blocks: bool = True) -> torch.Tensor:
    """Logits ``(B, T, vocab_size)`` of ``input_ids`` ``(B, T)`` (int64), in the weights' dtype."""
    w = weights
    H, eps = config["n_head"], config["layer_norm_epsilon"] if eps is None else eps
    B, T = input_ids.shape
    x = w["transformer.wte.weight"][input_ids] + w["transformer.wpe.weight"][:T]
    C = x.shape[-1]
    mask = causal_mask(T) if causal else torch.ones(T, T, dtype=torch.bool)
    for i in range(config["n_layer"] if blocks else 0):
        p = f"transformer.h.{i}."
        h = _layer_norm(x, w[p + "ln_1.weight"], w[p + "ln_1.bias"], eps)
        q, k, v = (h @ w[p + "attn.c_attn.weight"] + w[p + "attn.c_attn.bias"]).split(C, dim=-1)
        q, k, v = (t.view(B, T, H, C // H).transpose(1, 2) for t in (q, k, v))  # (B, H, T, d)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(C // H)
        att = torch.softmax(att.masked_fill(~mask, float("-inf")), dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)
        x = x + y @ w[p + "attn.c_proj.weight"] + w[p + "attn.c_proj.bias"]
        h = _layer_norm(x, w[p + "ln_2.weight"], w[p + "ln_2.bias"], eps)
        h = h @ w[p + "mlp.c_fc.weight"] + w[p + "mlp.c_fc.bias"]
        h = torch.nn.functional.gelu(h) if exact_gelu else _gelu_tanh(h)
        x = x + h @ w[p + "mlp.c_proj.weight"] + w[p + "mlp.c_proj.bias"]
    if final_norm:
        x = _layer_norm(x, w["transformer.ln_f.weight"], w["transformer.ln_f.bias"], eps)
    return x @ w["lm_head.weight"].T

"""Chapter 02: LayerNorm, the position-wise feed-forward network, and the original
Transformer's encoder and decoder layers (post-LN: ``x = LayerNorm(x + Sublayer(x))``).

Parameter names follow ``nn.TransformerEncoderLayer`` / ``nn.TransformerDecoderLayer`` where
they can (``linear1``, ``linear2``, ``norm1``..``norm3``), with attention in the layout of
:class:`~llmcourse.reference.attention.MultiHeadAttention` (``q_proj``, ``k_proj``,
``v_proj``, ``out_proj``). Masks are boolean with True = may attend.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import MultiHeadAttention, load_mha_from_torch


def layer_norm(x: torch.Tensor, weight: torch.Tensor | None = None,
               bias: torch.Tensor | None = None, eps: float = 1e-5) -> torch.Tensor:
    """Normalise over the last axis, then scale and shift (Ba et al. 2016).

    y = (x - mean) / sqrt(var + eps) * weight + bias, where mean and the BIASED variance
    (divide by d, not d - 1) are taken over the last axis of x (..., d). weight, bias: (d,).
    """
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    y = (x - mean) / torch.sqrt(var + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


class LayerNorm(nn.Module):
    """LayerNorm with a learnable ``weight`` (ones) and ``bias`` (zeros), like nn.LayerNorm."""

    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))
        self.bias = nn.Parameter(torch.zeros(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return layer_norm(x, self.weight, self.bias, self.eps)


ACTIVATIONS = {
    "relu": F.relu,
    "gelu": F.gelu,  # exact: x * Phi(x)
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),  # GPT-2's "gelu_new"
}


def feed_forward(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor,
                 b2: torch.Tensor, activation: str = "relu") -> torch.Tensor:
    """Position-wise FFN(x) = act(x W1^T + b1) W2^T + b2, applied to every position alike.

    x: (..., d_model); w1: (d_ff, d_model), b1: (d_ff,); w2: (d_model, d_ff), b2: (d_model,)
    (nn.Linear layout). activation: "relu" (original Transformer), "gelu" or "gelu_tanh".
    """
    return ACTIVATIONS[activation](x @ w1.T + b1) @ w2.T + b2


class FeedForward(nn.Module):
    """``linear2(act(linear1(x)))`` with d_model -> d_ff -> d_model."""

    def __init__(self, d_model: int, d_ff: int, activation: str = "relu"):
        super().__init__()
        self.activation = activation
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return feed_forward(x, self.linear1.weight, self.linear1.bias, self.linear2.weight,
                            self.linear2.bias, self.activation)


class EncoderLayer(nn.Module):
    """One encoder layer of the original Transformer (post-LN, ReLU, no dropout):

        x = norm1(x + self_attn(x, x, mask))
        x = norm2(x + ffn(x))

    Parameters: ``self_attn.{q,k,v,out}_proj``, ``linear1``, ``linear2``, ``norm1``, ``norm2``.
    forward(x, mask=None): x (..., T, d_model); mask bool broadcastable to (..., T, T).
    """

    def __init__(self, d_model: int, n_heads: int, d_ff: int, eps: float = 1e-5):
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, n_heads)
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)
        self.norm1 = LayerNorm(d_model, eps)
        self.norm2 = LayerNorm(d_model, eps)

    def ffn(self, x: torch.Tensor) -> torch.Tensor:
        return feed_forward(x, self.linear1.weight, self.linear1.bias, self.linear2.weight,
                            self.linear2.bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.norm1(x + self.self_attn(x, x, mask))
        return self.norm2(x + self.ffn(x))


class DecoderLayer(nn.Module):
    """One decoder layer of the original Transformer (post-LN, ReLU, no dropout):

        x = norm1(x + self_attn(x, x, tgt_mask))         masked self-attention
        x = norm2(x + cross_attn(x, memory, memory_mask)) queries from x, keys/values from memory
        x = norm3(x + ffn(x))

    forward(x, memory, tgt_mask=None, memory_mask=None): x (..., T, d_model), memory
    (..., S, d_model); tgt_mask bool broadcastable to (..., T, T) (pass a causal mask),
    memory_mask bool broadcastable to (..., T, S). Returns (..., T, d_model).
    """

    def __init__(self, d_model: int, n_heads: int, d_ff: int, eps: float = 1e-5):
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, n_heads)
        self.cross_attn = MultiHeadAttention(d_model, n_heads)
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)
        self.norm1 = LayerNorm(d_model, eps)
        self.norm2 = LayerNorm(d_model, eps)
        self.norm3 = LayerNorm(d_model, eps)

    ffn = EncoderLayer.ffn

    def forward(self, x: torch.Tensor, memory: torch.Tensor, tgt_mask: torch.Tensor | None = None,
                memory_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.norm1(x + self.self_attn(x, x, tgt_mask))
        x = self.norm2(x + self.cross_attn(x, memory, memory_mask))
        return self.norm3(x + self.ffn(x))


# ---------------------------------------------------------------------------------------
# Copying weights from PyTorch's own layers (used by the tests and the book).

@torch.no_grad()
def load_from_torch(layer: EncoderLayer | DecoderLayer,
                    torch_layer: nn.TransformerEncoderLayer | nn.TransformerDecoderLayer):
    """Copy the weights of ``nn.TransformerEncoderLayer`` / ``nn.TransformerDecoderLayer``."""
    load_mha_from_torch(layer.self_attn, torch_layer.self_attn)
    if isinstance(layer, DecoderLayer):
        load_mha_from_torch(layer.cross_attn, torch_layer.multihead_attn)
    names = ["linear1", "linear2", "norm1", "norm2"] + (["norm3"] if hasattr(layer, "norm3") else [])
    for name in names:
        mine, theirs = getattr(layer, name), getattr(torch_layer, name)
        mine.weight.copy_(theirs.weight)
        mine.bias.copy_(theirs.bias)
    return layer

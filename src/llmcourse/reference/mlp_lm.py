"""Chapter 01: a neural language model in the style of Bengio et al. (2003).

The previous ``c`` tokens are looked up in a shared embedding table, their vectors are
concatenated (oldest first) and fed to one tanh hidden layer; the logits over the next
token are an affine map of the hidden state, optionally plus a direct (linear) connection
from the concatenated embeddings, the paper's ``y = b + W x + U tanh(d + H x)``.
"""

from __future__ import annotations

import torch
from torch import nn


def mlp_lm_forward(context: torch.Tensor, embedding: torch.Tensor, w_hidden: torch.Tensor,
                   b_hidden: torch.Tensor, w_out: torch.Tensor, b_out: torch.Tensor,
                   w_direct: torch.Tensor | None = None) -> torch.Tensor:
    """Next-token logits of the MLP language model.

    context: (..., c) int64 token ids, oldest first; embedding: (V, m);
    w_hidden: (h, c*m), b_hidden: (h,); w_out: (V, h), b_out: (V,);
    w_direct: (V, c*m) or None. Weights follow ``nn.Linear`` (out_features, in_features).
    Returns (..., V) logits (not probabilities) in the weights' dtype.
    """
    x = embedding[context].flatten(-2)  # (..., c*m): embeddings concatenated in order
    hidden = torch.tanh(x @ w_hidden.T + b_hidden)  # (..., h)
    logits = hidden @ w_out.T + b_out  # (..., V)
    if w_direct is not None:
        logits = logits + x @ w_direct.T
    return logits


class MLPLanguageModel(nn.Module):
    """Bengio-style MLP LM: ``forward(context (B, c)) -> logits (B, V)``."""

    def __init__(self, vocab_size: int, context_size: int, embed_dim: int = 16,
                 hidden_dim: int = 64, direct: bool = False):
        super().__init__()
        self.context_size = context_size
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.hidden = nn.Linear(context_size * embed_dim, hidden_dim)
        self.out = nn.Linear(hidden_dim, vocab_size)
        self.direct = nn.Linear(context_size * embed_dim, vocab_size, bias=False) if direct else None

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        return mlp_lm_forward(context, self.embed.weight, self.hidden.weight, self.hidden.bias,
                              self.out.weight, self.out.bias,
                              None if self.direct is None else self.direct.weight)


def num_parameters(vocab_size: int, context_size: int, embed_dim: int, hidden_dim: int,
                   direct: bool = False) -> int:
    """V m + (c m + 1) h + (h + 1) V, plus c m V with direct connections."""
    v, c, m, h = vocab_size, context_size, embed_dim, hidden_dim
    return v * m + (c * m + 1) * h + (h + 1) * v + (c * m * v if direct else 0)


def context_windows(tokens: torch.Tensor, context_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Training pairs from a sequence: contexts (T - c, c) and next tokens (T - c,)."""
    windows = tokens.long().unfold(0, context_size + 1, 1)
    return windows[:, :-1], windows[:, -1]

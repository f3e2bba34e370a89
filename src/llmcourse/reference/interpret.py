"""Chapter 10: interpretability tools for the course's GPT -- the residual stream, the
logit lens, attention maps and the induction-head score.

* :func:`residual_stream` -- the vector each position carries between blocks: the embedding
  (index 0) and the output of every block (index l), shape (n_layer + 1, B, T, C).
* :func:`logit_lens` (nostalgebraist 2020) -- read any of those vectors as the model reads
  the last one: through the final LayerNorm ``ln_f`` and the unembedding. At the last layer
  this *is* the model's output. (Hugging Face's GPT-2 ``hidden_states[-1]`` already has
  ``ln_f`` applied, the others do not: the lens must not normalise that one twice.)
* :func:`attention_maps` -- every layer's and head's softmax weights, (n_layer, B, H, T, T).
* :func:`induction_score` (Olsson et al. 2022) -- on a random sequence repeated twice
  (length 2n), an induction head at position t of the second half attends to t - n + 1: the
  token that FOLLOWED the previous occurrence of the current token, which it then predicts.
"""

from __future__ import annotations

import torch

from .attention import attention_weights, causal_mask, split_heads
from .transformer import layer_norm


@torch.no_grad()
def residual_stream(model, idx: torch.Tensor) -> torch.Tensor:
    """(n_layer + 1, B, T, C): embeddings, then the residual after each block, of a course GPT."""
    tr = model.transformer
    x = tr.wte(idx) + tr.wpe(torch.arange(idx.shape[-1], device=idx.device))
    out = [x]
    for block in tr.h:
        x, _ = block(x)
        out.append(x)
    return torch.stack(out)


def logit_lens(resid: torch.Tensor, ln_weight: torch.Tensor, ln_bias: torch.Tensor,
               unembed: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Logits (..., V) of residual vectors (..., C): LayerNorm(resid; ln_weight, ln_bias, eps)
    (biased variance over the last axis) times the unembedding (V, C) transposed."""
    return layer_norm(resid, ln_weight, ln_bias, eps) @ unembed.T


@torch.no_grad()
def attention_maps(model, idx: torch.Tensor) -> torch.Tensor:
    """(n_layer, B, H, T, T) attention weights of every head of a course GPT on idx (B, T)."""
    tr = model.transformer
    T = idx.shape[-1]
    x = tr.wte(idx) + tr.wpe(torch.arange(T, device=idx.device))
    maps = []
    for block in tr.h:
        a = block.attn
        q, k, _ = a.c_attn(block.ln_1(x)).split(x.shape[-1], dim=-1)
        maps.append(attention_weights(split_heads(q, a.n_head), split_heads(k, a.n_head),
                                      causal_mask(T, device=idx.device)))
        x, _ = block(x)
    return torch.stack(maps)


def repeated_random_tokens(n: int, batch: int, generator: torch.Generator, low: int = 32,
                           high: int = 127) -> torch.Tensor:
    """(batch, 2n) int64: n random tokens in [low, high) followed by the same n again."""
    r = torch.randint(low, high, (batch, n), generator=generator)
    return torch.cat([r, r], dim=1)


def induction_score(attn: torch.Tensor) -> torch.Tensor:
    """Mean attention from each position t of the second half of a twice-repeated sequence to
    position t - n + 1, where 2n = T: attn (..., T, T) -> (...)."""
    T = attn.shape[-1]
    n = T // 2
    t = torch.arange(n, 2 * n, device=attn.device)
    return attn[..., t, t - n + 1].mean(-1)

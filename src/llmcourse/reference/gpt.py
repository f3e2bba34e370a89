"""Chapter 02: a GPT-2 style decoder-only language model, readable top to bottom.

In the spirit of nanoGPT's ``model.py``. Parameter names are those of Hugging Face's
``GPT2LMHeadModel`` (``transformer.wte``, ``transformer.h.0.attn.c_attn`` ...), so
:func:`load_hf_gpt2_state` only has to transpose HF's ``Conv1D`` weights, which are stored
(in, out) where ``nn.Linear`` stores (out, in).

Differences from the original Transformer decoder: no cross-attention, learned positions,
pre-LN blocks (``x + f(LayerNorm(x))``) with a final LayerNorm ``ln_f``, GELU with the tanh
approximation (HF calls it ``gelu_new``), and an output layer tied to the token embedding.

Greedy generation can reuse the keys and values of earlier positions (a KV cache); the
tokens are the same as recomputing everything at every step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attention import causal_mask, merge_heads, scaled_dot_product_attention, split_heads
from .transformer import LayerNorm

# One layer's cache: (keys, values), each (batch, n_head, T_so_far, head_dim).
KV = tuple[torch.Tensor, torch.Tensor]


@dataclass
class GPTConfig:
    vocab_size: int = 50257
    block_size: int = 1024  # longest sequence (number of learned positions)
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    layer_norm_eps: float = 1e-5


class CausalSelfAttention(nn.Module):
    """Masked multi-head self-attention; q, k, v come from one projection ``c_attn``."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)  # rows: [q; k; v]
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)

    def forward(self, x: torch.Tensor, past: KV | None = None) -> tuple[torch.Tensor, KV]:
        """x: (B, T, C) new positions; past: cached (k, v) of the positions before them."""
        q, k, v = self.c_attn(x).split(x.shape[-1], dim=-1)
        q, k, v = (split_heads(t, self.n_head) for t in (q, k, v))  # (B, H, T, C/H)
        if past is not None:
            k = torch.cat([past[0], k], dim=-2)
            v = torch.cat([past[1], v], dim=-2)
        T, T_all = q.shape[-2], k.shape[-2]
        mask = causal_mask(T_all, device=x.device)[T_all - T:]  # rows of the new positions
        y = scaled_dot_product_attention(q, k, v, mask)
        return self.c_proj(merge_heads(y)), (k, v)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):
    """Pre-LN Transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, config.layer_norm_eps)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, config.layer_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, past: KV | None = None) -> tuple[torch.Tensor, KV]:
        a, present = self.attn(self.ln_1(x), past)
        x = x + a
        x = x + self.mlp(self.ln_2(x))
        return x, present


class GPT(nn.Module):
    """GPT-2 language model. ``forward(idx)`` maps token ids (B, T) to logits (B, T, vocab)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=LayerNorm(config.n_embd, config.layer_norm_eps),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # weight tying
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor, past: list[KV] | None = None, use_cache: bool = False):
        """idx: (B, T) int64. With ``past`` (one (k, v) per layer) idx holds only the new
        tokens and their positions continue after the cached ones. Returns logits
        (B, T, vocab), or (logits, cache) when ``use_cache`` is True."""
        h, cache = hidden_states(self, idx, past, use_cache=True)
        logits = self.lm_head(h)
        return (logits, cache) if use_cache else logits

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, use_cache: bool = True
                 ) -> torch.Tensor:
        """Greedy decoding: append ``max_new_tokens`` argmax tokens to idx (B, T).

        Without the cache every step runs the whole sequence again (O(T^2) work per token);
        with it, each step feeds only the newest token and the cached keys/values."""
        if idx.shape[-1] + max_new_tokens > self.config.block_size:
            raise ValueError("prompt + max_new_tokens exceeds block_size")
        past, fresh = None, idx
        for _ in range(max_new_tokens):
            if use_cache:
                logits, past = self(fresh, past, use_cache=True)
            else:
                logits = self(idx)
            fresh = logits[:, -1, :].argmax(dim=-1, keepdim=True)  # (B, 1)
            idx = torch.cat([idx, fresh], dim=1)
        return idx


def hidden_states(model: GPT, idx: torch.Tensor, past: list[KV] | None = None,
                  use_cache: bool = False):
    """The final hidden states (after ``ln_f``, what the tied output layer reads; Hugging
    Face's ``hidden_states[-1]`` for GPT-2) of the course's GPT: (B, T) -> (B, T, C).

    This is the GPT's own forward pass (``GPT.forward`` applies ``lm_head`` to it). With
    ``past`` (one (k, v) per layer) idx holds only the new tokens; with ``use_cache`` it
    returns (hidden, cache)."""
    T_past = 0 if past is None else past[0][0].shape[-2]
    T = idx.shape[-1]
    if T_past + T > model.config.block_size:
        raise ValueError(f"sequence of {T_past + T} tokens is longer than block_size="
                         f"{model.config.block_size}")
    tr = model.transformer
    x = tr.wte(idx) + tr.wpe(torch.arange(T_past, T_past + T, device=idx.device))
    cache = []
    for i, block in enumerate(tr.h):
        x, present = block(x, None if past is None else past[i])
        cache.append(present)
    x = tr.ln_f(x)
    return (x, cache) if use_cache else x


# ---------------------------------------------------------------------------------------
# Hugging Face GPT-2 -> this GPT

HF_TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight",
                 "mlp.c_proj.weight")  # HF Conv1D weights are (in, out)


def config_from_hf(hf_config) -> GPTConfig:
    """A GPTConfig with the sizes of a ``transformers.GPT2Config``."""
    if hf_config.activation_function != "gelu_new":
        raise ValueError("only GPT-2's gelu_new (tanh GELU) activation is supported")
    if hf_config.scale_attn_by_inverse_layer_idx or not hf_config.scale_attn_weights:
        raise ValueError("only the standard 1/sqrt(head_dim) attention scaling is supported")
    if hf_config.n_inner not in (None, 4 * hf_config.n_embd):
        raise ValueError("only n_inner = 4 * n_embd is supported")
    return GPTConfig(vocab_size=hf_config.vocab_size, block_size=hf_config.n_positions,
                     n_layer=hf_config.n_layer, n_head=hf_config.n_head,
                     n_embd=hf_config.n_embd, layer_norm_eps=hf_config.layer_norm_epsilon)


@torch.no_grad()
def load_hf_gpt2_state(model: GPT, hf) -> GPT:
    """Copy weights from a ``GPT2LMHeadModel`` (or its ``state_dict()``) into ``model``.

    Names match one to one; HF's Conv1D weights are transposed on the way. The HF model's
    lm_head is tied to wte, as ours is.
    """
    sd = hf.state_dict() if isinstance(hf, nn.Module) else hf
    for name, p in model.state_dict().items():
        src = sd[name].t() if name.endswith(HF_TRANSPOSED) else sd[name]
        if src.shape != p.shape:
            raise ValueError(f"{name}: HF shape {tuple(src.shape)} != ours {tuple(p.shape)}")
        p.copy_(src)
    return model


def from_hf(hf_model) -> GPT:
    """A GPT with the config and weights of a ``GPT2LMHeadModel`` (dtype included)."""
    model = GPT(config_from_hf(hf_model.config)).to(next(hf_model.parameters()).dtype)
    return load_hf_gpt2_state(model, hf_model).eval()

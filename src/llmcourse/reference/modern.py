"""Chapter 03: the modern decoder block (LLaMA-style) and the language model built from it.

What changed from GPT-2's block (chapter 02), and where each piece lives here:

* RMSNorm (均方根归一化) instead of LayerNorm: no mean subtraction, no bias
  (:func:`rms_norm`, :class:`RMSNorm`).
* A gated feed-forward network, SwiGLU (门控线性单元), instead of GELU
  (:func:`swiglu`, :class:`FeedForward`); Primer's squared ReLU is another choice.
* Rotary position embedding applied to queries and keys INSIDE every attention layer
  instead of learned absolute positions added once (chapter 02's ``apply_rope``, the
  "rotate half" layout of GPT-NeoX and Hugging Face LLaMA).
* Grouped-query attention (分组查询注意力, GQA): ``n_kv_head`` key/value heads shared by
  ``n_head`` query heads (``n_kv_head`` divides ``n_head``; 1 = multi-query attention, MQA).
  Query head ``h`` reads key/value head ``h // (n_head // n_kv_head)`` (:func:`repeat_kv`,
  Hugging Face's convention).
* No biases anywhere; optional tying of the output layer to the token embedding.

:class:`ModernLM` is the reference later chapters reuse (mixture of experts, frontiers). With
the default knobs it equals ``transformers.LlamaForCausalLM`` after :func:`load_hf_llama`
copies the weights across (see ``tests/test_reference_ch03.py``). Its other knobs
(``activation``, ``norm``, ``positions``, ``dconv``) span the architecture search of the
chapter's last notebook; ``activation="gelu", norm="layer", positions="learned"`` is GPT-2's
block without biases.

KV cache (键值缓存): ``forward(idx, past, use_cache=True)`` returns one ``(k, v)`` per layer,
each ``(B, n_kv_head, T_so_far, head_dim)``, stored BEFORE the heads are repeated: a GQA
model caches ``n_head / n_kv_head`` times fewer bytes (:func:`kv_cache_bytes`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attention import apply_rope, merge_heads
from .primer import DepthwiseConv, squared_relu
from .transformer import LayerNorm

# One layer's cache: (keys, values), each (batch, n_kv_head, T_so_far, head_dim).
KV = tuple[torch.Tensor, torch.Tensor]


# ---------------------------------------------------------------------------------------
# RMSNorm

def rms_norm(x: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    """Root-mean-square normalisation over the last axis (Zhang & Sennrich, 2019):

        y = x / sqrt(mean(x^2) + eps) * weight

    x: (..., d); weight: (d,) or None. No mean is subtracted and there is no bias; eps sits
    INSIDE the square root (as in ``torch.nn.RMSNorm`` and Hugging Face's ``LlamaRMSNorm``).
    """
    y = x * torch.rsqrt(x.square().mean(dim=-1, keepdim=True) + eps)
    return y if weight is None else y * weight


class RMSNorm(nn.Module):
    """RMSNorm with a learnable ``weight`` (ones), like ``torch.nn.RMSNorm(d, eps)``."""

    def __init__(self, d: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


# ---------------------------------------------------------------------------------------
# Feed-forward networks

def silu(x: torch.Tensor) -> torch.Tensor:
    """SiLU / swish: x * sigmoid(x)."""
    return x * torch.sigmoid(x)


def swiglu(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor
           ) -> torch.Tensor:
    """SwiGLU feed-forward (Shazeer, 2020), LLaMA's MLP, no biases:

        FFN(x) = (silu(x W_gate^T) * (x W_up^T)) W_down^T

    x (..., d); w_gate, w_up (d_ff, d); w_down (d, d_ff) (nn.Linear layout). The GATE goes
    through the SiLU, the UP projection does not.
    """
    return (silu(x @ w_gate.T) * (x @ w_up.T)) @ w_down.T


def swiglu_hidden(d: int, multiple_of: int = 8) -> int:
    """LLaMA's width for a SwiGLU FFN: 2/3 of 4d (three matrices cost what GPT's two of
    width 4d cost), rounded up to a multiple of ``multiple_of``."""
    return multiple_of * math.ceil(8 * d / 3 / multiple_of)


ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "sq_relu": squared_relu}


class FeedForward(nn.Module):
    """``down_proj(act(up_proj(x)))``, or SwiGLU with ``gate_proj`` too; no biases.

    activation: "swiglu" (parameters ``gate_proj``, ``up_proj``, ``down_proj``: Hugging
    Face's ``LlamaMLP``), or "relu", "gelu" (exact), "sq_relu" (Primer) with ``up_proj``
    and ``down_proj`` only."""

    def __init__(self, d: int, d_ff: int, activation: str = "swiglu"):
        super().__init__()
        if activation != "swiglu" and activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}")
        self.activation = activation
        if activation == "swiglu":
            self.gate_proj = nn.Linear(d, d_ff, bias=False)
        self.up_proj = nn.Linear(d, d_ff, bias=False)
        self.down_proj = nn.Linear(d_ff, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activation == "swiglu":
            return swiglu(x, self.gate_proj.weight, self.up_proj.weight, self.down_proj.weight)
        return self.down_proj(ACTIVATIONS[self.activation](self.up_proj(x)))


# ---------------------------------------------------------------------------------------
# Attention with RoPE and grouped-query heads

def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, H_kv, T, d) -> (B, H_kv * n_rep, T, d): each key/value head repeated ``n_rep``
    times IN PLACE (heads 0,0,..,1,1,..), so query head h reads kv head h // n_rep.
    Equals ``torch.repeat_interleave(x, n_rep, dim=1)`` (not ``x.repeat(1, n_rep, 1, 1)``)."""
    if n_rep == 1:
        return x
    B, H, T, d = x.shape
    return x[:, :, None].expand(B, H, n_rep, T, d).reshape(B, H * n_rep, T, d)


def gqa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True
                  ) -> torch.Tensor:
    """Causal attention with grouped key/value heads.

    q: (B, H, T_q, d); k, v: (B, H_kv, T_k, d) with H_kv dividing H. The queries are the LAST
    T_q of the T_k positions (T_q = T_k without a cache, 1 when decoding one token): query i
    sits at position T_k - T_q + i and sees keys 0..T_k - T_q + i. Returns (B, H, T_q, d).
    Equals ``F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)`` when
    T_q = T_k.
    """
    H, H_kv = q.shape[-3], k.shape[-3]
    if H % H_kv:
        raise ValueError(f"n_kv_head={H_kv} does not divide n_head={H}")
    k, v = repeat_kv(k, H // H_kv), repeat_kv(v, H // H_kv)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if causal:
        T_q, T_k = q.shape[-2], k.shape[-2]
        allowed = torch.ones(T_k, T_k, dtype=torch.bool, device=q.device).tril()[T_k - T_q:]
        scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


class Attention(nn.Module):
    """Causal self-attention with RoPE inside the layer and ``n_kv_head`` key/value heads.

    Parameters (Hugging Face ``LlamaAttention`` names, no biases): ``q_proj`` (H*dh, C),
    ``k_proj`` and ``v_proj`` (H_kv*dh, C), ``o_proj`` (C, H*dh), with dh = C / H. With
    ``dconv=True`` (Primer's multi-dconv-head attention) ``q_dconv``, ``k_dconv``,
    ``v_dconv`` apply a causal depthwise convolution of width 3 after each projection.

    forward(x, positions, past): x (B, T, C) new positions; positions (T,) their absolute
    positions (default: continuing after the cache); past: this layer's cached (k, v).
    Returns (output (B, T, C), present (k, v) with the new positions appended)."""

    def __init__(self, n_embd: int, n_head: int, n_kv_head: int | None = None, rope: bool = True,
                 rope_base: float = 10000.0, dconv: bool = False):
        super().__init__()
        n_kv_head = n_kv_head or n_head
        if n_embd % n_head or n_head % n_kv_head:
            raise ValueError("n_head must divide n_embd and n_kv_head must divide n_head")
        self.n_head, self.n_kv_head, self.head_dim = n_head, n_kv_head, n_embd // n_head
        self.rope, self.rope_base, self.dconv = rope, rope_base, dconv
        kv = n_kv_head * self.head_dim
        self.q_proj = nn.Linear(n_embd, n_embd, bias=False)
        self.k_proj = nn.Linear(n_embd, kv, bias=False)
        self.v_proj = nn.Linear(n_embd, kv, bias=False)
        self.o_proj = nn.Linear(n_embd, n_embd, bias=False)
        if dconv:
            self.q_dconv, self.k_dconv, self.v_dconv = (DepthwiseConv(n) for n in (n_embd, kv, kv))

    def _heads(self, x: torch.Tensor, n: int) -> torch.Tensor:
        B, T, _ = x.shape
        return x.view(B, T, n, self.head_dim).transpose(1, 2)  # (B, n, T, dh)

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None,
                past: KV | None = None) -> tuple[torch.Tensor, KV]:
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if self.dconv:
            if past is not None:
                raise ValueError("the KV cache is not supported with dconv=True")
            q, k, v = self.q_dconv(q), self.k_dconv(k), self.v_dconv(v)
        q, k, v = self._heads(q, self.n_head), self._heads(k, self.n_kv_head), self._heads(v, self.n_kv_head)
        T_past = 0 if past is None else past[0].shape[-2]
        if positions is None:
            positions = torch.arange(T_past, T_past + x.shape[1], device=x.device)
        if self.rope:
            q, k = apply_rope(q, positions, self.rope_base), apply_rope(k, positions, self.rope_base)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=-2), torch.cat([past[1], v], dim=-2)
        y = gqa_attention(q, k, v)
        return self.o_proj(merge_heads(y)), (k, v)


# ---------------------------------------------------------------------------------------
# The block and the language model

@dataclass
class ModernConfig:
    """Sizes and knobs of :class:`ModernLM`. ``d_ff`` None: :func:`swiglu_hidden` for SwiGLU,
    4 n_embd otherwise. ``n_kv_head`` None: = n_head (MHA). ``block_size`` bounds learned
    positions (and generation)."""

    vocab_size: int = 256
    block_size: int = 128
    n_layer: int = 2
    n_head: int = 4
    n_kv_head: int | None = None
    n_embd: int = 64
    d_ff: int | None = None
    norm_eps: float = 1e-6
    rope_base: float = 10000.0
    tie_weights: bool = True
    activation: str = "swiglu"  # "swiglu" | "relu" | "gelu" | "sq_relu"
    norm: str = "rms"  # "rms" | "layer"
    positions: str = "rope"  # "rope" | "learned"
    dconv: bool = False  # Primer's depthwise convolution after the Q, K, V projections

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def hidden(self) -> int:
        if self.d_ff:
            return self.d_ff
        return swiglu_hidden(self.n_embd) if self.activation == "swiglu" else 4 * self.n_embd


def _norm(cfg: ModernConfig) -> nn.Module:
    if cfg.norm == "rms":
        return RMSNorm(cfg.n_embd, cfg.norm_eps)
    if cfg.norm == "layer":
        return LayerNorm(cfg.n_embd, cfg.norm_eps)
    raise ValueError(f"unknown norm {cfg.norm!r}")


class Block(nn.Module):
    """Pre-norm block: x + self_attn(input_layernorm(x)), then x + mlp(post_attention_layernorm(x))."""

    def __init__(self, cfg: ModernConfig):
        super().__init__()
        self.input_layernorm = _norm(cfg)
        self.self_attn = Attention(cfg.n_embd, cfg.n_head, cfg.kv_heads, cfg.positions == "rope",
                                   cfg.rope_base, cfg.dconv)
        self.post_attention_layernorm = _norm(cfg)
        self.mlp = FeedForward(cfg.n_embd, cfg.hidden, cfg.activation)

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None,
                past: KV | None = None) -> tuple[torch.Tensor, KV]:
        a, present = self.self_attn(self.input_layernorm(x), positions, past)
        x = x + a
        return x + self.mlp(self.post_attention_layernorm(x)), present


class ModernLM(nn.Module):
    """A pre-norm decoder-only language model: ids (B, T) -> logits (B, T, vocab).

    Parameters: ``embed_tokens``, ``layers[i]`` (:class:`Block`), ``norm``, ``lm_head``
    (tied to ``embed_tokens`` when ``cfg.tie_weights``), and ``wpe`` (learned positions)
    when ``cfg.positions == "learned"``. Hugging Face's names without the ``model.`` prefix.
    """

    def __init__(self, cfg: ModernConfig):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        if cfg.positions == "learned":
            self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        elif cfg.positions != "rope":
            raise ValueError(f"unknown positions {cfg.positions!r}")
        self.layers = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.norm = _norm(cfg)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_weights:
            self.lm_head.weight = self.embed_tokens.weight
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor, past: list[KV] | None = None, use_cache: bool = False):
        """idx (B, T) int64. With ``past`` (one (k, v) per layer, as returned before) idx holds
        only the new tokens, whose positions continue after the cached ones. Returns logits
        (B, T, vocab), or (logits, cache) when ``use_cache``."""
        T_past = 0 if past is None else past[0][0].shape[-2]
        pos = torch.arange(T_past, T_past + idx.shape[-1], device=idx.device)
        x = self.embed_tokens(idx)
        if self.config.positions == "learned":
            if T_past + idx.shape[-1] > self.config.block_size:
                raise ValueError(f"{T_past + idx.shape[-1]} positions > block_size")
            x = x + self.wpe(pos)
        cache = []
        for i, layer in enumerate(self.layers):
            x, present = layer(x, pos, None if past is None else past[i])
            cache.append(present)
        logits = self.lm_head(self.norm(x))
        return (logits, cache) if use_cache else logits

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, use_cache: bool = True) -> torch.Tensor:
        """Greedy decoding. With the cache each step feeds only the newest token."""
        past, fresh = None, idx
        for _ in range(max_new_tokens):
            if use_cache:
                logits, past = self(fresh, past, use_cache=True)
            else:
                logits = self(idx)
            fresh = logits[:, -1:].argmax(-1)
            idx = torch.cat([idx, fresh], dim=1)
        return idx


def hidden_states(model: ModernLM, idx: torch.Tensor) -> torch.Tensor:
    """The final hidden states (after the last ``norm``, what ``lm_head`` reads; Hugging
    Face's ``hidden_states[-1]`` for LLaMA): (B, T) -> (B, T, n_embd)."""
    pos = torch.arange(idx.shape[-1], device=idx.device)
    x = model.embed_tokens(idx)
    if model.config.positions == "learned":
        x = x + model.wpe(pos)
    for layer in model.layers:
        x, _ = layer(x, pos)
    return model.norm(x)


# ---------------------------------------------------------------------------------------
# KV-cache size

def kv_cache_bytes(batch: int, seq_len: int, n_layer: int, n_kv_head: int, head_dim: int,
                   bytes_per_value: int = 2) -> int:
    """Bytes of a KV cache: 2 (K and V) x layers x batch x positions x kv heads x head_dim x
    bytes per value (2 for float16/bfloat16). GQA shrinks it by n_head / n_kv_head."""
    return 2 * n_layer * batch * seq_len * n_kv_head * head_dim * bytes_per_value


def cache_nbytes(cache: list[KV]) -> int:
    """Bytes actually held by a cache returned by ``ModernLM.forward(..., use_cache=True)``."""
    return sum(t.numel() * t.element_size() for kv in cache for t in kv)


# ---------------------------------------------------------------------------------------
# Hugging Face LLaMA <-> ModernLM

def hf_llama_config(cfg: ModernConfig):
    """The ``transformers.LlamaConfig`` of a LLaMA-style ModernConfig (eager attention)."""
    from transformers import LlamaConfig

    if (cfg.activation, cfg.norm, cfg.positions, cfg.dconv) != ("swiglu", "rms", "rope", False):
        raise ValueError("only the LLaMA knobs (swiglu, rms, rope, no dconv) exist in Hugging Face")
    return LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.n_embd,
                       intermediate_size=cfg.hidden, num_hidden_layers=cfg.n_layer,
                       num_attention_heads=cfg.n_head, num_key_value_heads=cfg.kv_heads,
                       max_position_embeddings=cfg.block_size, rms_norm_eps=cfg.norm_eps,
                       rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_base},
                       tie_word_embeddings=cfg.tie_weights, attention_bias=False, mlp_bias=False,
                       hidden_act="silu", attn_implementation="eager")


def config_from_hf(hf_config) -> ModernConfig:
    """A ModernConfig with the sizes of a ``LlamaConfig``."""
    rope = getattr(hf_config, "rope_parameters", None) or {}
    return ModernConfig(vocab_size=hf_config.vocab_size,
                        block_size=hf_config.max_position_embeddings,
                        n_layer=hf_config.num_hidden_layers, n_head=hf_config.num_attention_heads,
                        n_kv_head=hf_config.num_key_value_heads, n_embd=hf_config.hidden_size,
                        d_ff=hf_config.intermediate_size, norm_eps=hf_config.rms_norm_eps,
                        rope_base=float(rope.get("rope_theta", 10000.0)),
                        tie_weights=bool(hf_config.tie_word_embeddings))


@torch.no_grad()
def load_hf_llama(model: ModernLM, hf) -> ModernLM:
    """Copy a ``LlamaForCausalLM`` (or its state dict) into ``model``: names are HF's
    without the ``model.`` prefix."""
    sd = hf.state_dict() if isinstance(hf, nn.Module) else hf
    for name, p in model.state_dict().items():
        src = sd[name if name == "lm_head.weight" else "model." + name]
        if src.shape != p.shape:
            raise ValueError(f"{name}: HF shape {tuple(src.shape)} != ours {tuple(p.shape)}")
        p.copy_(src)
    return model


@torch.no_grad()
def to_hf_llama(model: ModernLM):
    """A ``LlamaForCausalLM`` with ``model``'s config, weights and dtype."""
    from transformers import LlamaForCausalLM

    hf = LlamaForCausalLM(hf_llama_config(model.config)).to(next(model.parameters()).dtype)
    hf_sd = hf.state_dict()
    for name, p in model.state_dict().items():
        hf_sd[name if name == "lm_head.weight" else "model." + name].copy_(p)
    return hf.eval()


def from_hf_llama(hf_model) -> ModernLM:
    """A ModernLM with the config, weights and dtype of a ``LlamaForCausalLM``."""
    model = ModernLM(config_from_hf(hf_model.config)).to(next(hf_model.parameters()).dtype)
    return load_hf_llama(model, hf_model).eval()


def config_dict(cfg: ModernConfig) -> dict:
    return asdict(cfg)

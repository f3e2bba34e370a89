"""Chapter 07: counting a GPT's parameters and FLOPs, fitting power laws, and the Chinchilla
compute-optimal allocation.

Conventions (the ones the chapter states and every function here follows):

* ``N`` counts every *stored* parameter once. The reference GPT ties its output layer to the
  token embedding, so the ``V x C`` matrix counts once. Embeddings are included in N;
  ``non_embedding=True`` gives Kaplan et al.'s (2020) N, which leaves out the token and
  position embeddings (and so, for a tied model, the output layer too).
* FLOPs are those of the matrix multiplications, 2 per multiply-add, as
  ``torch.utils.flop_counter.FlopCounterMode`` counts them. Embedding look-ups, LayerNorm,
  GELU, softmax and bias additions are not matrix multiplications and count zero. Per token
  the forward pass costs ``2 N_mm + 4 L T C``, where ``N_mm = 12 L C^2 + V C`` are the weights
  used in matmuls (the tied head is one) and ``4 L T C`` is attention's ``QK^T`` and
  ``softmax(.) V`` over the full ``T x T`` score matrix; the backward pass costs twice the
  forward, so training costs ``6 N_mm + 12 L T C`` per token.
* The Chinchilla fit (Hoffmann et al., 2022, approach 3) is
  ``L(N, D) = E + A / N^alpha + B / D^beta`` with ``C = 6 N D``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


# ---------------------------------------------------------------------------------------
# Counting parameters and FLOPs

def gpt_param_count(vocab_size: int, block_size: int, n_layer: int, n_embd: int,
                    non_embedding: bool = False) -> int:
    """Exact number of parameters of ``llmcourse.reference.gpt.GPT`` (tied output layer).

    N = V C + T C + L (12 C^2 + 13 C) + 2 C, with V = vocab_size, T = block_size, C = n_embd:
    per block 2 LayerNorms (4 C), c_attn (3 C^2 + 3 C), attention c_proj (C^2 + C), c_fc
    (4 C^2 + 4 C) and the MLP's c_proj (4 C^2 + C); then ln_f (2 C). The number of heads
    does not change it. ``non_embedding`` drops V C + T C (Kaplan's convention)."""
    C = n_embd
    n = n_layer * (12 * C * C + 13 * C) + 2 * C
    if not non_embedding:
        n += vocab_size * C + block_size * C
    return int(n)


def count_parameters(model: nn.Module) -> int:
    """Stored parameters: ``model.parameters()`` yields a tied tensor once."""
    return sum(p.numel() for p in model.parameters())


def matmul_params(vocab_size: int, n_layer: int, n_embd: int) -> int:
    """Weights that take part in a matrix multiplication: 12 L C^2 + V C (head tied)."""
    return 12 * n_layer * n_embd ** 2 + vocab_size * n_embd


def forward_flops_per_token(vocab_size: int, n_layer: int, n_embd: int, seq_len: int) -> int:
    """Forward-pass matmul FLOPs per token for sequences of ``seq_len``: 2 N_mm + 4 L T C."""
    return 2 * matmul_params(vocab_size, n_layer, n_embd) + 4 * n_layer * seq_len * n_embd


def train_flops_per_token(vocab_size: int, n_layer: int, n_embd: int, seq_len: int) -> int:
    """Forward + backward FLOPs per token: 6 N_mm + 12 L T C (backward = 2 x forward)."""
    return 3 * forward_flops_per_token(vocab_size, n_layer, n_embd, seq_len)


def measure_flops(model: nn.Module, idx: torch.Tensor, backward: bool = True) -> int:
    """FLOPs PyTorch itself counts for one forward (and backward) pass on ``idx`` (B, T)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        logits = model(idx)
        if backward:
            logits.float().logsumexp(-1).mean().backward()
    return int(counter.get_total_flops())


# ---------------------------------------------------------------------------------------
# Encoders: BERT and ALBERT (Hugging Face's BertModel / AlbertModel, pooler included)

def _encoder_layer_params(H: int, I: int) -> int:
    """One post-LN encoder layer of width H and FFN width I: Q, K, V and the output
    projection (4 H^2 + 4 H), two LayerNorms (4 H), the FFN H -> I -> H (2 H I + I + H)."""
    return 4 * H * H + 4 * H + 4 * H + 2 * H * I + I + H


def bert_param_count(config: dict) -> int:
    """Parameters of ``transformers.BertModel(BertConfig(**config))`` with its pooler:
    embeddings (V + P + T_type) H + LayerNorm 2 H, L layers, pooler H^2 + H."""
    V, H, L, I = (config[k] for k in ("vocab_size", "hidden_size", "num_hidden_layers",
                                      "intermediate_size"))
    P, T = config.get("max_position_embeddings", 512), config.get("type_vocab_size", 2)
    return int((V + P + T) * H + 2 * H + L * _encoder_layer_params(H, I) + H * H + H)


def albert_param_count(config: dict) -> int:
    """Parameters of ``transformers.AlbertModel(AlbertConfig(**config))`` with its pooler.

    Factorised embedding (词嵌入因式分解): the tables have width E (``embedding_size``),
    (V + P + T_type) E + LayerNorm 2 E, then one projection E -> H (E H + H) instead of
    V H. Cross-layer sharing (跨层参数共享): the ``num_hidden_layers`` layers reuse
    ``num_hidden_groups`` groups of ``inner_group_num`` layers each, so only
    G x inner distinct layers are stored, however deep the network runs. Pooler H^2 + H."""
    V, E, H, I = (config[k] for k in ("vocab_size", "embedding_size", "hidden_size",
                                      "intermediate_size"))
    P, T = config.get("max_position_embeddings", 512), config.get("type_vocab_size", 2)
    stored = config.get("num_hidden_groups", 1) * config.get("inner_group_num", 1)
    embeddings = (V + P + T) * E + 2 * E
    return int(embeddings + E * H + H + stored * _encoder_layer_params(H, I) + H * H + H)


# ---------------------------------------------------------------------------------------
# Power laws

def power_law(N, E: float, A: float, alpha: float):
    """L(N) = E + A / N^alpha."""
    return E + A * N ** (-alpha)


def _linear_fit(x: torch.Tensor, L: torch.Tensor) -> tuple[float, float, float]:
    """Least squares L ~ E + A x; returns (E, A, sum of squared residuals)."""
    X = torch.stack([torch.ones_like(x), x], dim=1)
    sol = torch.linalg.lstsq(X, L[:, None]).solution[:, 0]
    r = L - X @ sol
    return float(sol[0]), float(sol[1]), float((r * r).sum())


def fit_power_law(N: torch.Tensor, L: torch.Tensor, alpha_range: tuple[float, float] = (1e-3, 3.0)
                  ) -> tuple[float, float, float]:
    """Least-squares fit of L = E + A / N^alpha; returns (E, A, alpha) as floats.

    Variable projection: for a fixed alpha the model is linear in (E, A), so E and A have a
    closed form; the remaining 1-D problem in alpha is solved by a log-spaced grid followed
    by golden-section search around the best grid point. N, L: 1-D, >= 3 points."""
    N = torch.as_tensor(N, dtype=torch.float64)
    L = torch.as_tensor(L, dtype=torch.float64)
    if N.ndim != 1 or N.shape != L.shape or len(N) < 3:
        raise ValueError("N and L must be 1-D with the same length >= 3")
    scale = N.max()  # fit in N / max(N) for conditioning, A is rescaled at the end

    def sse(a: float) -> float:
        return _linear_fit((N / scale) ** (-a), L)[2]

    lo, hi = alpha_range
    grid = torch.logspace(math.log10(lo), math.log10(hi), 400, dtype=torch.float64).tolist()
    values = [sse(a) for a in grid]
    i = min(range(len(grid)), key=values.__getitem__)
    a, b = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    phi = (math.sqrt(5) - 1) / 2
    c, d = b - phi * (b - a), a + phi * (b - a)
    fc, fd = sse(c), sse(d)
    for _ in range(200):
        if b - a < 1e-13 * max(1.0, b):
            break
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - phi * (b - a)
            fc = sse(c)
        else:
            a, c, fc = c, d, fd
            d = a + phi * (b - a)
            fd = sse(d)
    alpha = (a + b) / 2
    E, A_scaled, _ = _linear_fit((N / scale) ** (-alpha), L)
    return E, A_scaled * float(scale) ** alpha, alpha


# ---------------------------------------------------------------------------------------
# Chinchilla

@dataclass(frozen=True)
class ScalingFit:
    """Parameters of L(N, D) = E + A / N^alpha + B / D^beta (nats per token)."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float


# Hoffmann et al. (2022), approach 3, as published.
CHINCHILLA = ScalingFit(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
# Besiroglu et al. (2024), "Chinchilla Scaling: A replication attempt": the refit on the
# data reconstructed from the paper's figure.
BESIROGLU = ScalingFit(E=1.8172, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658)


def chinchilla_loss(N, D, fit: ScalingFit = CHINCHILLA):
    """L(N, D) = E + A / N^alpha + B / D^beta."""
    return fit.E + fit.A * N ** (-fit.alpha) + fit.B * D ** (-fit.beta)


def chinchilla_optimal(C, A: float, B: float, alpha: float, beta: float):
    """Compute-optimal (N*, D*) for a budget of C FLOPs with C = 6 N D.

    N* = G (C/6)^(beta/(alpha+beta)), D* = G^-1 (C/6)^(alpha/(alpha+beta)),
    G = (alpha A / (beta B))^(1/(alpha+beta)). C: a float or a tensor of budgets."""
    G = (alpha * A / (beta * B)) ** (1.0 / (alpha + beta))
    s = C / 6.0
    return G * s ** (beta / (alpha + beta)), s ** (alpha / (alpha + beta)) / G


def optimal_allocation(C, fit: ScalingFit = CHINCHILLA):
    """(N*, D*) for the budget C under ``fit``."""
    return chinchilla_optimal(C, fit.A, fit.B, fit.alpha, fit.beta)


def chinchilla_optimal_numeric(C: float, fit: ScalingFit = CHINCHILLA) -> tuple[float, float]:
    """The same optimum found by minimising L(N, C / (6 N)) over log N (golden section):
    an independent check of the closed form."""
    def loss(logn: float) -> float:
        n = math.exp(logn)
        return chinchilla_loss(n, C / (6 * n), fit)

    a, b = 0.0, math.log(C / 6)  # N between 1 and C/6 (D >= 1)
    phi = (math.sqrt(5) - 1) / 2
    for _ in range(300):
        c, d = b - phi * (b - a), a + phi * (b - a)
        if loss(c) < loss(d):
            b = d
        else:
            a = c
    n = math.exp((a + b) / 2)
    return n, C / (6 * n)


# ---------------------------------------------------------------------------------------
# Sparse (mixture-of-experts) GPTs (chapter 08)

def moe_gpt_counts(vocab_size: int, block_size: int, n_layer: int, n_embd: int, n_experts: int,
                   top_k: int, d_ff: int, seq_len: int) -> tuple[int, int, int]:
    """(total parameters, active parameters per token, forward matmul FLOPs per token) of
    chapter 08's ``MoEGPT``: the GPT above with every MLP replaced by ``n_experts`` GELU experts
    C -> d_ff -> C (with biases) and a bias-free router (C x E). A token uses the router and
    ``top_k`` experts; FLOPs follow :func:`forward_flops_per_token` (attention 4 L T C, the
    tied head V C)."""
    C = n_embd
    dense_mlp = 8 * C * C + 5 * C
    expert = 2 * C * d_ff + d_ff + C
    router = C * n_experts
    base = gpt_param_count(vocab_size, block_size, n_layer, C) - n_layer * dense_mlp
    total = base + n_layer * (n_experts * expert + router)
    active = base + n_layer * (top_k * expert + router)
    mm = 4 * C * C + top_k * 2 * C * d_ff + router  # per layer: attention projections + FFN
    flops = 2 * (n_layer * mm + vocab_size * C) + 4 * n_layer * seq_len * C
    return int(total), int(active), int(flops)

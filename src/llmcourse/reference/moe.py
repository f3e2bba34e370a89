"""Chapter 08: sparse mixtures of experts (混合专家): routers, token dispatch, capacity, the
auxiliary losses, expert parallelism, and a GPT whose feed-forward layers are sparse.

Conventions (the chapter states them; the tests hold them against Hugging Face):

* **Top-k router (Mixtral).** ``p = softmax(x W_r^T)`` over all E experts, keep the k largest,
  and (``normalize=True``, Mixtral's choice) divide them by their sum. ``normalize=False`` keeps
  the raw probabilities (Switch's top-1, Qwen-MoE's ``norm_topk_prob=False``). Softmax over the
  k kept *logits* equals the renormalised version, never the unnormalised one.
* **Mixtral experts** are SwiGLU: ``down(silu(gate(x)) * up(x))`` with ``gate_up`` stacked as
  (E, 2I, C), gate rows first, and ``down`` (E, C, I), as ``MixtralExperts`` stores them.
* **Switch top-1 with capacity.** Groups are sequences: ``capacity = ceil(capacity_factor * T /
  E)`` tokens per expert *per group*; tokens claim a slot in sequence order; a token over its
  expert's capacity is dropped: the MoE output is 0 there and the residual connection carries
  the token through unchanged (``SwitchTransformersTop1Router`` and ``SparseMLP``).
* **Load-balancing loss** ``N * sum_i f_i P_i`` with ``f_i`` the fraction of (token, slot)
  assignments that went to expert i (hard counts from the top-k) and ``P_i`` the mean router
  probability of expert i (Mixtral's ``load_balancing_loss_func``; Switch's for k = 1 and one
  group); the coefficient alpha multiplies it outside. **Router z-loss** (ST-MoE): the mean
  over tokens of ``logsumexp(logits)^2``.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


# ---------------------------------------------------------------------------------------
# Routing and the Mixtral-style mixture

def top_k_route(logits: torch.Tensor, k: int, normalize: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (N, E) -> (weights (N, k), indices (N, k)), largest probability first."""
    probs = torch.softmax(logits, dim=-1)
    weights, indices = torch.topk(probs, k, dim=-1)
    if normalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, indices


def swiglu_expert(x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """One Mixtral expert: gate_up (2I, C), down (C, I); x (n, C) -> (n, C)."""
    gate, up = (x @ gate_up.T).chunk(2, dim=-1)
    return (F.silu(gate) * up) @ down.T


def moe_forward(x: torch.Tensor, router_weight: torch.Tensor, gate_up: torch.Tensor,
                down: torch.Tensor, k: int) -> torch.Tensor:
    """The top-k mixture, a dense loop over experts: x (N, C), router_weight (E, C),
    gate_up (E, 2I, C), down (E, C, I) -> (N, C) = sum_j w_j expert_{i_j}(x)."""
    weights, indices = top_k_route(x @ router_weight.T, k)
    out = torch.zeros_like(x)
    for e in range(router_weight.shape[0]):
        token, slot = torch.where(indices == e)
        if len(token):
            y = swiglu_expert(x[token], gate_up[e], down[e]) * weights[token, slot, None]
            out = out.index_add(0, token, y)
    return out


def dispatch(indices: torch.Tensor, n_experts: int
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sort the (token, slot) assignments of indices (N, k) by expert.

    Returns ``token`` (N*k,) and ``slot`` (N*k,): the assignments grouped by expert 0, 1, ...,
    within an expert in the order of the flattened (row-major) indices, and ``counts`` (E,):
    how many assignments each expert got. Expert e's rows are ``counts[:e].sum()`` onwards."""
    flat = indices.reshape(-1)
    order = torch.argsort(flat, stable=True)
    k = indices.shape[-1]
    return order // k, order % k, torch.bincount(flat, minlength=n_experts)


def moe_forward_dispatched(x, router_weight, gate_up, down, k) -> torch.Tensor:
    """:func:`moe_forward` computed the way fast kernels do: gather the tokens sorted by
    expert, run each expert on one contiguous block, scatter the weighted results back."""
    weights, indices = top_k_route(x @ router_weight.T, k)
    token, slot, counts = dispatch(indices, router_weight.shape[0])
    xs = x[token]  # (N*k, C), grouped by expert
    ys = torch.cat([swiglu_expert(chunk, gate_up[e], down[e])
                    for e, chunk in enumerate(xs.split(counts.tolist()))])
    return torch.zeros_like(x).index_add(0, token, ys * weights[token, slot, None])


class MixtralStyleMoE(nn.Module):
    """The Mixtral sparse block with named weights (``router``, ``gate_up``, ``down``)."""

    def __init__(self, d_model: int, d_ff: int, n_experts: int, k: int):
        super().__init__()
        self.k = k
        self.router = nn.Parameter(torch.randn(n_experts, d_model) * d_model ** -0.5)
        self.gate_up = nn.Parameter(torch.randn(n_experts, 2 * d_ff, d_model) * d_model ** -0.5)
        self.down = nn.Parameter(torch.randn(n_experts, d_model, d_ff) * d_ff ** -0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        return moe_forward_dispatched(x, self.router, self.gate_up, self.down, self.k).reshape(shape)

    @torch.no_grad()
    def load_mixtral(self, block) -> "MixtralStyleMoE":
        """Copy a ``transformers`` ``MixtralSparseMoeBlock``'s weights."""
        self.router.copy_(block.gate.weight)
        self.gate_up.copy_(block.experts.gate_up_proj)
        self.down.copy_(block.experts.down_proj)
        return self


# ---------------------------------------------------------------------------------------
# Switch: top-1 with capacity, and the auxiliary losses

def expert_capacity(tokens_per_group: int, n_experts: int, capacity_factor: float) -> int:
    """Slots per expert and group: ceil(capacity_factor * tokens_per_group / n_experts)."""
    return int(math.ceil(capacity_factor * tokens_per_group / n_experts))


def switch_route(logits: torch.Tensor, capacity_factor: float
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (G, T, E) -> (dispatch (G, T, E) int64 one-hot, all zero for a dropped token;
    gate (G, T), the probability of the chosen expert), as ``SwitchTransformersTop1Router``."""
    G, T, E = logits.shape
    probs = torch.softmax(logits, dim=-1)
    gate, index = probs.max(dim=-1)
    onehot = F.one_hot(index, E)
    priority = onehot.cumsum(dim=-2)  # position of each token in its expert's queue
    keep = priority <= expert_capacity(T, E, capacity_factor)
    return onehot * keep, gate


def switch_layer(x: torch.Tensor, router_weight: torch.Tensor, w_in: torch.Tensor,
                 w_out: torch.Tensor, capacity_factor: float) -> torch.Tensor:
    """A Switch FFN sub-layer with its residual: x (G, T, C), router_weight (E, C),
    w_in (E, H, C), w_out (E, C, H) (ReLU experts, no biases) -> x + gate * expert(x) for a
    routed token, x itself for a dropped one."""
    mask, gate = switch_route(x @ router_weight.T, capacity_factor)
    out = torch.zeros_like(x)
    for e in range(router_weight.shape[0]):
        sel = mask[..., e].bool()
        if sel.any():
            h = torch.relu(x[sel] @ w_in[e].T) @ w_out[e].T
            out[sel] = h * gate[sel][:, None]
    return x + out


def load_balancing_loss(router_logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """N * sum_i f_i P_i for router_logits (tokens, E) (Mixtral's convention)."""
    E = router_logits.shape[-1]
    probs = torch.softmax(router_logits, dim=-1)
    _, chosen = torch.topk(probs, top_k, dim=-1)
    f = F.one_hot(chosen, E).sum(dim=-2).to(probs.dtype).mean(dim=0)  # sums to top_k
    P = probs.mean(dim=0)
    return E * (f * P).sum()


def router_z_loss(router_logits: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of logsumexp(logits)^2 (ST-MoE, Zoph et al. 2022)."""
    return torch.logsumexp(router_logits, dim=-1).pow(2).mean()


# ---------------------------------------------------------------------------------------
# Expert parallelism: experts spread over ranks, tokens travel by all-to-all

def expert_owner(expert: torch.Tensor, n_experts: int, world_size: int) -> torch.Tensor:
    """Rank that holds each expert: blocks of E / R consecutive experts per rank."""
    return expert // (n_experts // world_size)


def _relu_expert(x, w_in, w_out):
    return torch.relu(x @ w_in.T) @ w_out.T


def expert_parallel_forward(x_shards: list[torch.Tensor], expert_shards: list[torch.Tensor],
                            gate_shards: list[torch.Tensor], w_in: torch.Tensor,
                            w_out: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Top-1 MoE over R simulated ranks. Rank r holds tokens x_r (N_r, C), their experts
    (N_r,) and gates (N_r,); expert e lives on rank ``expert_owner(e)``. Each rank sends every
    token to the rank of its expert (all-to-all), that rank applies the expert, the results come
    back (a second all-to-all) and are put in place and scaled by the gate.

    Returns (outputs per rank, each (N_r, C); send_counts (R, R): tokens rank r sends to s)."""
    R, E = len(x_shards), w_in.shape[0]
    send, counts = [], torch.zeros(R, R, dtype=torch.long)
    for r in range(R):
        owner = expert_owner(expert_shards[r], E, R)
        send.append([torch.where(owner == s)[0] for s in range(R)])
        counts[r] = torch.bincount(owner, minlength=R)
    # all-to-all: rank s receives, from every r, the tokens (and their expert ids) for it
    recv = [[(x_shards[r][send[r][s]], expert_shards[r][send[r][s]]) for r in range(R)]
            for s in range(R)]
    results = [[torch.zeros_like(xs) for xs, _ in recv[s]] for s in range(R)]
    for s in range(R):
        for r, (xs, es) in enumerate(recv[s]):
            for e in es.unique().tolist():
                m = es == e
                results[s][r][m] = _relu_expert(xs[m], w_in[e], w_out[e])
    # all-to-all back: rank r receives its tokens' results from every s
    outputs = []
    for r in range(R):
        y = torch.zeros_like(x_shards[r])
        for s in range(R):
            y[send[r][s]] = results[s][r]
        outputs.append(y * gate_shards[r][:, None])
    return outputs, counts


def expert_parallel_rank(x, expert, gate, w_in_local, w_out_local, n_experts: int) -> torch.Tensor:
    """The same layer on one real rank of a ``torch.distributed`` group (gloo works): this rank
    holds tokens x (N, C) with experts (N,) and gates (N,), and its own experts' weights
    (E / R, H, C) and (E / R, C, H). Token counts are exchanged first; buffers are padded to
    the largest count so that ``all_to_all_single`` moves equal chunks (gloo needs that)."""
    R, rank = dist.get_world_size(), dist.get_rank()
    per = n_experts // R
    owner = expert_owner(expert, n_experts, R)
    order = torch.argsort(owner, stable=True)
    counts = torch.bincount(owner, minlength=R)
    recv_counts = torch.empty_like(counts)
    dist.all_to_all_single(recv_counts, counts)
    cap = int(torch.stack([counts.max(), recv_counts.max()]).max())
    cap_t = torch.tensor([cap])
    dist.all_reduce(cap_t, op=dist.ReduceOp.MAX)
    cap = int(cap_t)
    C = x.shape[-1]
    send = torch.zeros(R, cap, C + 1, dtype=x.dtype)
    start = 0
    for s in range(R):
        idx = order[start:start + counts[s]]
        send[s, :len(idx), :C] = x[idx]
        send[s, :len(idx), C] = expert[idx].to(x.dtype)
        start += int(counts[s])
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send)
    back = torch.zeros(R, cap, C, dtype=x.dtype)
    for r in range(R):
        n = int(recv_counts[r])
        xs, es = recv[r, :n, :C], recv[r, :n, C].long() - rank * per
        for e in es.unique().tolist():
            m = es == e
            back[r, :n][m] = _relu_expert(xs[m], w_in_local[e], w_out_local[e])
    home = torch.empty_like(back)
    dist.all_to_all_single(home, back)
    y = torch.zeros_like(x)
    start = 0
    for s in range(R):
        n = int(counts[s])
        y[order[start:start + n]] = home[s, :n]
        start += n
    return y * gate[:, None]


def _ep_worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world_size, timeout=datetime.timedelta(seconds=30))
    try:
        g = torch.Generator().manual_seed(0)
        E, C, H = 2 * world_size, 6, 10
        w_in = torch.randn(E, H, C, generator=g, dtype=torch.float64)
        w_out = torch.randn(E, C, H, generator=g, dtype=torch.float64)
        xs = [torch.randn(5 + 3 * r, C, generator=g, dtype=torch.float64) for r in range(world_size)]
        es = [torch.randint(0, E, (len(x),), generator=g) for x in xs]
        gs = [torch.rand(len(x), generator=g, dtype=torch.float64) for x in xs]
        per = E // world_size
        mine = expert_parallel_rank(xs[rank], es[rank], gs[rank], w_in[rank * per:(rank + 1) * per],
                                    w_out[rank * per:(rank + 1) * per], E)
        dense = torch.stack([_relu_expert(xs[rank][i:i + 1], w_in[e], w_out[e])[0]
                             for i, e in enumerate(es[rank].tolist())]) * gs[rank][:, None]
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(
            {"rank": rank, "max_err": (mine - dense).abs().max().item()}))
    finally:
        dist.destroy_process_group()


def run_expert_parallel_local(world_size: int = 2) -> list[dict]:
    """Run the expert-parallel layer in ``world_size`` real processes (gloo, a file store) and
    compare each rank's result with the dense per-token computation."""
    import torch.multiprocessing as mp

    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(_ep_worker, args=(world_size, f"{tmp}/store", tmp),
                           nprocs=world_size, start_method="spawn")
        return [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(world_size)]


def moe_layer_counts(d_model: int, d_ff: int, n_experts: int, top_k: int, n_ranks: int = 1
                     ) -> tuple[int, int, int, int]:
    """A sparse FFN layer of GELU experts with biases (C -> H -> C) and a bias-free router:
    (total parameters, active parameters per token, forward matmul FLOPs per token,
    parameters stored per rank when the experts are split evenly over ``n_ranks`` and the
    router is replicated)."""
    expert = 2 * d_model * d_ff + d_ff + d_model
    router = d_model * n_experts
    flops = 2 * (top_k * 2 * d_model * d_ff + router)
    return (n_experts * expert + router, top_k * expert + router, flops,
            n_experts // n_ranks * expert + router)

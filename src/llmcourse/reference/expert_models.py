"""Chapter 08: GPTs with expert feed-forward layers, their training and their evaluation.

* :class:`DEMixGPT` -- chapter 02's GPT with every MLP replaced by one expert per domain
  (:class:`ExpertFFN`); ``model(idx, domains)`` runs sequence b through expert ``domains[b]``.
* :class:`MoEGPT` -- the same GPT with learned routing (:class:`SparseFFN`): top-k (Mixtral,
  renormalised) or Switch top-1 with an optional capacity factor; the router logits of the last
  forward pass are kept for the load-balancing and z-losses.
* :func:`train_demix` -- domain-routed batches (each step one domain, its expert only);
  :func:`moe_loss` -- LM loss + alpha * load balance + beta * z-loss for ``training.train_lm``.
* :func:`doc_batch` / :func:`demix_scores` / :func:`lm_scores` -- per-document scores at the
  character level, on the exact prefixes of :mod:`llmcourse.data.domains`.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from . import demix as DX
from . import moe as M
from .gpt import GPT, GPTConfig
from .training import TrainConfig, History, cosine_lr, encode, get_batch, lm_loss, make_optimizer


class ExpertFFN(nn.Module):
    """E GELU experts C -> H -> C, stacked (w_fc (E, H, C), b_fc (E, H), w_proj (E, C, H),
    b_proj (E, C)). As a DEMix layer, ``self.domains`` (set by the model) picks the expert."""

    def __init__(self, d_model: int, d_ff: int, n_experts: int):
        super().__init__()
        self.w_fc = nn.Parameter(torch.randn(n_experts, d_ff, d_model) * 0.02)
        self.b_fc = nn.Parameter(torch.zeros(n_experts, d_ff))
        self.w_proj = nn.Parameter(torch.randn(n_experts, d_model, d_ff) * 0.02)
        self.b_proj = nn.Parameter(torch.zeros(n_experts, d_model))
        self.domains: torch.Tensor | None = None

    def weights(self):
        return self.w_fc, self.b_fc, self.w_proj, self.b_proj

    def expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        return DX.gelu_mlp(x, self.w_fc[e], self.b_fc[e], self.w_proj[e], self.b_proj[e])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return DX.domain_routed_ffn(x, self.domains, *self.weights())


class DEMixGPT(nn.Module):
    def __init__(self, config: GPTConfig, n_domains: int):
        super().__init__()
        self.gpt, self.n_domains = GPT(config), n_domains
        for block in self.gpt.transformer.h:
            block.mlp = ExpertFFN(config.n_embd, 4 * config.n_embd, n_domains)

    def forward(self, idx: torch.Tensor, domains) -> torch.Tensor:
        if not torch.is_tensor(domains):
            domains = torch.full((idx.shape[0],), int(domains), dtype=torch.long)
        for block in self.gpt.transformer.h:
            block.mlp.domains = domains
        return self.gpt(idx)

    def all_paths(self, idx: torch.Tensor) -> torch.Tensor:
        """(D, B, T, V): the logits along every expert path."""
        return torch.stack([self(idx, d) for d in range(self.n_domains)])


class SparseFFN(nn.Module):
    """Learned routing over E GELU experts: top-k (renormalised when k > 1) or, with
    ``capacity_factor``, Switch top-1 with capacity (dropped tokens output 0: the residual
    carries them)."""

    def __init__(self, d_model, d_ff, n_experts, k=1, capacity_factor: float | None = None):
        super().__init__()
        self.router = nn.Linear(d_model, n_experts, bias=False)
        nn.init.normal_(self.router.weight, std=0.02)
        self.experts = ExpertFFN(d_model, d_ff, n_experts)
        self.k, self.capacity_factor = k, capacity_factor
        self.last_logits = self.last_indices = None
        self.last_dropped = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        logits = self.router(x)  # (B, T, E)
        E = logits.shape[-1]
        flat = x.reshape(-1, C)
        if self.capacity_factor is not None:
            mask, gate = M.switch_route(logits, self.capacity_factor)
            kept = mask.reshape(-1, E).sum(-1).bool()
            idx = logits.reshape(-1, E).argmax(-1, keepdim=True)
            w = (gate.reshape(-1) * kept)[:, None]
            self.last_dropped = 1.0 - kept.float().mean().item()
        else:
            w, idx = M.top_k_route(logits.reshape(-1, E), self.k, normalize=self.k > 1)
            kept = torch.ones(B * T, dtype=torch.bool)
            self.last_dropped = 0.0
        self.last_logits, self.last_indices = logits.reshape(-1, E), idx
        token, slot, counts = M.dispatch(idx, E)
        keep = kept[token]
        token, slot = token[keep], slot[keep]
        counts = torch.bincount(idx[token, slot], minlength=E)
        xs = flat[token]
        ys = torch.cat([self.experts.expert(e, chunk)
                        for e, chunk in enumerate(xs.split(counts.tolist()))])
        out = torch.zeros_like(flat).index_add(0, token, ys * w[token, slot, None])
        return out.reshape(B, T, C)


class MoEGPT(nn.Module):
    def __init__(self, config: GPTConfig, n_experts: int, k: int = 1, d_ff: int | None = None,
                 capacity_factor: float | None = None):
        super().__init__()
        self.gpt = GPT(config)
        for block in self.gpt.transformer.h:
            block.mlp = SparseFFN(config.n_embd, d_ff or 4 * config.n_embd, n_experts, k,
                                  capacity_factor)

    def forward(self, idx):
        return self.gpt(idx)

    def moe_layers(self) -> list[SparseFFN]:
        return [b.mlp for b in self.gpt.transformer.h]


def moe_loss(alpha: float = 0.01, beta: float = 1e-3):
    """A ``loss_fn`` for ``training.train_lm``: LM loss + alpha * LB loss + beta * z-loss,
    summed over the MoE layers."""
    def fn(model, x, y):
        loss = lm_loss(model(x), y)
        for layer in model.moe_layers():
            if alpha:
                loss = loss + alpha * M.load_balancing_loss(layer.last_logits, layer.last_indices.shape[-1])
            if beta:
                loss = loss + beta * M.router_z_loss(layer.last_logits)
        return loss
    return fn


def train_demix(model: DEMixGPT, streams: list[torch.Tensor], cfg: TrainConfig) -> History:
    """Domain-routed training: step s draws its whole batch from domain s mod D and runs it
    through that domain's experts only (the others get no gradient at that step)."""
    opt, hist, gen = make_optimizer(model, cfg), History(), torch.Generator()
    model.train()
    t0 = time.perf_counter()
    for step in range(cfg.steps):
        lr = cosine_lr(step, cfg.max_lr, cfg.warmup_steps, cfg.steps, cfg.min_lr)
        for group in opt.param_groups:
            group["lr"] = lr
        d = step % len(streams)
        gen.manual_seed(cfg.seed * 1_000_003 + step)
        x, y = get_batch(streams[d], cfg.batch_size, cfg.block_size, gen)
        loss = lm_loss(model(x, d), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        hist.step.append(step)
        hist.loss.append(loss.item())
        hist.lr.append(lr)
    hist.seconds = time.perf_counter() - t0
    return hist


# ---------------------------------------------------------------------------------------
# Per-document evaluation

def doc_batch(docs: list[str], max_len: int):
    """Documents as a right-padded batch: x = "\\n" + doc[:-1], y = doc (both cut at
    ``max_len``), mask (B, T) True on real characters."""
    ids = [encode(d[:max_len]) for d in docs]
    T = max(len(i) for i in ids)
    x = torch.full((len(docs), T), 10, dtype=torch.long)
    y = torch.zeros((len(docs), T), dtype=torch.long)
    mask = torch.zeros((len(docs), T), dtype=torch.bool)
    for b, i in enumerate(ids):
        x[b, 1:len(i)] = i[:-1]
        y[b, :len(i)] = i
        mask[b, :len(i)] = True
    return x, y, mask


def target_log_probs(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.log_softmax(logits, dim=-1).gather(-1, y[..., None])[..., 0]


@torch.no_grad()
def lm_scores(model, docs, max_len) -> torch.Tensor:
    """log p(doc[t] | doc[:t]) (B, T), 0 on padding."""
    model.eval()
    x, y, mask = doc_batch(docs, max_len)
    return target_log_probs(model(x), y) * mask


@torch.no_grad()
def demix_scores(model: DEMixGPT, docs, max_len, prior: torch.Tensor):
    """The DEMix mixture on documents: (mixture log-probs (B, T), per-path log-probs
    (D, B, T), posterior (B, T, D)), 0 on padding."""
    model.eval()
    x, y, mask = doc_batch(docs, max_len)
    logits = model.all_paths(x)  # (D, B, T, V)
    paths = target_log_probs(logits, y.expand(logits.shape[0], -1, -1)) * mask
    post = DX.domain_posterior(paths, prior.log())
    mix = DX.mixture_log_probs(logits, post).gather(-1, y[..., None])[..., 0] * mask
    return mix, paths, post


@torch.no_grad()
def route_shares(model: MoEGPT, docs, max_len) -> torch.Tensor:
    """(n_layers, E): the fraction of (real) characters of ``docs`` each layer sends to each
    expert (its first choice), and sets ``last_dropped`` on every layer."""
    model.eval()
    x, _, mask = doc_batch(docs, max_len)
    model(x)
    rows = []
    for layer in model.moe_layers():
        first = layer.last_indices[:, 0][mask.reshape(-1)]
        E = layer.last_logits.shape[-1]
        rows.append(torch.bincount(first, minlength=E).double() / len(first))
    return torch.stack(rows)

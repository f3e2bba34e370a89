"""Chapter 06: knowledge distillation (知识蒸馏) of a language model.

Conventions (the book states them the same way):

* Logits have shape ``(..., V)``: every leading position (batch, sequence) is one prediction.
* Soft targets at temperature ``T``: ``p_T = softmax(z / T)``.
* The soft loss is ``T**2 * KL(p_T^teacher || p_T^student)``: the teacher's distribution comes
  first (it is the target), KL summed over the vocabulary and averaged over positions
  ("batchmean over positions": divide by the number of positions, not by positions * V).
* The combined loss is ``alpha * T**2 * KL(p_T^t || p_T^s) + (1 - alpha) * CE(z_s, y)`` with
  the hard-label cross-entropy at temperature 1 (Hinton, Vinyals & Dean 2015).
* The hidden-state loss is DistilBERT's cosine loss ``mean(1 - cos(h_s W, h_t))``. When the
  student's width differs from the teacher's, a projection ``W`` of shape ``(d_s, d_t)`` must
  be given (learned during training, as TinyBERT's ``W_h``); with equal widths it may be omitted.

Everything here is verified in ``tests/test_reference_ch06.py`` against ``F.kl_div``,
``F.cross_entropy``, ``F.cosine_embedding_loss``, autograd and closed forms.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from .gpt import GPT, hidden_states
from .scaling import count_parameters as count_params  # noqa: F401  (a tied weight counts once)


def softmax_with_temperature(logits: torch.Tensor, T: float = 1.0, dim: int = -1) -> torch.Tensor:
    """``softmax(logits / T)`` along ``dim``, numerically stable for any ``T > 0``."""
    z = logits / T
    z = z - z.amax(dim=dim, keepdim=True)
    e = torch.exp(z)
    return e / e.sum(dim=dim, keepdim=True)


def distillation_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                    T: float = 1.0) -> torch.Tensor:
    """``T**2 * KL(p_T^teacher || p_T^student)``, summed over the last axis (vocabulary) and
    averaged over every leading position. Inputs ``(..., V)``; returns a 0-dim tensor.

    Teacher probabilities that underflow to 0 contribute 0 (the limit of p log p)."""
    log_q = torch.log_softmax(student_logits / T, dim=-1)
    log_p = torch.log_softmax(teacher_logits / T, dim=-1)
    p = log_p.exp()
    per_position = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p)).sum(dim=-1)
    return T ** 2 * per_position.mean()


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      targets: torch.Tensor, T: float = 2.0, alpha: float = 0.5) -> torch.Tensor:
    """``alpha * T**2 * KL(p_T^t || p_T^s) + (1 - alpha) * CE(student_logits, targets)``.

    logits ``(..., V)``, targets int64 ``(...)``; the cross-entropy is at temperature 1 and
    averaged over positions. Returns a 0-dim tensor."""
    ce = F.cross_entropy(student_logits.reshape(-1, student_logits.shape[-1]), targets.reshape(-1))
    return alpha * distillation_kl(student_logits, teacher_logits, T) + (1 - alpha) * ce


def hidden_cosine_loss(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor,
                       proj: torch.Tensor | None = None, eps: float = 1e-8) -> torch.Tensor:
    """DistilBERT's hidden-state loss: mean over positions of ``1 - cos(h_s @ proj, h_t)``.

    student_hidden ``(..., d_s)``, teacher_hidden ``(..., d_t)``, proj ``(d_s, d_t)`` or None
    (then ``d_s`` must equal ``d_t``). Norms are clamped at ``eps`` as in F.cosine_similarity,
    so a zero vector has cosine 0 (loss 1)."""
    h = student_hidden if proj is None else student_hidden @ proj
    if h.shape[-1] != teacher_hidden.shape[-1]:
        raise ValueError(f"student width {h.shape[-1]} != teacher width "
                         f"{teacher_hidden.shape[-1]}: pass a projection of shape "
                         f"({student_hidden.shape[-1]}, {teacher_hidden.shape[-1]})")
    dot = (h * teacher_hidden).sum(dim=-1)
    norms = h.norm(dim=-1).clamp_min(eps) * teacher_hidden.norm(dim=-1).clamp_min(eps)
    return (1 - dot / norms).mean()


def soft_target_grad(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float,
                     scaled: bool = True) -> torch.Tensor:
    """Closed-form gradient of the soft loss w.r.t. the student's logits ``(N, V)``:
    ``d KL / d z_s = (q_T - p_T) / (T N)``, times ``T**2`` when ``scaled``."""
    q = softmax_with_temperature(student_logits, T)
    p = softmax_with_temperature(teacher_logits, T)
    n = student_logits.numel() // student_logits.shape[-1]
    grad = (q - p) / (T * n)
    return grad * T ** 2 if scaled else grad


def high_temperature_grad(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """The limit of the T**2-scaled gradient as T -> infinity (Hinton et al. 2015, sec. 2.1):
    ``(d - mean(d)) / (V N)`` with ``d = z_s - z_t``: matching logits, independent of T."""
    d = student_logits - teacher_logits
    n = student_logits.numel() // student_logits.shape[-1]
    return (d - d.mean(dim=-1, keepdim=True)) / (student_logits.shape[-1] * n)


# ---------------------------------------------------------------------------------------
# Distilling a GPT into a smaller GPT

def gpt_hidden(model: GPT, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``(B, T, V)`` and the last hidden state ``(B, T, C)`` (after ``ln_f``, what the
    tied output layer reads; Hugging Face's ``hidden_states[-1]`` for GPT-2)."""
    h = hidden_states(model, idx)
    return model.lm_head(h), h


class StudentWithProjection(nn.Module):
    """A student GPT plus the learned projection ``proj`` (d_s -> d_t) its hidden-state loss
    needs; ``forward`` is the GPT's, so ``train_lm``/``evaluate_lm`` use it unchanged."""

    def __init__(self, gpt: GPT, d_teacher: int):
        super().__init__()
        self.gpt = gpt
        self.proj = nn.Linear(gpt.config.n_embd, d_teacher, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.gpt(idx)


def distill_loss_fn(teacher: GPT, T: float = 2.0, alpha: float = 0.5, beta: float = 0.0):
    """``loss_fn(model, x, y)`` for ``train_lm``: the combined loss against a frozen teacher,
    plus ``beta * hidden_cosine_loss`` when ``beta > 0`` (then ``model`` must be a
    :class:`StudentWithProjection`)."""
    teacher.eval()

    def loss_fn(model, x, y):
        with torch.no_grad():
            t_logits, t_hidden = gpt_hidden(teacher, x)
        if beta > 0:
            s_logits, s_hidden = gpt_hidden(model.gpt, x)
            loss = distillation_loss(s_logits, t_logits, y, T, alpha)
            return loss + beta * hidden_cosine_loss(s_hidden, t_hidden, model.proj.weight.t())
        return distillation_loss(model(x), t_logits, y, T, alpha)

    return loss_fn


@torch.no_grad()
def tokens_per_second(model: nn.Module, batch_size: int = 16, block_size: int = 128,
                      repeats: int = 3) -> float:
    """Inference throughput: tokens through a forward pass per second (best of ``repeats``)."""
    model.eval()
    idx = torch.randint(0, 256, (batch_size, block_size), generator=torch.Generator().manual_seed(0))
    model(idx)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        model(idx)
        best = min(best, time.perf_counter() - t0)
    return batch_size * block_size / best

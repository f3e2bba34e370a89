"""losses.ipynb: knowledge distillation built from tensor operations: the softmax at
temperature T, the T^2-scaled KL divergence teacher || student, the combined soft + hard loss,
and DistilBERT's cosine hidden-state loss.

Tolerances: the soft loss is T^2 times a KL that shrinks like 1/T^2, so float32 rounding in the
log-probabilities (about 1e-7 * log V per term) is multiplied by T^2. Float32 cases therefore
allow rtol = 1e-4 and atol = 1e-6 * max(1, T^2); float64 cases keep the defaults.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...reference import distillation as distillation_ref
from .. import register
from ..core import Case, Exercise, Mistake, Rule
from ..kit import F32, F64, generator, randn


NO_BUILTIN_SOFTMAX = (
    Rule(".softmax", "build it from exp and sum; PyTorch's softmax is what you are re-implementing"),
    Rule("torch.nn.Softmax", "build it from exp and sum instead of torch.nn.Softmax"),
    Rule(".log_softmax", "build it from exp and sum; that is the exercise"),
    Rule(".logsumexp", "do the max trick yourself instead of calling logsumexp"),
)
NO_BUILTIN_KL = (
    Rule(".kl_div", "write the KL divergence yourself; F.kl_div comes in distill_gpt.ipynb"),
    Rule("torch.nn.KLDivLoss", "write the KL divergence yourself instead of nn.KLDivLoss"),
)
NO_BUILTIN_COSINE = (
    Rule(".cosine_similarity", "compute the cosine from dot products and norms yourself"),
    Rule(".cosine_embedding_loss", "compute the loss yourself instead of F.cosine_embedding_loss"),
    Rule("torch.nn.CosineSimilarity", "compute the cosine yourself instead of nn.CosineSimilarity"),
    Rule("torch.nn.CosineEmbeddingLoss", "compute the loss yourself instead of nn.CosineEmbeddingLoss"),
)


def _tol(T: float, dtype=F32) -> dict:
    """Per-case tolerance (see the module docstring): float32 errors grow with T^2."""
    if dtype == F64:
        return {}
    return {"rtol": 1e-4, "atol": 1e-6 * max(1.0, float(T) ** 2)}


def _pair(g, *shape, dtype=F32, scale=2.0):
    """(student_logits, teacher_logits) of the same shape; the teacher is sharper."""
    return randn(g, *shape, dtype=dtype, scale=scale), randn(g, *shape, dtype=dtype, scale=2 * scale)


# ---------------------------------------------------------------------------------------
# 06.softmax_t

def _smax(z, dim=-1):
    z = z - z.amax(dim=dim, keepdim=True)
    e = torch.exp(z)
    return e / e.sum(dim=dim, keepdim=True)


def _softmax_t_times(logits, T=1.0, dim=-1):
    return _smax(logits * T, dim)


def _softmax_t_ignored(logits, T=1.0, dim=-1):
    return _smax(logits, dim)


def _softmax_t_no_shift(logits, T=1.0, dim=-1):
    e = torch.exp(logits / T)
    return e / e.sum(dim=dim, keepdim=True)


def _softmax_t_probs_over_T(logits, T=1.0, dim=-1):
    return _smax(logits, dim) / T


def _softmax_t_power(logits, T=1.0, dim=-1):
    return _smax(logits, dim) ** (1.0 / T)


def _softmax_t_last_axis(logits, T=1.0, dim=-1):
    return _smax(logits / T, -1)


@register
class SoftmaxWithTemperature(Exercise):
    """Softmax at temperature T."""
    id = "06.softmax_t"
    entry = "softmax_with_temperature"
    forbid = NO_BUILTIN_SOFTMAX
    mistakes = (
        Mistake("multiplied by T instead of dividing", "soft targets are softmax(z / T): a larger "
                "T must make the distribution FLATTER.", _softmax_t_times),
        Mistake("temperature ignored", "divide the logits by T before the softmax.",
                _softmax_t_ignored),
        Mistake("no max subtraction", "a small T multiplies the logits (z / 0.1 = 10 z) and exp "
                "overflows to inf; subtract the max of z / T along `dim` first.", _softmax_t_no_shift),
        Mistake("probabilities divided by T", "T divides the LOGITS inside the softmax; dividing "
                "the probabilities leaves rows that do not sum to 1.", _softmax_t_probs_over_T),
        Mistake("softmax raised to 1/T without renormalising", "softmax(z)^(1/T) is proportional "
                "to softmax(z / T) but must be renormalised; simpler: softmax(z / T).",
                _softmax_t_power),
        Mistake("ignores `dim`", "normalise along the `dim` argument, not always the last axis.",
                _softmax_t_last_axis),
    )

    def reference(self, logits, T=1.0, dim=-1):
        return distillation_ref.softmax_with_temperature(logits, T, dim)

    def cases(self, seed, hidden):
        g = generator(seed)
        cases = [
            Case("1-D logits, T = 2", (randn(g, 6, scale=2.0),), {"T": 2.0}),
            Case("(batch, vocab), T = 1", (randn(g, 3, 8),), {"T": 1.0}),
            Case("(batch, seq, vocab), T = 4", (randn(g, 2, 3, 10, scale=3.0),), {"T": 4.0}),
            Case("large logits at T = 0.1 (z / T overflows exp)",
                 (torch.tensor([[20.0, 10.0, 0.0], [-5.0, 15.0, 14.0]]),), {"T": 0.1}),
            Case("dim = 0, T = 3", (randn(g, 5, 3),), {"T": 3.0, "dim": 0}),
        ]
        if hidden:
            cases += [
                Case("float64, T = 10", (randn(g, 4, 50, dtype=F64, scale=5.0),), {"T": 10.0}),
                Case("integer temperature T = 3", (randn(g, 2, 7),), {"T": 3}),
                Case("tiny T = 0.01 on float64", (randn(g, 3, 6, dtype=F64, scale=10.0),), {"T": 0.01}),
                Case("3-D, dim = 1, T = 0.5", (randn(g, 2, 4, 3),), {"T": 0.5, "dim": 1}),
                Case("all logits equal: uniform for any T", (torch.full((2, 5), 7.0),), {"T": 0.3}),
            ]
        return cases


# ---------------------------------------------------------------------------------------
# 06.kd_kl (and the pieces the later mistakes reuse)

def _logp(z, T):
    return torch.log_softmax(z / T, dim=-1)


def _kl_rows(log_p, log_q):
    """Per-position KL(p || q) from log-probabilities, p = 0 terms counting 0."""
    p = log_p.exp()
    return torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p)).sum(-1)


def _kl_reversed(s, t, T=1.0):
    return T ** 2 * _kl_rows(_logp(s, T), _logp(t, T)).mean()


def _kl_no_T2(s, t, T=1.0):
    return _kl_rows(_logp(t, T), _logp(s, T)).mean()


def _kl_times_T(s, t, T=1.0):
    return T * _kl_rows(_logp(t, T), _logp(s, T)).mean()


def _kl_over_T2(s, t, T=1.0):
    return _kl_rows(_logp(t, T), _logp(s, T)).mean() / T ** 2


def _kl_student_hard(s, t, T=1.0):
    return T ** 2 * _kl_rows(_logp(t, T), _logp(s, 1.0)).mean()


def _kl_teacher_hard(s, t, T=1.0):
    return T ** 2 * _kl_rows(_logp(t, 1.0), _logp(s, T)).mean()


def _kl_cross_entropy(s, t, T=1.0):
    return T ** 2 * -(_logp(t, T).exp() * _logp(s, T)).sum(-1).mean()


def _kl_sum_positions(s, t, T=1.0):
    return T ** 2 * _kl_rows(_logp(t, T), _logp(s, T)).sum()


def _kl_mean_all(s, t, T=1.0):
    return T ** 2 * _kl_rows(_logp(t, T), _logp(s, T)).sum() / s.numel()


def _kl_first_axis(s, t, T=1.0):
    return T ** 2 * _kl_rows(_logp(t, T), _logp(s, T)).sum() / s.shape[0]


def _kl_log_of_softmax(s, t, T=1.0):
    p, q = _smax(t / T), _smax(s / T)
    return T ** 2 * (p * (torch.log(p) - torch.log(q))).sum(-1).mean()


KL_DIRECTION = Mistake(
    "KL direction reversed (student || teacher)", "the soft loss is KL(p_teacher || p_student) = "
    "sum p_t (log p_t - log p_s): the teacher's distribution is the target and weights the sum. "
    "KL(student || teacher) is another (mode-seeking) objective.", _kl_reversed)
MISSING_T2 = Mistake(
    "missing T^2", "multiply the KL by T**2: the soft-target gradient shrinks like 1/T^2, and "
    "T^2 keeps its size comparable to the hard-label loss's as T changes.", _kl_no_T2)

KL_MISTAKES = (
    KL_DIRECTION,
    MISSING_T2,
    Mistake("scaled by T instead of T^2", "the gradient of KL at temperature T shrinks like 1/T^2, "
            "so the factor is T**2, not T.", _kl_times_T),
    Mistake("divided by T^2 instead of multiplying", "the loss is T**2 * KL: multiply.", _kl_over_T2),
    Mistake("student not softened", "divide the STUDENT's logits by T as well: both "
            "distributions are taken at the same temperature.", _kl_student_hard),
    Mistake("teacher not softened", "divide the TEACHER's logits by T too: the soft targets are "
            "softmax(z_teacher / T).", _kl_teacher_hard),
    Mistake("cross-entropy instead of KL", "KL(p || q) = sum p log p - sum p log q: you returned "
            "only -sum p log q (same gradient, but the value is off by the teacher's entropy, "
            "so a perfect student does not score 0).", _kl_cross_entropy),
    Mistake("summed over positions", "average the per-position KL over all leading positions "
            "(batchmean), do not sum it.", _kl_sum_positions),
    Mistake("averaged over the vocabulary too", "sum over the vocabulary, then average over "
            "positions only (F.kl_div's reduction='mean' makes this mistake).", _kl_mean_all),
    Mistake("divided by the first axis only", "with (batch, seq, vocab) logits every (b, t) is a "
            "position: divide by batch * seq (F.kl_div's 'batchmean' on a 3-D tensor divides "
            "by batch only).", _kl_first_axis),
    Mistake("log of softmax (0 * log 0 = nan)", "when a teacher probability underflows to 0, "
            "log(0) = -inf and 0 * -inf = nan; use log_softmax for both log-probabilities.",
            _kl_log_of_softmax),
)


@register
class DistillationKL(Exercise):
    """T^2-scaled KL(teacher || student)."""
    id = "06.kd_kl"
    entry = "distillation_kl"
    forbid = NO_BUILTIN_KL + (
        Rule(".cross_entropy", "compute the sum over the vocabulary yourself"),
    )
    mistakes = KL_MISTAKES

    def reference(self, student_logits, teacher_logits, T=1.0):
        return distillation_ref.distillation_kl(student_logits, teacher_logits, T)

    def cases(self, seed, hidden):
        g = generator(seed)
        same = randn(g, 3, 6)
        confident = torch.tensor([[100.0, 0.0, -100.0, 0.0], [0.0, 0.0, 0.0, 90.0]])
        cases = [
            Case("(batch, vocab) = (4, 10), T = 1", _pair(g, 4, 10), {"T": 1.0}, **_tol(1)),
            Case("(batch, seq, vocab) = (2, 5, 16), T = 2", _pair(g, 2, 5, 16), {"T": 2.0}, **_tol(2)),
            Case("(3, 8), T = 4", _pair(g, 3, 8), {"T": 4.0}, **_tol(4)),
            Case("student = teacher: KL = 0", (same, same.clone()), {"T": 3.0}, **_tol(3)),
            Case("confident teacher, probabilities underflow to 0, T = 1",
                 (randn(g, 2, 4), confident), {"T": 1.0}, **_tol(1)),
            Case("(2, 3, 7), T = 0.5", _pair(g, 2, 3, 7), {"T": 0.5}, **_tol(0.5)),
        ]
        if hidden:
            cases += [
                Case("float64 (2, 4, 50), T = 3", _pair(g, 2, 4, 50, dtype=F64), {"T": 3.0}),
                Case("one position (1, 1, 12), T = 2", _pair(g, 1, 1, 12), {"T": 2.0}, **_tol(2)),
                Case("float64, T = 10", _pair(g, 6, 30, dtype=F64), {"T": 10.0}),
                Case("4-D (2, 2, 3, 9), T = 5", _pair(g, 2, 2, 3, 9), {"T": 5.0}, **_tol(5)),
                Case("integer T = 2, (3, 4, 5)", _pair(g, 3, 4, 5), {"T": 2}, **_tol(2)),
            ]
        return cases


# ---------------------------------------------------------------------------------------
# 06.kd_loss

def _ce(z, y, T=1.0):
    return F.cross_entropy((z / T).reshape(-1, z.shape[-1]), y.reshape(-1))


def _kd(s, t, T):
    return distillation_ref.distillation_kl(s, t, T)


def _loss_alpha_swapped(s, t, y, T=2.0, alpha=0.5):
    return (1 - alpha) * _kd(s, t, T) + alpha * _ce(s, y)


def _loss_no_T2(s, t, y, T=2.0, alpha=0.5):
    return alpha * _kd(s, t, T) / T ** 2 + (1 - alpha) * _ce(s, y)


def _loss_reversed(s, t, y, T=2.0, alpha=0.5):
    return alpha * _kl_reversed(s, t, T) + (1 - alpha) * _ce(s, y)


def _loss_hard_at_T(s, t, y, T=2.0, alpha=0.5):
    return alpha * _kd(s, t, T) + (1 - alpha) * _ce(s, y, T)


def _loss_T2_both(s, t, y, T=2.0, alpha=0.5):
    return alpha * _kd(s, t, T) + (1 - alpha) * T ** 2 * _ce(s, y)


def _loss_no_one_minus_alpha(s, t, y, T=2.0, alpha=0.5):
    return alpha * _kd(s, t, T) + _ce(s, y)


def _loss_hard_on_teacher(s, t, y, T=2.0, alpha=0.5):
    return alpha * _kd(s, t, T) + (1 - alpha) * _ce(s, t.argmax(-1))


@register
class DistillationLoss(Exercise):
    """Soft + hard distillation loss."""
    id = "06.kd_loss"
    entry = "distillation_loss"
    uses = ("06.kd_kl",)
    forbid = NO_BUILTIN_KL
    mistakes = (
        Mistake("alpha on the wrong term", "alpha weights the SOFT (teacher) term: "
                "alpha * T^2 * KL + (1 - alpha) * CE.", _loss_alpha_swapped),
        Mistake("missing T^2", MISSING_T2.explain, _loss_no_T2),
        Mistake(KL_DIRECTION.name, KL_DIRECTION.explain, _loss_reversed),
        Mistake("hard loss at temperature T", "the hard-label cross-entropy uses the student's "
                "ordinary logits (T = 1); only the soft term is softened.", _loss_hard_at_T),
        Mistake("T^2 on both terms", "only the soft term is multiplied by T^2 (it compensates the "
                "1/T^2 of its gradient); the hard term is not softened, so it needs no factor.",
                _loss_T2_both),
        Mistake("hard term not weighted by (1 - alpha)", "the two terms are a convex combination: "
                "(1 - alpha) * CE.", _loss_no_one_minus_alpha),
        Mistake("hard labels taken from the teacher", "the hard term uses the TRUE labels "
                "`targets`, not the teacher's argmax.", _loss_hard_on_teacher),
    )

    def reference(self, student_logits, teacher_logits, targets, T=2.0, alpha=0.5):
        return distillation_ref.distillation_loss(student_logits, teacher_logits, targets, T, alpha)

    def cases(self, seed, hidden):
        g = generator(seed)

        def case(label, *shape, T, alpha, dtype=F32):
            s, t = _pair(g, *shape, dtype=dtype)
            y = torch.randint(0, shape[-1], shape[:-1], generator=g)
            return Case(label, (s, t, y), {"T": T, "alpha": alpha}, **_tol(T, dtype))

        cases = [
            case("(4, 10), T = 2, alpha = 0.5", 4, 10, T=2.0, alpha=0.5),
            case("(2, 6, 12), T = 4, alpha = 0.9", 2, 6, 12, T=4.0, alpha=0.9),
            case("alpha = 0: hard labels only", 3, 8, T=3.0, alpha=0.0),
            case("alpha = 1: soft targets only, T = 3", 2, 4, 8, T=3.0, alpha=1.0),
            case("(5, 7), T = 1, alpha = 0.3", 5, 7, T=1.0, alpha=0.3),
        ]
        if hidden:
            cases += [
                case("float64 (2, 5, 40), T = 2, alpha = 0.7", 2, 5, 40, T=2.0, alpha=0.7, dtype=F64),
                case("one position, T = 8, alpha = 0.2", 1, 1, 16, T=8.0, alpha=0.2),
                case("4-D (2, 2, 3, 6), T = 1.5, alpha = 0.6", 2, 2, 3, 6, T=1.5, alpha=0.6),
                case("float64, T = 10, alpha = 0.95", 8, 20, T=10.0, alpha=0.95, dtype=F64),
            ]
        return cases


# ---------------------------------------------------------------------------------------
# 06.cosine

def _project(h, proj):
    return h if proj is None else h @ proj


def _cos(a, b, dim=-1, eps=1e-8):
    return (a * b).sum(dim) / (a.norm(dim=dim).clamp_min(eps) * b.norm(dim=dim).clamp_min(eps))


def _cos_similarity(hs, ht, proj=None):
    return _cos(_project(hs, proj), ht).mean()


def _cos_unnormalised(hs, ht, proj=None):
    return (1 - (_project(hs, proj) * ht).sum(-1)).mean()


def _cos_wrong_axis(hs, ht, proj=None):
    a, b = _project(hs, proj), ht
    a = a / a.norm(dim=-2, keepdim=True).clamp_min(1e-8)
    b = b / b.norm(dim=-2, keepdim=True).clamp_min(1e-8)
    return (1 - (a * b).sum(-1)).mean()


def _cos_teacher_projected(hs, ht, proj=None):
    return (1 - _cos(hs, ht if proj is None else ht @ proj.T)).mean()


def _cos_mse(hs, ht, proj=None):
    return ((_project(hs, proj) - ht) ** 2).mean()


def _cos_sum(hs, ht, proj=None):
    return (1 - _cos(_project(hs, proj), ht)).sum()


@register
class HiddenCosineLoss(Exercise):
    """DistilBERT's cosine hidden-state loss."""
    id = "06.cosine"
    entry = "hidden_cosine_loss"
    forbid = NO_BUILTIN_COSINE
    mistakes = (
        Mistake("returned the cosine similarity, not 1 - cos", "a LOSS must be 0 when the "
                "directions agree: mean(1 - cos).", _cos_similarity),
        Mistake("dot product without normalising", "divide the dot product by both norms; the "
                "cosine loss ignores the vectors' lengths.", _cos_unnormalised),
        Mistake("normalised along the wrong axis", "each position's hidden vector is normalised "
                "over its FEATURES (last axis), not over positions.", _cos_wrong_axis),
        Mistake("projected the teacher instead of the student", "map the student into the "
                "teacher's space: h_s @ proj, shape (..., d_t); the teacher's states stay fixed.",
                _cos_teacher_projected),
        Mistake("mean squared error instead of cosine", "DistilBERT's hidden loss is 1 - cos "
                "(direction only); MSE (TinyBERT's choice) also matches lengths.", _cos_mse),
        Mistake("summed over positions", "average 1 - cos over the positions.", _cos_sum),
    )

    def reference(self, student_hidden, teacher_hidden, proj=None):
        return distillation_ref.hidden_cosine_loss(student_hidden, teacher_hidden, proj)

    def cases(self, seed, hidden):
        g = generator(seed)
        h = randn(g, 3, 6)
        cases = [
            Case("equal widths (4, 8), no projection", (randn(g, 4, 8), randn(g, 4, 8))),
            Case("(2, 5, 16) -> (2, 5, 32) through proj (16, 32)",
                 (randn(g, 2, 5, 16), randn(g, 2, 5, 32), randn(g, 16, 32, scale=0.25))),
            Case("same directions, other lengths: loss 0", (h, 3.0 * h), {}, None, 1e-6),
            Case("opposite directions: loss 2", (h, -0.5 * h)),
            Case("(3, 4, 6) -> (3, 4, 10) with proj", (randn(g, 3, 4, 6), randn(g, 3, 4, 10),
                                                       randn(g, 6, 10, scale=0.4))),
        ]
        if hidden:
            z = randn(g, 4, 5)
            z[1] = 0.0
            cases += [
                Case("float64 (2, 7, 12) -> 24", (randn(g, 2, 7, 12, dtype=F64),
                                                  randn(g, 2, 7, 24, dtype=F64),
                                                  randn(g, 12, 24, dtype=F64, scale=0.3))),
                Case("4-D equal widths", (randn(g, 2, 2, 3, 8), randn(g, 2, 2, 3, 8))),
                Case("a zero student vector: its cosine is 0", (z, randn(g, 4, 5))),
                Case("one position, proj (3, 5)", (randn(g, 1, 3), randn(g, 1, 5), randn(g, 3, 5))),
            ]
        return cases

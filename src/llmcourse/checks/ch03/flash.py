"""flash.ipynb: FlashAttention in PyTorch: the tiled forward with the online softmax (output
and log-sum-exp), the backward that recomputes each probability tile from the log-sum-exp,
and the two joined in a ``torch.autograd.Function``.

Tolerances: float64 cases keep the defaults (rtol 1e-7, atol 1e-10: the tiled and the direct
computation agree to ~1e-15). Float32 outputs are O(1) sums of at most ~40 terms: rtol 1e-5,
atol 1e-5; float32 gradients add one more such sum: rtol 1e-4, atol 1e-5.
"""

from __future__ import annotations

import math

import torch

from ...reference import flash as ref
from .. import calls, register
from ..core import Case, Exercise, Mistake, Rule
from ..kit import F32, F64, generator, knob, randn

NO_SHORTCUTS = (
    Rule(".scaled_dot_product_attention", "tile the computation yourself; SDPA is what this is "
         "checked against"),
    Rule(".softmax", "the point is the ONLINE softmax: keep the running max and sum yourself"),
    Rule(".logsumexp", "build the log-sum-exp from the running max and sum (m + log l)"),
    Rule("torch.nn.MultiheadAttention", "tile the computation yourself"),
)
F32_OUT = dict(rtol=1e-5, atol=1e-5)
# The notebook's optional GPU cell times the Triton forward with chapter 09's timer.
GPU_LAB = ("flash_triton", "timing")
F32_GRAD = dict(rtol=1e-4, atol=1e-5)


def _mask(r0, r1, c0, c1, strict=False):
    rows = torch.arange(r0, r1)[:, None]
    cols = torch.arange(c0, c1)[None, :]
    return cols < rows if strict else cols <= rows


# ---------------------------------------------------------------------------------------
# 03.flash_forward

def _fwd(q, k, v, causal=False, block_q=16, block_k=16, *, rescale_l=True, rescale_acc=True,
         lse="m+log l", strict=False, scale=True, skip_diagonal=False):
    T_q, T_k = q.shape[-2], k.shape[-2]
    sc = 1 / math.sqrt(q.shape[-1]) if scale else 1.0
    outs, lses = [], []
    for r0 in range(0, T_q, block_q):
        r1 = min(r0 + block_q, T_q)
        qi = q[..., r0:r1, :]
        m = torch.full(qi.shape[:-1], float("-inf"), dtype=q.dtype)
        l = torch.zeros_like(m)
        acc = torch.zeros(*qi.shape[:-1], v.shape[-1], dtype=q.dtype)
        for c0 in range(0, T_k, block_k):
            if causal and (c0 > r1 - 1 or (skip_diagonal and c0 + block_k > r0 and c0 > 0)):
                break
            c1 = min(c0 + block_k, T_k)
            s = qi @ k[..., c0:c1, :].transpose(-2, -1) * sc
            if causal:
                s = s.masked_fill(~_mask(r0, r1, c0, c1, strict), float("-inf"))
            m_new = torch.maximum(m, s.amax(-1))
            p = torch.exp(s - m_new[..., None])
            alpha = torch.exp(m - m_new)
            # a strict mask leaves row 0 with no key at all: nan, as that code would give
            l = (alpha * l if rescale_l else l) + p.sum(-1)
            acc = (alpha[..., None] * acc if rescale_acc else acc) + p @ v[..., c0:c1, :]
            m = m_new
        outs.append(acc / l[..., None])
        lses.append({"m+log l": m + torch.log(l), "m": m, "log l": torch.log(l)}[lse])
    return torch.cat(outs, -2), torch.cat(lses, -1)


def _qkv(g, B, H, T_q, T_k, d, d_v=None, dtype=F32, scale=2.0):
    return (randn(g, B, H, T_q, d, dtype=dtype, scale=scale), randn(g, B, H, T_k, d, dtype=dtype, scale=scale),
            randn(g, B, H, T_k, d_v or d, dtype=dtype))


def _fwd_cases(g, hidden, label_extra=""):
    def case(label, T_q, T_k, d, bq, bk, causal, dtype=F32, d_v=None):
        tol = F32_OUT if dtype == F32 else {}
        return Case(label, _qkv(g, 2, 2, T_q, T_k, d, d_v, dtype),
                    {"causal": causal, "block_q": bq, "block_k": bk}, **tol)

    cases = [
        case("T = 20, tiles 8 x 8, not causal", 20, 20, 4, 8, 8, False),
        case("causal, T = 24, tiles 8 x 4", 24, 24, 8, 8, 4, True),
        case("T_q = 6, T_k = 30 (cross), tiles 4 x 7, d_v = 3", 6, 30, 4, 4, 7, False, d_v=3),
        case("causal, T = 17, tiles 5 x 6 (ragged)", 17, 17, 4, 5, 6, True),
    ]
    if hidden:
        cases += [
            case("float64 causal T = 33, tiles 16 x 8", 33, 33, 8, 16, 8, True, dtype=F64),
            case("float64, one tile holds everything", 9, 9, 4, 64, 64, False, dtype=F64),
            case("tiles of 1 x 1, causal", 7, 7, 2, 1, 1, True),
            case("float64 causal, tiles 3 x 11", 25, 25, 4, 3, 11, True, dtype=F64),
        ]
    return cases


@register
class FlashForward(Exercise):
    id = "03.flash_forward"
    entry = "flash_forward"
    title = "FlashAttention forward: tiles and the online softmax"
    allow_reference = GPU_LAB
    forbid = NO_SHORTCUTS
    mistakes = (
        Mistake("online softmax without rescaling the running sum", "when a tile raises the row "
                "maximum from m to m_new, the sum so far was computed with exp(s - m): multiply it "
                "by exp(m - m_new) before adding the new tile's sum.", knob(_fwd, rescale_l=False)),
        Mistake("accumulated output not rescaled", "the unnormalised output acc was summed with the "
                "old maximum too: acc <- exp(m - m_new) * acc + P_tile V_tile.",
                knob(_fwd, rescale_acc=False)),
        Mistake("nothing rescaled when the maximum changes", "both the running sum l and the "
                "accumulator acc must be multiplied by exp(m - m_new).",
                knob(_fwd, rescale_l=False, rescale_acc=False)),
        Mistake("log-sum-exp returned as the row max only", "lse = m + log(l): the max alone "
                "forgets the sum.", knob(_fwd, lse="m")),
        Mistake("log-sum-exp without the max", "l was summed as exp(s - m), so log(sum exp(s)) = "
                "m + log(l), not log(l).", knob(_fwd, lse="log l")),
        Mistake("causal mask excludes the diagonal", "query i sees keys 0..i INCLUDING itself: "
                "mask keys j > i only.", knob(_fwd, strict=True)),
        Mistake("causal tiles on the diagonal skipped", "skip a tile only when ALL its keys are "
                "after all its queries (first key > last query); diagonal tiles are computed "
                "with the mask.", knob(_fwd, skip_diagonal=True)),
        Mistake("causal ignored", "with causal=True mask keys after the query (and skip the "
                "tiles that are masked entirely).", lambda q, k, v, causal=False, block_q=16,
                block_k=16: _fwd(q, k, v, False, block_q, block_k)),
        Mistake("no 1/sqrt(d) scale", "scores are q.k / sqrt(d).", knob(_fwd, scale=False)),
    )

    def reference(self, q, k, v, causal=False, block_q=16, block_k=16):
        return ref.flash_forward(q, k, v, causal, block_q, block_k)

    def cases(self, seed, hidden):
        return _fwd_cases(generator(seed), hidden)


# ---------------------------------------------------------------------------------------
# 03.flash_backward

def _bwd(q, k, v, out, lse, grad_out, causal=False, block_q=16, block_k=16, *, use_D=True,
         scale_grads=True, tile_softmax=False, mask=True):
    T_q, T_k = q.shape[-2], k.shape[-2]
    sc = 1 / math.sqrt(q.shape[-1])
    D = (grad_out * out).sum(-1)
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    for c0 in range(0, T_k, block_k):
        c1 = min(c0 + block_k, T_k)
        for r0 in range(0, T_q, block_q):
            r1 = min(r0 + block_q, T_q)
            if causal and mask and c0 > r1 - 1:
                continue
            qi, doi = q[..., r0:r1, :], grad_out[..., r0:r1, :]
            s = qi @ k[..., c0:c1, :].transpose(-2, -1) * sc
            if causal and mask:
                s = s.masked_fill(~_mask(r0, r1, c0, c1), float("-inf"))
            if tile_softmax:
                mx = s.amax(-1, keepdim=True).clamp_min(-1e30)
                e = torch.exp(s - mx)
                p = e / e.sum(-1, keepdim=True).clamp_min(torch.finfo(s.dtype).tiny)
            else:
                p = torch.exp(s - lse[..., r0:r1, None])
            dv[..., c0:c1, :] += p.transpose(-2, -1) @ doi
            dp = doi @ v[..., c0:c1, :].transpose(-2, -1)
            ds = p * (dp - D[..., r0:r1, None]) if use_D else p * dp
            f = sc if scale_grads else 1.0
            dq[..., r0:r1, :] += ds @ k[..., c0:c1, :] * f
            dk[..., c0:c1, :] += ds.transpose(-2, -1) @ qi * f
    return dq, dk, dv


@register
class FlashBackward(Exercise):
    id = "03.flash_backward"
    entry = "flash_backward"
    title = "FlashAttention backward from the log-sum-exp"
    allow_reference = GPU_LAB
    forbid = NO_SHORTCUTS
    mistakes = (
        Mistake("D = rowsum(dO * O) not subtracted", "the softmax's Jacobian gives dS = P * (dP - D) "
                "with D_i = sum_j P_ij dP_ij = dO_i . O_i; dS = P * dP forgets the normalisation.",
                knob(_bwd, use_D=False)),
        Mistake("1/sqrt(d) missing from dQ and dK", "S = scale * Q K^T, so dQ = scale * dS K and "
                "dK = scale * dS^T Q.", knob(_bwd, scale_grads=False)),
        Mistake("probabilities renormalised within each tile", "a tile's probabilities are "
                "exp(S_tile - lse) with the row's GLOBAL log-sum-exp; a softmax over the tile alone "
                "sums to 1 in every tile.", knob(_bwd, tile_softmax=True)),
        Mistake("causal mask not applied in the backward", "recompute S_tile with the same mask "
                "(and skip the same tiles) as the forward pass.", knob(_bwd, mask=False)),
    )

    def reference(self, q, k, v, out, lse, grad_out, causal=False, block_q=16, block_k=16):
        return ref.flash_backward(q, k, v, out, lse, grad_out, causal, block_q, block_k)

    def cases(self, seed, hidden):
        g = generator(seed)
        cases = []
        for c in _fwd_cases(g, hidden):
            q, k, v = c.args
            out, lse = ref.flash_forward(q, k, v, **c.kwargs)
            do = randn(g, *out.shape, dtype=q.dtype)
            tol = F32_GRAD if q.dtype == F32 else {}
            cases.append(Case(c.label, (q, k, v, out, lse, do), dict(c.kwargs), **tol))
        return cases


# ---------------------------------------------------------------------------------------
# 03.flash_attention

def _function(save="lse", causal_in_backward=True, order=(0, 1, 2)):
    class WrongFlashAttention(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v, causal=False):
            out, lse = ref.flash_forward(q, k, v, causal, 16, 16)
            if save == "max":  # the row max instead of the log-sum-exp
                s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
                if causal:
                    s = s.masked_fill(~torch.ones(s.shape[-2:], dtype=torch.bool).tril(), float("-inf"))
                lse = s.amax(-1)
            ctx.save_for_backward(q, k, v, out, lse)
            ctx.causal = causal
            return out

        @staticmethod
        def backward(ctx, grad_out):
            q, k, v, out, lse = ctx.saved_tensors
            grads = ref.flash_backward(q, k, v, out, lse, grad_out,
                                       ctx.causal if causal_in_backward else False, 16, 16)
            return grads[order[0]], grads[order[1]], grads[order[2]], None
    return WrongFlashAttention


class _Reference(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal=False):
        out, lse = ref.flash_forward(q, k, v, causal, 16, 16)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.causal = causal
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        return (*ref.flash_backward(q, k, v, out, lse, grad_out, ctx.causal, 16, 16), None)


@register
class FlashAttentionFunction(Exercise):
    id = "03.flash_attention"
    entry = "FlashAttention"
    uses = ("03.flash_forward", "03.flash_backward")
    title = "FlashAttention as a torch.autograd.Function"
    allow_reference = GPU_LAB
    forbid = NO_SHORTCUTS
    mistakes = (
        Mistake("log-sum-exp not saved: the backward used the row max", "save lse = m + log(l) "
                "from the forward; exp(S - max) is not a probability (its rows do not sum to 1).",
                _function(save="max")),
        Mistake("causal flag not used in the backward", "keep `causal` on ctx and pass it to the "
                "backward, which must mask the same keys.", _function(causal_in_backward=False)),
        Mistake("gradients returned in the wrong order", "backward returns one gradient per "
                "forward input, in order: dq, dk, dv, then None for `causal`.", _function(order=(1, 0, 2))),
    )

    reference = _Reference  # a class: ``self.reference`` is the Function itself

    call = calls.autograd_function

    def cases(self, seed, hidden):
        g = generator(seed)

        def case(label, T, d, causal, dtype=F32):
            q, k, v = _qkv(g, 2, 2, T, T, d, dtype=dtype)
            tol = F32_GRAD if dtype == F32 else {}
            return Case(label, (q, k, v, randn(g, 2, 2, T, d, dtype=dtype)), {"causal": causal}, **tol)

        cases = [case("T = 40 (3 x 3 tiles of 16), not causal", 40, 8, False),
                 case("causal, T = 37", 37, 4, True)]
        if hidden:
            cases += [case("float64 causal T = 50", 50, 8, True, dtype=F64),
                      case("float64, T = 20, not causal", 20, 4, False, dtype=F64),
                      case("causal, T = 5 (one tile)", 5, 4, True)]
        return cases

"""lab.ipynb, the cost exercises: FLOP/byte counts of a matmul, a softmax and attention, the
roofline classification and MFU. Closed forms, checked exactly (conventions in
:mod:`llmcourse.reference.roofline`); the roofline is checked against the ceilings given in
the case, never the grader's device. :mod:`.lab` imports (and re-exports) these specs."""

from __future__ import annotations

import torch

from ...reference import roofline as roofline_ref
from .. import register
from ..core import Case, Exercise, Mistake
from ..kit import generator


# ---------------------------------------------------------------------------------------
# Cost formulas (checked exactly)

def _exact(label, *args, **kwargs) -> Case:
    return Case(label, args, kwargs, rtol=0.0, atol=0.0)


@register
class MatmulCost(Exercise):
    """FLOPs and bytes of a matmul."""
    id = "09.matmul_cost"
    entry = "matmul_cost"
    mistakes = (
        Mistake("multiply-add counted as one FLOP", "each of the m n k multiply-adds is two "
                "FLOPs: 2 m n k.", lambda m, n, k, s: (m * n * k, roofline_ref.matmul_cost(m, n, k, s)[1])),
        Mistake("bytes counted in elements", "multiply the number of elements by "
                "`dtype_bytes`.", lambda m, n, k, s: (2 * m * n * k, m * k + k * n + m * n)),
        Mistake("output not written", "C = A B must be written back: (m k + k n + m n) "
                "elements.", lambda m, n, k, s: (2 * m * n * k, (m * k + k * n) * s)),
        Mistake("A counted as m x n", "A is (m, k), B is (k, n), C is (m, n).",
                lambda m, n, k, s: (2 * m * n * k, (2 * m * n + k * n) * s)),
    )

    def reference(self, m, n, k, dtype_bytes):
        return roofline_ref.matmul_cost(m, n, k, dtype_bytes)

    def cases(self, seed, hidden):
        cases = [_exact("(64, 16) @ (16, 32), float32", 64, 32, 16, 4),
                 _exact("square 8192, bfloat16", 8192, 8192, 8192, 2)]
        if hidden:
            g = generator(seed)
            m, n, k = (int(x) for x in torch.randint(1, 5000, (3,), generator=g))
            cases += [_exact("random sizes, float16", m, n, k, 2),
                      _exact("matrix-vector (n = 1), float32", 4096, 1, 11008, 4),
                      _exact("GPT-2 MLP up-projection, float64", 16 * 1024, 3072, 768, 8)]
        return cases


@register
class SoftmaxCost(Exercise):
    """FLOPs and bytes of a row softmax."""
    id = "09.softmax_cost"
    entry = "softmax_cost"
    mistakes = (
        Mistake("one FLOP per element", "the course counts 5 FLOPs per element: max, "
                "subtract, exp, sum, divide.", lambda r, c, s: (r * c, 2 * r * c * s)),
        Mistake("output not written", "an ideal kernel reads x once AND writes y once: "
                "2 rows cols s bytes.", lambda r, c, s: (5 * r * c, r * c * s)),
        Mistake("bytes counted in elements", "multiply by `dtype_bytes`.",
                lambda r, c, s: (5 * r * c, 2 * r * c)),
    )

    def reference(self, rows, cols, dtype_bytes):
        return roofline_ref.softmax_cost(rows, cols, dtype_bytes)

    def cases(self, seed, hidden):
        cases = [_exact("(1024, 4096) float32", 1024, 4096, 4), _exact("(3, 7) bfloat16", 3, 7, 2)]
        if hidden:
            g = generator(seed)
            r, c = (int(x) for x in torch.randint(1, 100_000, (2,), generator=g))
            cases += [_exact("random sizes, float16", r, c, 2), _exact("one row, float64", 1, 50257, 8)]
        return cases


@register
class AttentionCost(Exercise):
    """FLOPs and bytes of fused self-attention."""
    id = "09.attention_cost"
    entry = "attention_cost"
    mistakes = (
        Mistake("only 2 S^2 d per head", "there are two matmuls, Q K^T and P V, of 2 S^2 d "
                "FLOPs each (a multiply-add is 2 FLOPs): 4 B H S^2 d.",
                lambda b, h, S, d, s, causal=False: (
                    roofline_ref.attention_cost(b, h, S, d, s, causal)[0] // 2,
                    roofline_ref.attention_cost(b, h, S, d, s, causal)[1])),
        Mistake("causal not halved", "with causal=True half the scores are masked and a "
                "causal kernel skips them: divide the FLOPs by 2.",
                lambda b, h, S, d, s, causal=False: roofline_ref.attention_cost(b, h, S, d, s, False)),
        Mistake("score matrix counted in bytes", "a fused kernel never writes the S x S "
                "scores to memory: bytes are read Q, K, V + write O = 4 B H S d s.",
                lambda b, h, S, d, s, causal=False: (
                    roofline_ref.attention_cost(b, h, S, d, s, causal)[0],
                    roofline_ref.attention_cost(b, h, S, d, s, causal)[1] + 2 * b * h * S * S * s)),
        Mistake("heads forgotten", "every one of the H heads does its own attention: "
                "multiply by H.", lambda b, h, S, d, s, causal=False: roofline_ref.attention_cost(
                    b, 1, S, d, s, causal)),
    )

    def reference(self, batch, heads, seq, head_dim, dtype_bytes, causal=False):
        return roofline_ref.attention_cost(batch, heads, seq, head_dim, dtype_bytes, causal)

    def cases(self, seed, hidden):
        cases = [_exact("B=2, H=4, S=128, d=64, float32", 2, 4, 128, 64, 4),
                 _exact("B=4, H=16, S=8192, d=64, bfloat16, causal", 4, 16, 8192, 64, 2,
                        causal=True)]
        if hidden:
            g = generator(seed)
            S = 2 * int(torch.randint(1, 3000, (), generator=g))
            cases += [_exact("random S, causal, float16", 1, 12, S, 64, 2, causal=True),
                      _exact("causal=False given explicitly", 3, 8, 100, 128, 4, causal=False),
                      _exact("one head, float64", 1, 1, 4096, 128, 8)]
        return cases


# ---------------------------------------------------------------------------------------
# 09.roofline

@register
class Roofline(Exercise):
    """Arithmetic intensity and the roofline classification."""
    id = "09.roofline"
    entry = "roofline"
    mistakes = (
        Mistake("intensity inverted", "arithmetic intensity is FLOPs per byte: flops / "
                "bytes_moved.", lambda f, b, P, W: roofline_ref.roofline(b, f, P, W)),
        Mistake("no compute roof", "intensity * bandwidth can exceed the peak; take the "
                "min with peak_flops.", lambda f, b, P, W: (f / b, f / b * W, f / b < P / W)),
        Mistake("max instead of min", "the attainable rate is capped by BOTH roofs: "
                "min(peak_flops, intensity * peak_bandwidth).",
                lambda f, b, P, W: (f / b, max(P, f / b * W), f / b < P / W)),
        Mistake("ridge point counted as memory-bound", "at exactly I = peak_flops / "
                "peak_bandwidth both roofs meet; the course counts it as compute-bound "
                "(memory_bound = I < ridge).",
                lambda f, b, P, W: (f / b, min(P, f / b * W), f / b <= P / W)),
        Mistake("classification reversed", "below the ridge point (I < peak_flops / "
                "peak_bandwidth) an operation is memory-bound.",
                lambda f, b, P, W: (f / b, min(P, f / b * W), f / b >= P / W)),
    )

    def reference(self, flops, bytes_moved, peak_flops, peak_bandwidth):
        return roofline_ref.roofline(flops, bytes_moved, peak_flops, peak_bandwidth)

    def cases(self, seed, hidden):
        P, W = 989e12, 3.35e12  # an H100 SXM's listed bf16 peak and bandwidth
        cases = [
            Case("fp32 softmax on an H100: memory-bound", (*roofline_ref.softmax_cost(4096, 4096, 4), P, W)),
            Case("bf16 matmul 8192^3 on an H100: compute-bound",
                 (*roofline_ref.matmul_cost(8192, 8192, 8192, 2), P, W)),
            Case("exactly at the ridge point", (2000.0, 100.0, 1000.0, 50.0)),
        ]
        if hidden:
            g = generator(seed)
            n = int(torch.randint(1, 64, (), generator=g))
            cases += [
                Case("matrix-vector product on a T4", (*roofline_ref.matmul_cost(4096, n, 4096, 2),
                                                      65e12, 320e9)),
                Case("causal flash attention on an A100",
                     (*roofline_ref.attention_cost(4, 16, 8192, 64, 2, True), 312e12, 2.0e12)),
                Case("a CPU: 1 TFLOP/s, 50 GB/s", (*roofline_ref.matmul_cost(512, 512, 512, 4), 1e12, 50e9)),
            ]
        return cases



# ---------------------------------------------------------------------------------------
# 09.mfu

@register
class MFU(Exercise):
    """Model FLOPs utilisation of a training step."""
    id = "09.mfu"
    entry = "mfu"
    mistakes = (
        Mistake("forward pass only", "a training step is forward (2 FLOPs per parameter per "
                "token) + backward (4): 6 N, and 12 L T d for attention.",
                lambda t, N, L, T, d, P: (2 * N + 4 * L * T * d, t * (2 * N + 4 * L * T * d) / P)),
        Mistake("attention term missing", "add 12 n_layer seq_len d_model for the attention "
                "score and value matmuls.", lambda t, N, L, T, d, P: (6 * N, t * 6 * N / P)),
        Mistake("causal halving applied", "the course (like PaLM and nanoGPT) counts the full "
                "12 L T d, without halving for the causal mask.",
                lambda t, N, L, T, d, P: (6 * N + 6 * L * T * d, t * (6 * N + 6 * L * T * d) / P)),
        Mistake("percent, not a fraction", "return MFU as a fraction (0.4), not a percentage.",
                lambda t, N, L, T, d, P: (roofline_ref.mfu(t, N, L, T, d, P)[0], 100 * roofline_ref.mfu(t, N, L, T, d, P)[1])),
    )

    def reference(self, tokens_per_s, n_params, n_layer, seq_len, d_model, peak_flops):
        return roofline_ref.mfu(tokens_per_s, n_params, n_layer, seq_len, d_model, peak_flops)

    def cases(self, seed, hidden):
        cases = [
            Case("GPT-2 small on an H100 (330k tokens/s)",
                 (330e3, 123_653_376, 12, 1024, 768, 989.4e12), rtol=1e-9, atol=0.0),
            Case("a tiny GPT on a CPU", (7.3e3, 462_336, 2, 128, 128, 1e11), rtol=1e-9, atol=0.0),
        ]
        if hidden:
            g = generator(seed)
            L = int(torch.randint(2, 48, (), generator=g))
            cases += [
                Case("random depth, A100", (5e4, 12 * L * 1024**2, L, 2048, 1024, 312e12),
                     rtol=1e-9, atol=0.0),
                Case("GPT-3 175B shape", (1.5e3, 175_000_000_000, 96, 2048, 12288, 312e12),
                     rtol=1e-9, atol=0.0),
                Case("T=1 (no attention to speak of)", (1e6, 1_000_000, 4, 1, 256, 65e12),
                     rtol=1e-9, atol=0.0),
            ]
        return cases

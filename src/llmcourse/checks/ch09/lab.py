"""lab.ipynb: an honest timer, FLOP/byte counts, the roofline, chunked attention, MFU.

Grading never depends on the grader's hardware:

* ``09.timer`` runs the learner's timer on workloads of known duration
  (:class:`llmcourse.reference.timing.SleepWorkload`): on a CPU sleeps, blocking or queued on
  a worker thread that plays a GPU stream; on a GPU ``torch.cuda._sleep`` kernels launched
  asynchronously. The output compared is a summary that a correct timer gets right on any
  machine: how many calls it made, how many times it returned, whether the median lies in a
  generous band around the scheduled median (-1 below, 0 inside, +1 above), and whether the
  reported median and IQR are those of its own list of times.
* The cost formulas are integers checked exactly (conventions in
  :mod:`llmcourse.reference.roofline`); the roofline classification is checked against the
  ceilings given in the case, not against the grader's device.
"""

from __future__ import annotations

import math
import statistics

import torch

from ...reference import chunked_attention as chunked_ref
from ...reference import roofline as roofline_ref
from ...reference import timing as timing_ref
from .. import register
from ..core import Case, Exercise, Mistake, Rule
from ..kit import F32, F64, generator


NO_TIMING_LIBRARIES = (
    Rule("torch.utils.benchmark", "write the warm-up / synchronise / repeat loop yourself"),
    Rule("timeit", "write the timing loop yourself with time.perf_counter"),
    Rule("triton.testing", "write the timing loop yourself instead of triton.testing.do_bench"),
)
NO_FUSED_ATTENTION = (
    Rule(".scaled_dot_product_attention", "compute the chunks yourself; "
         "F.scaled_dot_product_attention is what you are comparing against"),
    Rule("torch.nn.MultiheadAttention", "compute the chunks yourself"),
    Rule(".flex_attention", "compute the chunks yourself"),
)


# ---------------------------------------------------------------------------------------
# 09.timer

def _band(median_ms: float) -> tuple[float, float]:
    """Accepted range for a measured median of a scheduled median. Generous above: on a
    loaded grader machine a thread that wakes up from a sleep may wait several milliseconds
    for a core, and a GPU's clock may change between calibration and run; a mean dragged up by
    an outlier is caught by the consistency fields instead."""
    return 0.75 * median_ms - 0.3, 3.0 * median_ms + 30.0


def _timed_schedule(schedule, warmup, repeats):
    return [schedule[min(i, len(schedule) - 1)] for i in range(warmup, warmup + repeats)]


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-6 * (1.0 + abs(b))


class TimerExercise(Exercise):
    """Cases hold a schedule; :meth:`call` builds the workload and summarises the result.
    The expected summary is known without running anything (:meth:`expected`), so the
    grader's own machine load never enters the expected answer."""

    def expected(self, case: Case):
        kw = case.kwargs
        return {"calls": kw["warmup"] + kw["repeats"], "n_times": kw["repeats"],
                "median_vs_schedule": 0, "median_is_median_of_times": True,
                "iqr_is_iqr_of_times": True}

    def call(self, fn, case: Case):
        kw = case.kwargs
        with timing_ref.SleepWorkload(kw["schedule"], kw["kind"]) as work:
            result = fn(work, warmup=kw["warmup"], repeats=kw["repeats"], sync=work.sync)
            work.drain()
            calls = work.calls
        if not isinstance(result, dict) or not {"median_ms", "iqr_ms", "times_ms"} <= set(result):
            raise TypeError("return a dict with the keys 'median_ms', 'iqr_ms' and 'times_ms'")
        times = [float(t) for t in result["times_ms"]]
        median, iqr = float(result["median_ms"]), float(result["iqr_ms"])
        lo, hi = _band(statistics.median(_timed_schedule(kw["schedule"], kw["warmup"],
                                                          kw["repeats"])))
        return {"calls": calls, "n_times": len(times),
                "median_vs_schedule": -1 if median < lo else (1 if median > hi else 0),
                "median_is_median_of_times": bool(times) and _close(median, timing_ref.quantile(times, 0.5)),
                "iqr_is_iqr_of_times": bool(times) and _close(
                    iqr, timing_ref.quantile(times, 0.75) - timing_ref.quantile(times, 0.25))}


def _timer_no_warmup(fn, warmup=3, repeats=10, sync=None):
    return timing_ref.time_fn(fn, 0, repeats, sync)


def _timer_warmup_timed(fn, warmup=3, repeats=10, sync=None):
    return timing_ref.time_fn(fn, 0, warmup + repeats, sync)


def _timer_no_sync(fn, warmup=3, repeats=10, sync=None):
    return timing_ref.time_fn(fn, warmup, repeats, sync=lambda: None)


def _timer_stat(fn, warmup, repeats, sync, stat, spread=None, scale=1e3):
    """The reference timer's measurements, summarised wrongly (``stat``/``spread``) or in the
    wrong unit (``scale`` per second instead of 1e3)."""
    times = [t * scale / 1e3 for t in timing_ref.time_fn(fn, warmup, repeats, sync)["times_ms"]]
    iqr = timing_ref.quantile(times, 0.75) - timing_ref.quantile(times, 0.25)
    return {"median_ms": stat(times), "iqr_ms": spread(times) if spread else iqr,
            "times_ms": times}


def _timer_mean(fn, warmup=3, repeats=10, sync=None):
    return _timer_stat(fn, warmup, repeats, sync, statistics.fmean)


def _timer_lower_median(fn, warmup=3, repeats=10, sync=None):
    return _timer_stat(fn, warmup, repeats, sync,
                       lambda t: float(torch.tensor(t, dtype=F64).median()))


def _timer_seconds(fn, warmup=3, repeats=10, sync=None):
    return _timer_stat(fn, warmup, repeats, sync, statistics.median, scale=1.0)


def _timer_std(fn, warmup=3, repeats=10, sync=None):
    return _timer_stat(fn, warmup, repeats, sync, statistics.median,
                       spread=lambda t: statistics.pstdev(t))


def _timer_case(label, schedule, kind, warmup, repeats) -> Case:
    where = "GPU: torch.cuda._sleep" if torch.cuda.is_available() else (
        "CPU: sleep queued on a fake stream" if kind == "async" else "CPU: sleep")
    return Case(f"{label} ({where})", (), {"schedule": [float(s) for s in schedule],
                                           "kind": kind, "warmup": warmup, "repeats": repeats})


@register
class Timer(TimerExercise):
    """An honest timer: warm-up, synchronise, repeat, median and IQR."""
    id = "09.timer"
    entry = "time_fn"
    forbid = NO_TIMING_LIBRARIES
    mistakes = (
        Mistake("no warm-up", "the warm-up calls were skipped, so the slow first calls were "
                "timed; run `warmup` calls before the timed ones.", _timer_no_warmup),
        Mistake("warm-up calls timed too", "time only the `repeats` calls after the warm-up; "
                "`times_ms` must have exactly `repeats` entries.", _timer_warmup_timed),
        Mistake("no synchronisation", "the workload only queues its work and returns; call "
                "`sync()` (default: torch.cuda.synchronize on a GPU) after fn() and before you "
                "stop the clock, or you time the launch, not the work.", _timer_no_sync),
        Mistake("mean instead of median", "one slow call drags the mean up; report the median "
                "of the times.", _timer_mean),
        Mistake("lower median (torch.median)", "for an even number of times torch.median "
                "returns the lower middle value; the median is the mean of the two middle "
                "values (numpy.median, statistics.median, torch.quantile(t, 0.5)).",
                _timer_lower_median),
        Mistake("seconds, not milliseconds", "time.perf_counter() is in seconds; multiply by "
                "1000.", _timer_seconds),
        Mistake("standard deviation instead of IQR", "the spread asked for is the "
                "interquartile range, quantile 0.75 minus quantile 0.25 (linear "
                "interpolation).", _timer_std),
    )

    def reference(self, fn, warmup=3, repeats=10, sync=None):
        return timing_ref.time_fn(fn, warmup, repeats, sync)

    def cases(self, seed, hidden):
        cases = [
            _timer_case("slow first calls, an outlier, even repeats",
                        [50, 50, 1, 1, 30, 1, 150, 30], "blocking", 2, 6),
            _timer_case("asynchronous work", [30, 30, 30, 10, 4, 25, 10, 10], "async", 3, 5),
        ]
        if hidden:
            g = generator(seed)
            base = 4 + int(torch.randint(0, 5, (), generator=g))
            cases += [
                _timer_case("odd repeats, two outliers",
                            [35, base, base + 3, base, 45, base + 3, base, 50, base], "blocking",
                            1, 8),
                _timer_case("no warm-up needed", [base + 2], "blocking", 0, 3),
                _timer_case("a single repeat", [30, 30, base + 5], "async", 2, 1),
                _timer_case("async, slow warm-up, even repeats",
                            [40, 40, base, base + 6, base, 30, base + 6, base + 6], "async", 2, 6),
            ]
        return cases


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
# 09.chunked_attention

def _chunked(q, k, v, causal=False, chunk_size=128, *, scale=None, local_mask=False,
             drop_tail=False, axis=-1, mask_after=False, ignore_causal=False):
    S = q.shape[-2]
    ct = torch.promote_types(q.dtype, F32)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    out = torch.zeros_like(q)
    stops = range(0, (S // chunk_size) * chunk_size if drop_tail else S, chunk_size)
    for start in stops:
        stop = min(start + chunk_size, S)
        scores = (q[..., start:stop, :].to(ct) @ k.transpose(-2, -1).to(ct)) * scale
        allowed = None
        if causal and not ignore_causal:
            rows = torch.arange(stop - start) + (0 if local_mask else start)
            allowed = torch.arange(S)[None, :] <= rows[:, None]
            if not mask_after:
                scores = scores.masked_fill(~allowed, float("-inf"))
        w = torch.softmax(scores, dim=axis)
        if allowed is not None and mask_after:
            w = w * allowed
        out[..., start:stop, :] = (w @ v.to(ct)).to(q.dtype)
    return out


@register
class ChunkedAttention(Exercise):
    """Memory-efficient attention: queries in chunks."""
    id = "09.chunked_attention"
    entry = "chunked_attention"
    forbid = NO_FUSED_ATTENTION
    mistakes = (
        Mistake("no 1/sqrt(d) scale", "scale the scores by 1/sqrt(head_dim) before the "
                "softmax.", lambda q, k, v, causal=False, chunk_size=128:
                _chunked(q, k, v, causal, chunk_size, scale=1.0)),
        Mistake("last partial chunk dropped", "when S is not a multiple of chunk_size the last "
                "chunk is shorter; loop `for start in range(0, S, chunk_size)`.",
                lambda q, k, v, causal=False, chunk_size=128:
                _chunked(q, k, v, causal, chunk_size, drop_tail=True)),
        Mistake("softmax over the query axis", "normalise each query's scores over the keys "
                "(dim=-1).", lambda q, k, v, causal=False, chunk_size=128:
                _chunked(q, k, v, causal, chunk_size, axis=-2)),
        Mistake("causal mask in chunk-local positions", "query row r of the chunk starting at "
                "`start` is position start + r: it may see keys 0..start + r.",
                lambda q, k, v, causal=False, chunk_size=128:
                _chunked(q, k, v, causal, chunk_size, local_mask=True)),
        Mistake("causal flag ignored", "with causal=True, query i must not see keys j > i.",
                lambda q, k, v, causal=False, chunk_size=128:
                _chunked(q, k, v, causal, chunk_size, ignore_causal=True)),
        Mistake("mask applied after the softmax", "set masked scores to -inf BEFORE the softmax "
                "so that each row is renormalised over the allowed keys.",
                lambda q, k, v, causal=False, chunk_size=128:
                _chunked(q, k, v, causal, chunk_size, mask_after=True)),
    )

    def reference(self, q, k, v, causal=False, chunk_size=128):
        return chunked_ref.chunked_attention(q, k, v, causal, chunk_size)

    def cases(self, seed, hidden):
        g = generator(seed)

        def qkv(*shape, dtype=F32):
            return tuple((torch.randn(*shape, generator=g, dtype=F64)).to(dtype) for _ in range(3))

        cases = [
            Case("(2, 3, 10, 8), chunk 4 (a partial last chunk)", qkv(2, 3, 10, 8),
                 {"chunk_size": 4}),
            Case("causal (1, 2, 12, 4), chunk 5", qkv(1, 2, 12, 4), {"causal": True, "chunk_size": 5}),
        ]
        if hidden:
            cases += [
                Case("float64 causal, chunk larger than S", qkv(2, 2, 7, 16, dtype=F64),
                     {"causal": True, "chunk_size": 16}),
                Case("chunk_size=1, causal", qkv(1, 3, 9, 8), {"causal": True, "chunk_size": 1}),
                Case("default chunk_size, S=300, causal", qkv(1, 2, 300, 8), {"causal": True}),
                # bfloat16 outputs: 8 mantissa bits, so ~1e-2 relative; the reference computes
                # in float32 and rounds once, a bf16 pipeline rounds a few more times.
                Case("bfloat16, causal, chunk 8", qkv(2, 2, 33, 16, dtype=torch.bfloat16),
                     {"causal": True, "chunk_size": 8}, rtol=3e-2, atol=2e-2),
                Case("a single position", qkv(1, 1, 1, 4), {"causal": True, "chunk_size": 3}),
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

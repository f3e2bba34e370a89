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
  ceilings given in the case, not against the grader's device. Those specs live in
  :mod:`.lab_costs` (imported here, so this module still names all seven).
"""

from __future__ import annotations

import math
import statistics

import torch

from ...reference import chunked_attention as chunked_ref
from ...reference import timing as timing_ref
from .. import calls, register
from ..core import Case, Exercise, Mistake, Rule
from ..kit import F32, F64, generator
from .lab_costs import (MFU, AttentionCost, MatmulCost, Roofline,  # noqa: F401 (re-exported)
                        SoftmaxCost)


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

class TimerExercise(Exercise):
    """Cases hold a schedule; :meth:`call` builds the workload and summarises the result.
    The expected summary is known without running anything (:meth:`expected`), so the
    grader's own machine load never enters the expected answer."""

    def expected(self, case: Case):
        kw = case.kwargs
        return {"calls": kw["warmup"] + kw["repeats"], "n_times": kw["repeats"],
                "median_vs_schedule": 0, "median_is_median_of_times": True,
                "iqr_is_iqr_of_times": True}

    call = calls.sleep_timer


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

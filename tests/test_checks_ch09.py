"""Chapter 09 checks: other correct answers pass, typical wrong ones fail with a useful line.

Each learner answer is written to its own module file, as a notebook cell would hold it, so
that the forbidden-shortcut scan reads only that answer."""


import pytest

from llmcourse.checks import get, run


@pytest.fixture
def learner(learner):
    """Here ``learner(source, name)`` returns the function ``name`` defined by the source."""
    return lambda source, name: getattr(learner(source, f"learner_ch09_{name}"), name)


def test_timer_with_statistics_module_passes(learner):
    fn = learner('''
        import statistics
        import time
        import torch

        def time_fn(fn, warmup=3, repeats=10, sync=None):
            sync = sync or (torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None))
            for _ in range(warmup):
                fn()
            sync()
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn()
                sync()
                times.append(1000 * (time.perf_counter() - t0))
            q = (statistics.quantiles(times, n=4, method="inclusive") if len(times) > 1
                 else [times[0]] * 3)
            return {"median_ms": statistics.median(times), "iqr_ms": q[2] - q[0], "times_ms": times}
        ''', "time_fn")
    r = run(get("09.timer"), fn, hidden=True, seed=3)
    assert r.status == "pass", str(r)


def test_timer_returning_a_tuple_gets_a_clear_error(learner):
    fn = learner('''
        def time_fn(fn, warmup=3, repeats=10, sync=None):
            return 1.0, 0.1
        ''', "time_fn")
    r = run(get("09.timer"), fn)
    assert r.status == "error" and "'median_ms'" in str(r)


def test_timer_using_torch_utils_benchmark_is_forbidden(learner):
    fn = learner('''
        import torch.utils.benchmark as tb

        def time_fn(fn, warmup=3, repeats=10, sync=None):
            m = tb.Timer(stmt="fn()", globals={"fn": fn}).timeit(repeats)
            return {"median_ms": m.median * 1e3, "iqr_ms": m.iqr * 1e3, "times_ms": []}
        ''', "time_fn")
    r = run(get("09.timer"), fn)
    assert r.status == "forbidden" and "torch.utils.benchmark" in str(r)


def test_chunked_attention_in_bf16_throughout_passes(learner):
    fn = learner('''
        import math
        import torch

        def chunked_attention(q, k, v, causal=False, chunk_size=128):
            S = q.shape[-2]
            outs = []
            for s in range(0, S, chunk_size):
                e = min(s + chunk_size, S)
                sc = q[..., s:e, :] @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
                if causal:
                    m = torch.arange(S)[None, :] > torch.arange(s, e)[:, None]
                    sc = sc.masked_fill(m, float("-inf"))
                outs.append(torch.softmax(sc, dim=-1) @ v)
            return torch.cat(outs, dim=-2)
        ''', "chunked_attention")
    r = run(get("09.chunked_attention"), fn, hidden=True, seed=1)
    assert r.status == "pass", str(r)


def test_chunked_attention_calling_sdpa_is_forbidden(learner):
    fn = learner('''
        import torch.nn.functional as F

        def chunked_attention(q, k, v, causal=False, chunk_size=128):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        ''', "chunked_attention")
    r = run(get("09.chunked_attention"), fn)
    assert r.status == "forbidden" and "scaled_dot_product_attention" in str(r)


def test_roofline_with_a_numpy_bool_passes(learner):
    fn = learner('''
        import numpy as np

        def roofline(flops, bytes_moved, peak_flops, peak_bandwidth):
            i = flops / bytes_moved
            return i, min(peak_flops, i * peak_bandwidth), np.bool_(i < peak_flops / peak_bandwidth)
        ''', "roofline")
    r = run(get("09.roofline"), fn, hidden=True, seed=4)
    assert r.status == "pass", str(r)


def test_cost_formulas_are_exact(learner):
    fn = learner('''
        def matmul_cost(m, n, k, dtype_bytes):  # one FLOP too many on the big case
            return 2 * m * n * k + (1 if m > 1000 else 0), (m * k + k * n + m * n) * dtype_bytes
        ''', "matmul_cost")
    assert run(get("09.matmul_cost"), fn).status == "fail"


def test_mfu_computed_in_floats_passes(learner):
    fn = learner('''
        def mfu(tokens_per_s, n_params, n_layer, seq_len, d_model, peak_flops):
            fpt = 6.0 * n_params + 12.0 * n_layer * seq_len * d_model
            return int(fpt), tokens_per_s * fpt / peak_flops
        ''', "mfu")
    r = run(get("09.mfu"), fn, hidden=True, seed=2)
    assert r.status == "pass", str(r)

"""Chapter 09 references against independent authorities: PyTorch's scaled_dot_product_attention,
PyTorch's FLOP counter (torch.utils.flop_counter), numpy.percentile, closed forms, and
workloads of known duration. GPU-only tests skip on a CPU with a visible reason."""

import json
import math
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from llmcourse.reference import chunked_attention as chunked_attention_ref
from llmcourse.scripts import gpu_report
from llmcourse.reference import roofline as roofline_ref
from llmcourse.reference import timing as timing_ref
from llmcourse.reference.gpt import GPT, GPTConfig

CUDA = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not CUDA, reason="SKIP (no GPU): needs a CUDA device")


def flops_of(fn, *args) -> int:
    with FlopCounterMode(display=False) as counter:
        fn(*args)
    return counter.get_total_flops()


# ---------------------------------------------------------------------------------------
# Cost formulas

@pytest.mark.parametrize("m,n,k", [(64, 32, 16), (7, 1, 300), (128, 256, 512)])
def test_matmul_flops_match_pytorch_counter(m, n, k):
    a, b = torch.randn(m, k), torch.randn(k, n)
    assert roofline_ref.matmul_cost(m, n, k, 4)[0] == flops_of(torch.matmul, a, b)
    assert roofline_ref.matmul_cost(m, n, k, 4)[1] == (a.numel() + b.numel() + m * n) * a.element_size()


def test_attention_flops_match_pytorch_counter():
    q = k = v = torch.randn(2, 3, 64, 16)
    # The counter sees the two matmuls of the unfused version, 4 B H S^2 d (and a causal
    # mask does not change what the unfused matmuls compute).
    assert roofline_ref.attention_cost(2, 3, 64, 16, 4)[0] == flops_of(chunked_attention_ref.naive_attention, q, k, v)
    assert flops_of(chunked_attention_ref.naive_attention, q, k, v, True) == flops_of(chunked_attention_ref.naive_attention, q, k, v)
    assert roofline_ref.attention_cost(2, 3, 64, 16, 4, causal=True)[0] * 2 == roofline_ref.attention_cost(2, 3, 64, 16, 4)[0]
    assert roofline_ref.attention_cost(2, 3, 64, 16, 2)[1] == 4 * q.numel() * 2


def test_softmax_cost_closed_form():
    assert roofline_ref.softmax_cost(3, 7, 2) == (105, 84)


def test_roofline_cases():
    P, W = 1000.0, 50.0  # ridge at 20 FLOP/byte
    assert roofline_ref.roofline(100, 10, P, W) == (10.0, 500.0, True)
    assert roofline_ref.roofline(4000, 100, P, W) == (40.0, 1000.0, False)
    assert roofline_ref.roofline(2000, 100, P, W) == (20.0, 1000.0, False)  # a tie is compute-bound
    f, b = roofline_ref.matmul_cost(8192, 8192, 8192, 2)
    assert not roofline_ref.roofline(f, b, 989e12, 3.35e12)[2]
    f, b = roofline_ref.softmax_cost(4096, 4096, 4)
    assert roofline_ref.roofline(f, b, 989e12, 3.35e12)[2]
    assert roofline_ref.roofline_time(f, b, 989e12, 3.35e12) == b / 3.35e12


def test_gpt_flops_per_token_matches_pytorch_counter():
    """6 W + 12 L T d per token, W = the weight matrices' entries, is exactly what PyTorch's
    counter finds for a forward + backward pass of the reference GPT (our N adds biases and
    LayerNorm weights, a fraction of a percent)."""
    cfg = GPTConfig(vocab_size=96, block_size=32, n_layer=2, n_head=2, n_embd=32)
    torch.manual_seed(0)
    model = GPT(cfg)
    B, T = 2, 32
    idx = torch.randint(0, cfg.vocab_size, (B, T))

    def step():
        model(idx).float().sum().backward()

    measured = flops_of(step)
    weights = sum(p.numel() for n, p in model.named_parameters()
                  if p.dim() == 2 and "wpe" not in n)
    assert measured == B * T * (6 * weights + 12 * cfg.n_layer * T * cfg.n_embd)
    n = roofline_ref.gpt_matmul_params(model)
    assert n == sum(p.numel() for p in model.parameters()) - cfg.block_size * cfg.n_embd
    assert roofline_ref.gpt_flops_per_token(model, T) == 6 * n + 12 * cfg.n_layer * T * cfg.n_embd
    assert 0 < (n - weights) / weights < 0.05  # biases and LayerNorms of a tiny model


def test_fused_gpt_computes_the_same_logits():
    cfg = GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16)
    torch.manual_seed(0)
    model = GPT(cfg).double()
    idx = torch.randint(0, 50, (2, 16))
    ref = model(idx)
    torch.testing.assert_close(gpu_report.fuse_gpt(model)(idx), ref)


def test_mfu_formula():
    fpt, u = roofline_ref.mfu(330e3, 123_653_376, 12, 1024, 768, 989.4e12)
    assert fpt == 6 * 123_653_376 + 12 * 12 * 1024 * 768
    assert u == pytest.approx(330e3 * fpt / 989.4e12)
    assert 0.2 < u < 0.3


# ---------------------------------------------------------------------------------------
# Attention

@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12),
                                       (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("S,chunk", [(37, 8), (16, 16), (5, 128), (64, 1)])
def test_chunked_attention_equals_sdpa(dtype, tol, causal, S, chunk):
    g = torch.Generator().manual_seed(S)
    q, k, v = (torch.randn(2, 3, S, 16, generator=g, dtype=torch.float64).to(dtype) for _ in range(3))
    out = chunked_attention_ref.chunked_attention(q, k, v, causal, chunk)
    ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=causal)
    assert out.dtype == dtype and out.shape == q.shape
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("causal", [False, True])
def test_naive_attention_equals_sdpa(causal):
    q, k, v = (torch.randn(2, 2, 33, 8, dtype=torch.float64) for _ in range(3))
    torch.testing.assert_close(chunked_attention_ref.naive_attention(q, k, v, causal), chunked_attention_ref.sdpa(q, k, v, causal))


def test_ch09_chunked_reference_equals_sdpa():
    from llmcourse.checks import get

    ex = get("09.chunked_attention")
    for case in ex.cases(3, True):
        q, k, v = case.args
        causal = case.kwargs.get("causal", False)
        ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=causal)
        torch.testing.assert_close(ex.expected(case).double(), ref,
                                   rtol=case.rtol or 1e-5, atol=case.atol or 1e-5)


def test_attention_peak_bytes_closed_forms():
    B, H, S, d, s = 4, 16, 8192, 64, 2
    io = 4 * B * H * S * d * s
    assert roofline_ref.attention_peak_bytes(B, H, S, d, s, "naive") == io + 2 * B * H * S * S * s
    assert roofline_ref.attention_peak_bytes(B, H, S, d, s, "chunked", 1024) == io + 2 * B * H * 1024 * S * s
    assert roofline_ref.attention_peak_bytes(B, H, S, d, s, "flash") == io + 4 * B * H * S
    assert roofline_ref.attention_peak_bytes(B, H, S, d, s, "naive") / 2**30 == pytest.approx(16.25)
    with pytest.raises(ValueError):
        roofline_ref.attention_peak_bytes(1, 1, 1, 1, 1, "magic")


@pytest.mark.gpu
@needs_gpu
def test_attention_peak_memory_on_gpu_is_above_the_estimate():
    B, H, S, d = 2, 4, 2048, 64
    q, k, v = (torch.randn(B, H, S, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    with torch.no_grad():
        _, naive = chunked_attention_ref.peak_memory(chunked_attention_ref.naive_attention, q, k, v, True)
        _, chunked = chunked_attention_ref.peak_memory(chunked_attention_ref.chunked_attention, q, k, v, True, 256)
        _, flash = chunked_attention_ref.peak_memory(chunked_attention_ref.sdpa, q, k, v, True)
    scores = B * H * S * S * 2
    assert naive >= 2 * scores  # at least two score-sized tensors alive at once
    assert chunked < naive / 2 and flash < naive / 10


@pytest.mark.gpu
@needs_gpu
def test_chunked_attention_on_gpu_bf16():
    q, k, v = (torch.randn(2, 4, 1000, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    out = chunked_attention_ref.chunked_attention(q, k, v, True, 128)
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True)
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)


# ---------------------------------------------------------------------------------------
# Timing

@pytest.mark.parametrize("values", [[3.0], [1.0, 2.0], [5, 1, 4, 2, 3], [9.5, 1.0, 7.0, 2.5, 8.0, 3.0]])
def test_quantile_is_numpy_percentile(values):
    for q in (0.25, 0.5, 0.75):
        assert timing_ref.quantile(values, q) == pytest.approx(np.percentile(values, 100 * q))
    s = timing_ref.summarize(values)
    assert s["median_ms"] == pytest.approx(np.median(values))
    assert s["iqr_ms"] == pytest.approx(np.percentile(values, 75) - np.percentile(values, 25))


def test_sleep_workload_blocking_has_its_scheduled_duration():
    with timing_ref.SleepWorkload([30, 10], "blocking", device="cpu") as work:
        r = timing_ref.time_fn(work, warmup=1, repeats=4, sync=work.sync)
        assert work.calls == 5
    assert 9.9 <= r["median_ms"] < 29 and len(r["times_ms"]) == 4


def test_fake_stream_needs_sync():
    """Without sync the timer measures the launch (about 0 ms), with sync the work."""
    with timing_ref.SleepWorkload([10], "async", device="cpu") as work:
        honest = timing_ref.time_fn(work, warmup=1, repeats=3, sync=work.sync)
        naive = timing_ref.naive_time_fn(work, repeats=3)
    assert 9.9 <= honest["median_ms"] < 29
    assert naive["median_ms"] < 5  # the launch alone; generous for a loaded CI machine


@pytest.mark.gpu
@needs_gpu
def test_cuda_sleep_timed_with_events_and_with_sync():
    with timing_ref.SleepWorkload([8], "async", device="cuda") as work:
        events = timing_ref.cuda_event_time_fn(work, warmup=2, repeats=5)
        synced = timing_ref.time_fn(work, warmup=2, repeats=5)  # default sync: torch.cuda.synchronize
        unsynced = timing_ref.naive_time_fn(work, repeats=5)
    assert 6 < events["median_ms"] < 11 and 6 < synced["median_ms"] < 12
    assert unsynced["median_ms"] < 1


def test_cuda_event_timer_refuses_without_cuda():
    if CUDA:
        pytest.skip("has a GPU")
    with pytest.raises(RuntimeError):
        timing_ref.cuda_event_time_fn(lambda: None)


# ---------------------------------------------------------------------------------------
# The report

def tiny_sizes() -> gpu_report.Sizes:
    s = gpu_report.Sizes.small()
    s.matmul = {"fp32": 64}
    s.copy_mib = 4
    s.attn, s.attn_seqs, s.attn_chunk = (1, 2, 16), (32, 64), 16
    s.amp_shape, s.softmax_shape = (32, 16), (64, 64)
    s.gpt = dict(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=16)
    s.gpt_batch, s.gpt_seq, s.repeats = 2, 16, 3
    return s


def test_report_sections_on_tiny_sizes():
    s = tiny_sizes()
    mm = gpu_report.measure_matmul(sizes=s)
    assert mm[0]["dtype"] == "fp32" and mm[0]["tflops"] > 0
    assert gpu_report.measure_copy(sizes=s)["gb_per_s"] > 0
    att = gpu_report.measure_attention(sizes=s)
    assert {r["method"] for r in att} == {"naive", "sdpa", "chunked"} and len(att) == 6
    assert all(r["max_abs_err_vs_naive"] < 1e-4 for r in att)
    amp = gpu_report.measure_autocast(sizes=s)
    assert amp[0]["max_rel_err"] < 1e-5 < amp[1]["max_rel_err"] < 0.05
    steps = gpu_report.measure_gpt_step(sizes=s, peak_flops=1e15 if CUDA else 1e12)
    assert len(steps) == 2 and all(r["tokens_per_s"] > 0 and 0 < r["mfu"] < 1 for r in steps)
    soft = gpu_report.measure_softmax(sizes=s, copy_gb_per_s=10.0)
    assert all(r["max_abs_err"] < (2e-2 if CUDA else 1e-5) for r in soft)  # bf16 on a GPU


def test_run_report_writes_json_and_markdown_and_survives_a_failing_section(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("broken on purpose")

    monkeypatch.setattr(gpu_report, "measure_matmul", boom)
    res = gpu_report.run_report(tmp_path, small=True, sections=["matmul", "copy"], log=lambda *a: None)
    assert res["matmul"]["error"].startswith("RuntimeError")
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["copy"]["gb_per_s"] > 0
    assert "Device copy bandwidth" in (tmp_path / "results.md").read_text()


def test_listed_peaks_lookup():
    assert gpu_report.listed_peaks("NVIDIA H100 80GB HBM3")["bf16"] == 989.4e12
    assert gpu_report.listed_peaks("NVIDIA H100 PCIe")["bandwidth"] == 2.0e12
    assert "bf16" not in gpu_report.listed_peaks("Tesla T4")
    assert gpu_report.listed_peaks("Some CPU") == {}


def test_triton_module_imports_without_triton():
    from llmcourse.reference import triton_softmax as TS

    x = torch.randn(4, 9)
    torch.testing.assert_close(TS.eager_softmax(x), torch.softmax(x, -1))
    if not TS.available():
        with pytest.raises(RuntimeError):
            TS.triton_softmax(x)


@pytest.mark.gpu
@needs_gpu
def test_triton_softmax_matches_torch():
    from llmcourse.reference import triton_softmax as TS

    if not TS.available():
        pytest.skip("SKIP (no Triton)")
    x = torch.randn(300, 1000, device="cuda", dtype=torch.bfloat16)
    torch.testing.assert_close(TS.triton_softmax(x).float(), torch.softmax(x.float(), -1),
                               rtol=1e-2, atol=1e-3)

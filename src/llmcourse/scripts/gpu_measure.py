"""Chapter 09's measurements on the current device (the notebook reuses them; the script
:mod:`llmcourse.scripts.gpu_report` runs them all and writes the report).

Each ``measure_*`` takes the course's timer (:func:`llmcourse.reference.timing.time_fn`, or any
timer with its signature) and a :class:`Sizes`; :func:`listed_peaks` gives the datasheet peaks.
"""

from __future__ import annotations

import math
import platform
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..reference import chunked_attention as CA
from ..reference import roofline as R
from ..reference.timing import time_fn

GiB = 2**30
DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16,
          "fp16": torch.float16}

# Vendor datasheet peaks, dense (no 2:4 sparsity): FLOP/s per dtype and memory bandwidth
# (byte/s). The first name contained in torch.cuda.get_device_name() wins.
LISTED_PEAKS = [
    ("H200", dict(fp32=67e12, tf32=494.7e12, bf16=989.4e12, fp16=989.4e12, bandwidth=4.8e12)),
    ("H100 PCIe", dict(fp32=51.2e12, tf32=378e12, bf16=756e12, fp16=756e12, bandwidth=2.0e12)),
    ("H100 NVL", dict(fp32=60e12, tf32=417.5e12, bf16=835e12, fp16=835e12, bandwidth=3.9e12)),
    ("H100", dict(fp32=67e12, tf32=494.7e12, bf16=989.4e12, fp16=989.4e12, bandwidth=3.35e12)),
    ("A100", dict(fp32=19.5e12, tf32=156e12, bf16=312e12, fp16=312e12, bandwidth=2.0e12)),
    ("L4", dict(fp32=30.3e12, tf32=60e12, bf16=121e12, fp16=121e12, bandwidth=0.3e12)),
    ("A10", dict(fp32=31.2e12, tf32=62.5e12, bf16=125e12, fp16=125e12, bandwidth=0.6e12)),
    ("T4", dict(fp32=8.1e12, fp16=65e12, bandwidth=0.32e12)),
    ("V100", dict(fp32=15.7e12, fp16=125e12, bandwidth=0.9e12)),
    ("RTX 4090", dict(fp32=82.6e12, tf32=82.6e12, bf16=165.2e12, fp16=165.2e12,
                      bandwidth=1.008e12)),
]


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def listed_peaks(name: str | None = None) -> dict:
    """The datasheet peaks of the current GPU (empty dict on a CPU or an unknown GPU)."""
    name = name if name is not None else (torch.cuda.get_device_name()
                                          if torch.cuda.is_available() else "")
    for key, peaks in LISTED_PEAKS:
        if key in name:
            return dict(peaks)
    return {}


@dataclass
class Sizes:
    """Problem sizes: :meth:`full` for a GPU, :meth:`small` for a CPU."""
    matmul: dict = field(default_factory=dict)       # dtype -> n (an n x n x n matmul)
    copy_mib: int = 1024
    attn: tuple = (4, 16, 64)                        # batch, heads, head_dim
    attn_seqs: tuple = (1024, 2048, 4096, 8192)
    attn_dtype: str = "bf16"
    attn_chunk: int = 1024
    amp_shape: tuple = (8192, 4096)                  # tokens, width of an MLP block
    fuse_shape: tuple = (8192, 8192)
    gpt: dict = field(default_factory=dict)          # GPTConfig fields
    gpt_batch: int = 16
    gpt_seq: int = 1024
    gpt_amp: str = "bf16"
    softmax_shape: tuple = (32768, 4096)
    repeats: int = 10

    @classmethod
    def full(cls, batch: int = 16) -> "Sizes":
        return cls(matmul={"fp32": 8192, "tf32": 8192, "bf16": 8192, "fp16": 8192},
                   gpt=dict(vocab_size=50304, block_size=1024, n_layer=12, n_head=12,
                            n_embd=768), gpt_batch=batch)

    @classmethod
    def small(cls, batch: int = 4) -> "Sizes":
        return cls(matmul={"fp32": 512, "bf16": 256}, copy_mib=64, attn=(1, 2, 64),
                   attn_seqs=(128, 256, 512, 1024), attn_dtype="fp32", attn_chunk=128,
                   amp_shape=(512, 256), fuse_shape=(1024, 1024),
                   gpt=dict(vocab_size=512, block_size=128, n_layer=2, n_head=4, n_embd=128),
                   gpt_batch=batch, gpt_seq=128, gpt_amp="none", softmax_shape=(1024, 1024),
                   repeats=5)


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _free() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------
# Ceilings: matmul peak per dtype, copy bandwidth

def measure_matmul(timer=time_fn, sizes: Sizes | None = None) -> list[dict]:
    """Achieved FLOP/s of an n x n x n matmul per dtype (tf32: float32 with TF32 allowed)."""
    sizes = sizes or Sizes.small()
    dev, peaks, rows = _device(), listed_peaks(), []
    for name, n in sizes.matmul.items():
        if name == "tf32" and dev == "cpu":
            continue
        old = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = name == "tf32"
        try:
            g = torch.Generator(device=dev).manual_seed(0)
            a = torch.randn(n, n, device=dev, generator=g).to(DTYPES[name])
            b = torch.randn(n, n, device=dev, generator=g).to(DTYPES[name])
            t = timer(lambda: a @ b, warmup=3, repeats=sizes.repeats)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = old
        flops, _ = R.matmul_cost(n, n, n, a.element_size())
        achieved = flops / (t["median_ms"] / 1e3)
        listed = peaks.get(name)
        rows.append({"dtype": name, "n": n, "median_ms": t["median_ms"], "iqr_ms": t["iqr_ms"],
                     "tflops": achieved / 1e12,
                     "listed_tflops": listed / 1e12 if listed else None,
                     "fraction_of_listed": achieved / listed if listed else None})
        del a, b
    _free()
    return rows


def measure_copy(timer=time_fn, sizes: Sizes | None = None) -> dict:
    """Device-to-device copy bandwidth: ``y.copy_(x)`` moves 2 x size bytes (read + write)."""
    sizes = sizes or Sizes.small()
    dev = _device()
    n = sizes.copy_mib * 2**20 // 4
    x = torch.ones(n, device=dev)
    y = torch.empty_like(x)
    t = timer(lambda: y.copy_(x), warmup=3, repeats=sizes.repeats)
    moved = 2 * x.numel() * x.element_size()
    listed = listed_peaks().get("bandwidth")
    bw = moved / (t["median_ms"] / 1e3)
    del x, y
    _free()
    return {"mib": sizes.copy_mib, "median_ms": t["median_ms"], "iqr_ms": t["iqr_ms"],
            "gb_per_s": bw / 1e9, "listed_gb_per_s": listed / 1e9 if listed else None,
            "fraction_of_listed": bw / listed if listed else None}


# ---------------------------------------------------------------------------------------
# Attention: naive vs SDPA vs chunked

def measure_attention(timer=time_fn, sizes: Sizes | None = None, chunked=None,
                      causal: bool = True) -> list[dict]:
    """Time and peak memory of naive, SDPA and chunked attention across sequence lengths.

    ``chunked`` (default: the reference) is called as ``chunked(q, k, v, causal, chunk)``.
    Peak memory is measured on a GPU; on a CPU it is :func:`..roofline.attention_peak_bytes`.
    """
    sizes = sizes or Sizes.small()
    chunked = chunked or CA.chunked_attention
    dev, dtype = _device(), DTYPES[sizes.attn_dtype]
    B, H, d = sizes.attn
    methods = {
        "naive": lambda q, k, v: CA.naive_attention(q, k, v, causal),
        "sdpa": lambda q, k, v: CA.sdpa(q, k, v, causal),
        "chunked": lambda q, k, v: chunked(q, k, v, causal, sizes.attn_chunk),
    }
    estimate = {"naive": "naive", "sdpa": "flash", "chunked": "chunked"}
    rows = []
    for S in sizes.attn_seqs:
        g = torch.Generator(device=dev).manual_seed(S)
        q, k, v = (torch.randn(B, H, S, d, device=dev, generator=g).to(dtype) for _ in range(3))
        flops, _ = R.attention_cost(B, H, S, d, q.element_size(), causal)
        ref = None
        for name, fn in methods.items():
            row = {"seq": S, "method": name}
            try:
                with torch.no_grad():
                    if dev == "cuda":
                        out, peak = CA.peak_memory(fn, q, k, v)
                        row["peak_gib"] = peak / GiB
                    else:
                        out = fn(q, k, v)
                        row["peak_gib_estimate"] = R.attention_peak_bytes(
                            B, H, S, d, q.element_size(), estimate[name], sizes.attn_chunk) / GiB
                    ref = out.float() if ref is None else ref
                    row["max_abs_err_vs_naive"] = float((out.float() - ref).abs().max())
                    del out
                    t = timer(lambda: fn(q, k, v), warmup=2, repeats=sizes.repeats)
                row.update(median_ms=t["median_ms"], iqr_ms=t["iqr_ms"],
                           tflops=flops / (t["median_ms"] / 1e3) / 1e12)
            except torch.cuda.OutOfMemoryError:
                row["error"] = "out of memory"
            rows.append(row)
            _free()
        del q, k, v
        _free()
    return rows


# ---------------------------------------------------------------------------------------
# Mixed precision and fusion

def measure_autocast(timer=time_fn, sizes: Sizes | None = None) -> list[dict]:
    """An MLP block (d -> 4d -> d, GELU) in float32, then under bf16 and fp16 autocast:
    time and max relative error against the same computation in float64."""
    sizes = sizes or Sizes.small()
    dev = _device()
    T, D = sizes.amp_shape
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(T, D, device=dev, generator=g)
    w1 = torch.randn(D, 4 * D, device=dev, generator=g) / math.sqrt(D)
    w2 = torch.randn(4 * D, D, device=dev, generator=g) / math.sqrt(4 * D)

    def mlp(x, w1, w2):
        return F.gelu(x @ w1) @ w2

    exact = mlp(x.double(), w1.double(), w2.double())
    flops = 2 * R.matmul_cost(T, 4 * D, D, 4)[0]
    rows = []
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        if dev == "cpu" and name == "fp16":
            continue

        def run():
            with torch.autocast(dev, dtype=dtype, enabled=dtype is not None):
                return mlp(x, w1, w2)

        out = run().double()
        err = float(((out - exact).abs().max() / exact.abs().max()))
        t = timer(run, warmup=3, repeats=sizes.repeats)
        rows.append({"precision": name if dtype is None else f"autocast {name}",
                     "median_ms": t["median_ms"], "tflops": flops / (t["median_ms"] / 1e3) / 1e12,
                     "max_rel_err": err})
    del x, w1, w2, exact
    _free()
    return rows


def fused_chain(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """gelu(x * a + b) * 0.5: four elementwise kernels in eager mode, one after fusion."""
    return F.gelu(x * a + b) * 0.5


def measure_compile(timer=time_fn, sizes: Sizes | None = None) -> list[dict]:
    """Eager vs ``torch.compile`` of :func:`fused_chain`; effective bandwidth counts the
    ideal traffic (read x, write y; a and b are rows broadcast over x)."""
    sizes = sizes or Sizes.small()
    dev = _device()
    M, N = sizes.fuse_shape
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(M, N, device=dev, generator=g)
    a, b = torch.randn(N, device=dev, generator=g), torch.randn(N, device=dev, generator=g)
    moved = 2 * x.numel() * x.element_size()
    rows = []
    t0 = time.perf_counter()
    compiled = torch.compile(fused_chain)
    compiled(x, a, b)
    compile_s = time.perf_counter() - t0
    err = float((compiled(x, a, b) - fused_chain(x, a, b)).abs().max())
    for name, fn in (("eager", fused_chain), ("torch.compile", compiled)):
        t = timer(lambda: fn(x, a, b), warmup=3, repeats=sizes.repeats)
        rows.append({"mode": name, "median_ms": t["median_ms"],
                     "gb_per_s_effective": moved / (t["median_ms"] / 1e3) / 1e9,
                     "compile_s": compile_s if name != "eager" else None,
                     "max_abs_diff": err if name != "eager" else None})
    del x
    _free()
    return rows


# ---------------------------------------------------------------------------------------
# A GPT training step: tokens/s and MFU

def fuse_gpt(model):
    """Swap the reference GPT's hand-written attention and LayerNorm for PyTorch's fused
    kernels (F.scaled_dot_product_attention, F.layer_norm), in place; same weights, same math."""
    from ..reference.gpt import CausalSelfAttention
    from ..reference.transformer import LayerNorm

    class FusedAttention(CausalSelfAttention):
        def forward(self, x, past=None):
            if past is not None:
                raise ValueError("fuse_gpt is for training steps (no KV cache)")
            B, T, C = x.shape
            q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
                       for t in self.c_attn(x).split(C, dim=-1))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.c_proj(y.transpose(1, 2).reshape(B, T, C)), (k, v)

    class FusedLayerNorm(LayerNorm):
        def forward(self, x):
            return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)

    for m in model.modules():
        if isinstance(m, CausalSelfAttention):
            m.__class__ = FusedAttention
        elif isinstance(m, LayerNorm):
            m.__class__ = FusedLayerNorm
    return model


def measure_gpt_step(timer=time_fn, sizes: Sizes | None = None, peak_flops: float | None = None,
                     variants: tuple = ("as written", "fused attention + LayerNorm")) -> list[dict]:
    """Tokens/s and MFU of one training step (forward, backward, AdamW) of the reference GPT,
    as written (its own attention and LayerNorm) and with PyTorch's fused kernels swapped in.

    MFU uses :func:`..roofline.gpt_flops_per_token`; ``peak_flops`` defaults to the listed
    bf16 peak of the GPU (or the fp32 one without autocast), if known."""
    from ..reference.gpt import GPT, GPTConfig

    sizes = sizes or Sizes.small()
    dev = _device()
    B, T = sizes.gpt_batch, sizes.gpt_seq
    amp = DTYPES.get(sizes.gpt_amp)
    if peak_flops is None:
        peak_flops = listed_peaks().get(sizes.gpt_amp if amp is not None else "fp32")
    rows = []
    for variant in variants:
        torch.manual_seed(0)
        model = GPT(GPTConfig(**sizes.gpt)).to(dev)
        if variant != "as written":
            fuse_gpt(model)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4,
                                **({"fused": True} if dev == "cuda" else {}))
        g = torch.Generator(device=dev).manual_seed(0)
        idx = torch.randint(0, sizes.gpt["vocab_size"], (B, T + 1), device=dev, generator=g)
        x, y = idx[:, :-1], idx[:, 1:]

        def step():
            with torch.autocast(dev, dtype=amp or torch.float32, enabled=amp is not None):
                logits = model(x)
                loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        if dev == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t = timer(step, warmup=3, repeats=sizes.repeats)
        tokens_per_s = B * T / (t["median_ms"] / 1e3)
        fpt = R.gpt_flops_per_token(model, T)
        row = {"model": variant, "batch": B, "seq": T, "precision": sizes.gpt_amp,
               "params": R.gpt_matmul_params(model), "median_ms": t["median_ms"],
               "iqr_ms": t["iqr_ms"], "tokens_per_s": tokens_per_s, "flops_per_token": fpt,
               "achieved_tflops": tokens_per_s * fpt / 1e12,
               "peak_tflops": peak_flops / 1e12 if peak_flops else None,
               "mfu": tokens_per_s * fpt / peak_flops if peak_flops else None}
        if dev == "cuda":
            row["peak_memory_gib"] = torch.cuda.max_memory_allocated() / GiB
        rows.append(row)
        del model, opt, x, y, idx
        _free()
    return rows


# ---------------------------------------------------------------------------------------
# Fused softmax (Triton, GPU only) vs the copy bandwidth

def measure_softmax(timer=time_fn, sizes: Sizes | None = None, kernel=None,
                    copy_gb_per_s: float | None = None) -> list[dict]:
    """Effective bandwidth (2 rows cols s bytes / time) of eager, torch.softmax and a fused
    kernel (default: the reference Triton one when available) in bf16 on a GPU, float32 on
    a CPU. ``fraction_of_copy`` compares with the measured copy bandwidth if given."""
    from ..reference import triton_softmax as TS

    sizes = sizes or Sizes.small()
    dev = _device()
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    rows_, cols = sizes.softmax_shape
    x = torch.randn(rows_, cols, device=dev, generator=torch.Generator(device=dev).manual_seed(0)
                    ).to(dtype)
    moved = 2 * x.numel() * x.element_size()
    fns = {"eager (5 ops)": TS.eager_softmax, "torch.softmax": lambda t: torch.softmax(t, -1)}
    if kernel is not None:
        fns["fused kernel"] = kernel
    elif TS.available():
        fns["triton fused"] = TS.triton_softmax
    expected = torch.softmax(x.float(), -1)
    rows = []
    for name, fn in fns.items():
        err = float((fn(x).float() - expected).abs().max())
        t = timer(lambda: fn(x), warmup=3, repeats=sizes.repeats)
        bw = moved / (t["median_ms"] / 1e3)
        rows.append({"kernel": name, "median_ms": t["median_ms"], "gb_per_s": bw / 1e9,
                     "fraction_of_copy": bw / (copy_gb_per_s * 1e9) if copy_gb_per_s else None,
                     "max_abs_err": err})
    del x, expected
    _free()
    return rows

"""Chapter 09: FLOP and byte counts, arithmetic intensity, the roofline model and MFU.

Conventions (the course's, stated once and checked exactly)
-----------------------------------------------------------
* A multiply-add counts as **2 FLOPs** (浮点运算次数). ``s`` is the size of one element in
  bytes (4 for float32, 2 for bfloat16/float16).
* **Bytes** are the minimum traffic to and from device memory (显存) of an ideal kernel:
  every input read once, every output written once; caches and re-reads are ignored.
* ``matmul_cost(m, n, k, s)``: ``(m, k) @ (k, n)``: FLOPs ``2 m n k``; bytes
  ``(m k + k n + m n) s`` (read A and B, write C).
* ``softmax_cost(rows, cols, s)``: a softmax along each row. FLOPs ``5`` per element (max,
  subtract, exp, sum, divide; the exp counted as one FLOP); bytes ``2 rows cols s`` (read x,
  write y).
* ``attention_cost(B, H, S, d, s, causal)``: self-attention, ``S`` queries and keys per head.
  FLOPs of the two matmuls only: ``4 B H S^2 d`` (``Q K^T`` and ``P V``, each ``2 S^2 d``
  per head); the softmax's ``O(S^2)`` FLOPs are left out. ``causal=True`` halves it
  (``2 B H S^2 d``: half the score matrix is masked and a causal kernel skips it). Bytes of
  an ideal fused kernel (FlashAttention): read Q, K, V and write O, ``4 B H S d s``; the
  ``S x S`` score matrix never touches memory.
* **Arithmetic intensity** (算术强度) ``I = FLOPs / bytes``. With a peak compute rate ``P``
  (FLOP/s) and a memory bandwidth ``W`` (byte/s) the **roofline** (屋顶线模型) says the
  best attainable rate is ``min(P, I W)``. The ridge point is ``I* = P / W``; an operation
  with ``I < I*`` is **memory-bound** (访存受限), one with ``I >= I*`` **compute-bound**
  (计算受限) (a tie counts as compute-bound).
* **Model FLOPs per token** of a training step (forward + backward) of a decoder-only
  Transformer (PaLM, appendix B; nanoGPT's ``estimate_mfu``): ``6 N + 12 L T d``, with ``N``
  the parameters that multiply activations (all of them, the tied token embedding counted
  once because it is the output layer's matmul, minus the position embedding, which is only
  looked up), ``L`` layers, sequence length ``T`` of the step and width ``d``. The ``6 N``
  covers the weight matmuls (2 forward, 4 backward per parameter), ``12 L T d`` the
  attention score and value matmuls. No causal halving (PaLM's convention).
  **MFU** (模型算力利用率) = tokens/s x FLOPs per token / peak FLOP/s.
"""

from __future__ import annotations

DTYPE_BYTES = {"float64": 8, "float32": 4, "tf32": 4, "bfloat16": 2, "float16": 2,
               "float8": 1, "int8": 1}


def matmul_cost(m: int, n: int, k: int, dtype_bytes: int) -> tuple[int, int]:
    """(FLOPs, bytes) of ``(m, k) @ (k, n) -> (m, n)``."""
    return 2 * m * n * k, (m * k + k * n + m * n) * dtype_bytes


def softmax_cost(rows: int, cols: int, dtype_bytes: int) -> tuple[int, int]:
    """(FLOPs, bytes) of a softmax along each of ``rows`` rows of length ``cols``."""
    return 5 * rows * cols, 2 * rows * cols * dtype_bytes


def attention_cost(batch: int, heads: int, seq: int, head_dim: int, dtype_bytes: int,
                   causal: bool = False) -> tuple[int, int]:
    """(FLOPs, bytes) of fused self-attention on (batch, heads, seq, head_dim) inputs."""
    flops = 4 * batch * heads * seq * seq * head_dim
    if causal:
        flops //= 2
    return flops, 4 * batch * heads * seq * head_dim * dtype_bytes


def roofline(flops: float, bytes_moved: float, peak_flops: float, peak_bandwidth: float
             ) -> tuple[float, float, bool]:
    """(arithmetic intensity in FLOP/byte, attainable FLOP/s, memory_bound)."""
    intensity = flops / bytes_moved
    attainable = min(peak_flops, intensity * peak_bandwidth)
    return intensity, attainable, intensity < peak_flops / peak_bandwidth


def roofline_time(flops: float, bytes_moved: float, peak_flops: float, peak_bandwidth: float
                  ) -> float:
    """The roofline's lower bound on the run time in seconds: max(FLOPs/P, bytes/W)."""
    return max(flops / peak_flops, bytes_moved / peak_bandwidth)


def flops_per_token(n_params: int, n_layer: int, seq_len: int, d_model: int) -> int:
    """Training FLOPs per token, ``6 N + 12 L T d`` (see the module docstring)."""
    return 6 * n_params + 12 * n_layer * seq_len * d_model


def mfu(tokens_per_s: float, n_params: int, n_layer: int, seq_len: int, d_model: int,
        peak_flops: float) -> tuple[int, float]:
    """(FLOPs per token, model FLOPs utilisation as a fraction in [0, 1] for a sane input)."""
    fpt = flops_per_token(n_params, n_layer, seq_len, d_model)
    return fpt, tokens_per_s * fpt / peak_flops


def gpt_matmul_params(model) -> int:
    """N for :func:`flops_per_token` of a :class:`llmcourse.reference.gpt.GPT`: every
    parameter (``parameters()`` lists the tied weight once) minus the position embedding."""
    n = sum(p.numel() for p in model.parameters())
    return n - model.transformer.wpe.weight.numel()


def gpt_flops_per_token(model, seq_len: int) -> int:
    """``6 N + 12 L T d`` for a :class:`llmcourse.reference.gpt.GPT` trained on length T."""
    cfg = model.config
    return flops_per_token(gpt_matmul_params(model), cfg.n_layer, seq_len, cfg.n_embd)


# ---------------------------------------------------------------------------------------
# Peak memory of attention, analytic (the CPU stand-in for torch.cuda.max_memory_allocated)

def attention_peak_bytes(batch: int, heads: int, seq: int, head_dim: int, dtype_bytes: int,
                         method: str = "naive", chunk: int | None = None) -> int:
    """Estimated memory live at the peak of one attention forward (no autograd), in bytes.

    All methods hold Q, K, V and the output: ``4 B H S d s``. On top of that:
    ``naive`` holds two ``S x S`` score-sized tensors at once (the scores and the softmax
    output), ``2 B H S^2 s``; ``chunked`` (queries in blocks of ``chunk``) holds two
    ``chunk x S`` blocks, ``2 B H c S s``; ``flash`` only a row statistic per query
    (float32 log-sum-exp), ``4 B H S``. A lower bound: real kernels add workspace and the
    naive version may keep more temporaries (a mask, a scaled copy).
    """
    base = 4 * batch * heads * seq * head_dim * dtype_bytes
    if method == "naive":
        return base + 2 * batch * heads * seq * seq * dtype_bytes
    if method == "chunked":
        c = min(seq, chunk or seq)
        return base + 2 * batch * heads * c * seq * dtype_bytes
    if method == "flash":
        return base + 4 * batch * heads * seq
    raise ValueError(f"unknown method {method!r}")


def plot_roofline(ax, peak_flops: float, peak_bandwidth: float, points: dict | None = None,
                  label: str = "", unit: float = 1e12) -> None:
    """Draw a roofline on a matplotlib axis (log-log): ``points`` maps a name to
    (intensity, achieved FLOP/s). Rates are divided by ``unit`` (TFLOP/s by default)."""
    import numpy as np

    ridge = peak_flops / peak_bandwidth
    lo = min([ridge / 100] + [p[0] / 3 for p in (points or {}).values()])
    hi = max([ridge * 100] + [p[0] * 3 for p in (points or {}).values()])
    x = np.logspace(np.log10(lo), np.log10(hi), 200)
    ax.loglog(x, np.minimum(peak_flops, x * peak_bandwidth) / unit, lw=2,
              label=label or f"roofline (ridge at {ridge:.3g} FLOP/B)")
    ax.axvline(ridge, ls=":", c="grey")
    for name, (i, achieved) in (points or {}).items():
        ax.plot(i, achieved / unit, "o")
        ax.annotate(name, (i, achieved / unit), textcoords="offset points", xytext=(4, 4),
                    fontsize=8)
    ax.set_xlabel("arithmetic intensity (FLOP / byte)")
    ax.set_ylabel("FLOP/s" if unit == 1 else f"{unit:.0e} FLOP/s".replace("1e+12", "T")
                  .replace("1e+09", "G"))
    ax.grid(True, which="both", alpha=0.3)

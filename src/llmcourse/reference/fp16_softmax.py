"""Chapter 09's challenge, the instructor's solution: softmax in float16 arithmetic only.

``softmax_fp16(x)`` takes float16 logits ``(rows, n)`` and returns float16 probabilities
``(rows, n)`` without any op in a wider dtype and without torch's reductions (``sum``,
``softmax``, ``matmul``: on the CPU they accumulate in float32 behind the dtype's back):

1. shift by the row maximum (``amax`` is exact), so ``exp`` never overflows float16;
2. add the ``n`` terms by a **pairwise** (tree) sum, halving the row at each level: the
   rounding error grows like ``log2 n`` instead of ``n``;
3. **compensate** each addition (Knuth's TwoSum: ``s = a + b`` and its exact rounding error
   ``(a - (s - b')) + (b - b')`` with ``b' = s - a``), and carry the errors up the tree;
4. divide once by the compensated sum.

Each step is a float16 operation; the result is within a few float16 roundings of the exact
softmax (checked against the float64 softmax by ``tests/test_challenges.py``).
"""

from __future__ import annotations

import torch


def two_sum(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(s, err)`` with ``s = fl(a + b)`` and ``a + b = s + err`` (Knuth's TwoSum; exact
    for float16 operands barring overflow)."""
    s = a + b
    b_virtual = s - a
    return s, (a - (s - b_virtual)) + (b - b_virtual)


def pairwise_sum(e: torch.Tensor, compensated: bool = True) -> torch.Tensor:
    """Sum of ``e (rows, n)`` along the last axis by a tree of float16 additions -> ``(rows, 1)``.

    With ``compensated`` each level's rounding errors are kept and summed alongside."""
    s, c = e, torch.zeros_like(e)
    while s.shape[-1] > 1:
        if s.shape[-1] % 2:  # odd length: pad with an exact zero
            s = torch.cat([s, torch.zeros_like(s[..., :1])], dim=-1)
            c = torch.cat([c, torch.zeros_like(c[..., :1])], dim=-1)
        a, b = s[..., 0::2], s[..., 1::2]
        if compensated:
            s, err = two_sum(a, b)
            c = (c[..., 0::2] + c[..., 1::2]) + err
        else:
            s = a + b
    return s + c if compensated else s


def softmax_fp16(x: torch.Tensor, compensated: bool = True) -> torch.Tensor:
    """Softmax over the last axis of float16 ``x (rows, n)`` in float16 arithmetic -> float16."""
    e = torch.exp(x - x.amax(dim=-1, keepdim=True))
    return e / pairwise_sum(e, compensated)

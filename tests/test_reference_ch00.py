"""Chapter 00 references against PyTorch's built-ins and closed forms."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from llmcourse.reference import cross_entropy, log_softmax, softmax

shapes = st.lists(st.integers(1, 5), min_size=1, max_size=4)


@settings(max_examples=40, deadline=None)
@given(shape=shapes, scale=st.sampled_from([1.0, 30.0, 1e3, 1e4]), seed=st.integers(0, 2**16),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_softmax_and_log_softmax_match_torch(shape, scale, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)
    dim = seed % len(shape) - len(shape) * (seed % 2)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(softmax(x, dim), torch.softmax(x, dim), **tol)
    torch.testing.assert_close(log_softmax(x, dim), torch.log_softmax(x, dim), **tol)


def test_closed_forms():
    # softmax([0, log 2]) = [1/3, 2/3]; log_softmax of constant rows = -log n
    torch.testing.assert_close(softmax(torch.tensor([0.0, math.log(2.0)], dtype=torch.float64)),
                               torch.tensor([1 / 3, 2 / 3], dtype=torch.float64))
    torch.testing.assert_close(log_softmax(torch.full((2, 5), 1000.0)), torch.full((2, 5), -math.log(5)))
    # huge and tiny logits stay finite; -inf gets probability 0
    x = torch.tensor([[1000.0, 0.0, -1000.0], [0.0, -float("inf"), 0.0]])
    assert torch.isfinite(log_softmax(x)[0]).all()
    assert softmax(x)[1, 1] == 0 and softmax(x)[1, 0] == 0.5
    assert log_softmax(x)[0, 2].item() == pytest.approx(-2000.0)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 6), c=st.integers(2, 9), lead=st.integers(1, 3), seed=st.integers(0, 2**16),
       scale=st.sampled_from([1.0, 50.0, 1e3]))
def test_cross_entropy_matches_torch(n, c, lead, seed, scale):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(lead, n, c, generator=g, dtype=torch.float64) * scale
    targets = torch.randint(0, c, (lead, n), generator=g)
    expected = F.cross_entropy(logits.reshape(-1, c), targets.reshape(-1))
    torch.testing.assert_close(cross_entropy(logits, targets), expected)


def test_cross_entropy_uniform_is_log_c():
    assert cross_entropy(torch.zeros(4, 7), torch.tensor([0, 1, 2, 6])).item() == pytest.approx(math.log(7))

"""Chapter 02 references against independent authorities: PyTorch's own attention and
Transformer layers, Hugging Face GPT-2 / LLaMA with random weights (built from a config,
nothing downloaded), closed forms, and the source's worked example."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from llmcourse.reference import attention as attention_ref
from llmcourse.reference import gpt as gpt_ref
from llmcourse.reference import transformer as transformer_ref

# The tensors here are tiny: with two pytest-xdist workers on two cores, one intra-op thread
# per process is ~10x faster than two threads each spinning for the other's core.
torch.set_num_threads(1)

F64 = torch.float64
FAST = settings(max_examples=25, deadline=None, derandomize=True)


def randn(g, *shape, dtype=F64, scale=1.0):
    return torch.randn(*shape, generator=g, dtype=F64).mul(scale).to(dtype)


def random_mask(g, *shape):
    """A random boolean mask (..., T_q, T_k) in which every query may attend to >= 1 key."""
    m = torch.rand(*shape, generator=g) < 0.6
    keep = torch.randint(0, shape[-1], shape[:-1], generator=g)
    return m | F.one_hot(keep, shape[-1]).bool()


# ---------------------------------------------------------------------------------------
# Scaled dot-product attention and masks

@FAST
@given(lead=st.lists(st.integers(1, 3), max_size=2), tq=st.integers(1, 6), tk=st.integers(1, 6),
       dk=st.integers(1, 8), dv=st.integers(1, 5), kind=st.sampled_from(["none", "causal", "random"]),
       seed=st.integers(0, 2**16))
def test_sdpa_matches_torch(lead, tq, tk, dk, dv, kind, seed):
    g = torch.Generator().manual_seed(seed)
    q, k, v = randn(g, *lead, tq, dk), randn(g, *lead, tk, dk), randn(g, *lead, tk, dv)
    mask = {"none": None,
            "causal": torch.ones(tq, tk, dtype=torch.bool).tril(tk - tq),  # last query sees all
            "random": random_mask(g, *lead, tq, tk)}[kind]
    if kind == "causal" and tk < tq:
        mask = None
    ours = attention_ref.scaled_dot_product_attention(q, k, v, mask)
    theirs = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


def test_sdpa_float32_and_broadcast_leading_dims():
    g = torch.Generator().manual_seed(0)
    q = randn(g, 2, 3, 5, 8, dtype=torch.float32)
    k, v = randn(g, 1, 3, 7, 8, dtype=torch.float32), randn(g, 1, 3, 7, 4, dtype=torch.float32)
    mask = attention_ref.padding_mask(torch.tensor([7, 3]), 7)[:, None, None, :]  # (B, 1, 1, T_k)
    ours = attention_ref.scaled_dot_product_attention(q, k, v, mask)
    assert ours.shape == (2, 3, 5, 4) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, F.scaled_dot_product_attention(q, k, v, attn_mask=mask),
                               rtol=1e-5, atol=1e-6)


def test_attention_weights_are_distributions_and_respect_the_mask():
    g = torch.Generator().manual_seed(1)
    q, k = randn(g, 2, 5, 4), randn(g, 2, 5, 4)
    mask = attention_ref.causal_mask(5) & attention_ref.padding_mask(torch.tensor([5, 3]), 5)[:, None, :]
    w = attention_ref.attention_weights(q, k, mask)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 5, dtype=F64))
    assert (w[~mask.expand_as(w)] == 0).all()
    # masking before the softmax renormalises: the same as dropping the masked keys
    torch.testing.assert_close(attention_ref.attention_weights(q[1, :3], k[1, :3], attention_ref.causal_mask(3)),
                               w[1, :3, :3])


def test_the_sources_worked_example_corrected():
    """X (3x4), W_Q = W_K = W_V = the first three unit columns of a 4x3 matrix.

    The source prints [0.21, 0.24, 0.27] for every output row. Impossible: every output row
    is a convex combination of the rows of V = X[:, :3], and every row of V has the form
    (s, s + 0.1, s + 0.2) with s in [0.1, 0.9], so every output row has that form too
    (consecutive entries differ by exactly 0.1; 0.21 -> 0.24 differs by 0.03). The rows also
    differ from each other because the queries differ."""
    X = torch.tensor([[.1, .2, .3, .4], [.5, .6, .7, .8], [.9, 1.0, 1.1, 1.2]], dtype=F64)
    W = torch.eye(4, 3, dtype=F64)
    Q, K, V = X @ W, X @ W, X @ W
    out = attention_ref.scaled_dot_product_attention(Q, K, V)
    expected = torch.tensor([[0.53683267, 0.63683267, 0.73683267],
                             [0.60777379, 0.70777379, 0.80777379],
                             [0.67135919, 0.77135919, 0.87135919]], dtype=F64)
    torch.testing.assert_close(out, expected, rtol=0, atol=5e-9)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(Q, K, V))
    # convex combination: inside V's per-column range, weights (rows of attention_ref) sum to one
    assert ((out >= V.min(0).values) & (out <= V.max(0).values)).all()
    w = attention_ref.attention_weights(Q, K)
    torch.testing.assert_close(w @ V, out)
    assert (w > 0).all() and torch.allclose(w.sum(-1), torch.ones(3, dtype=F64))
    # the structure argument: every output row is V[0] + t * (1, 1, 1) with t in [0, 0.8]
    t = out - V[0]
    torch.testing.assert_close(t, t[:, :1].expand(3, 3))
    assert ((t[:, 0] >= 0) & (t[:, 0] <= 0.8)).all()
    printed = torch.tensor([0.21, 0.24, 0.27], dtype=F64)
    assert not torch.allclose(out, printed.expand(3, 3), atol=1e-2)
    diffs = printed.diff()
    assert not torch.allclose(diffs, torch.full_like(diffs, 0.1))  # printed row is not reachable


def test_causal_and_padding_masks():
    for T in (1, 2, 5):
        m = attention_ref.causal_mask(T)
        assert m.dtype == torch.bool and m.shape == (T, T)
        assert torch.equal(m, torch.tril(torch.ones(T, T)).bool())
        # PyTorch's additive mask: -inf where attention is NOT allowed
        assert torch.equal(m, ~nn.Transformer.generate_square_subsequent_mask(T).isinf())
    p = attention_ref.padding_mask(torch.tensor([3, 1, 4]), 4)
    assert torch.equal(p, torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]]).bool())


# ---------------------------------------------------------------------------------------
# Multi-head attention

def torch_mha(d, h, g, dtype=F64):
    mha = nn.MultiheadAttention(d, h, dropout=0.0, batch_first=True, dtype=dtype).eval()
    with torch.no_grad():
        for p in mha.parameters():
            p.copy_(randn(g, *p.shape, dtype=dtype, scale=0.5))
    return mha, attention_ref.load_mha_from_torch(attention_ref.MultiHeadAttention(d, h).to(dtype), mha).eval()


@FAST
@given(b=st.integers(1, 3), t=st.integers(1, 6), s=st.integers(1, 6), h=st.sampled_from([1, 2, 4]),
       dh=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_mha_matches_torch_cross_attention_with_key_padding(b, t, s, h, dh, seed):
    g = torch.Generator().manual_seed(seed)
    mha, ours = torch_mha(h * dh, h, g)
    x, mem = randn(g, b, t, h * dh), randn(g, b, s, h * dh)
    lengths = torch.randint(1, s + 1, (b,), generator=g)
    keep = attention_ref.padding_mask(lengths, s)  # True = real token
    with torch.no_grad():
        theirs, _ = mha(x, mem, mem, key_padding_mask=~keep, need_weights=False)
        got = ours(x, mem, keep[:, None, :])
    torch.testing.assert_close(got, theirs, rtol=1e-10, atol=1e-12)


def test_mha_matches_torch_self_attention_causal_float32_and_unbatched():
    g = torch.Generator().manual_seed(3)
    mha, ours = torch_mha(12, 3, g, dtype=torch.float32)
    x = randn(g, 2, 6, 12, dtype=torch.float32)
    with torch.no_grad():
        theirs, _ = mha(x, x, x, attn_mask=~attention_ref.causal_mask(6), need_weights=False)
        torch.testing.assert_close(ours(x, mask=attention_ref.causal_mask(6)), theirs, rtol=1e-5, atol=1e-6)
        # unbatched (T, d) input
        theirs1, _ = mha(x[0], x[0], x[0], need_weights=False)
        torch.testing.assert_close(ours(x[0]), theirs1, rtol=1e-5, atol=1e-6)


def test_split_and_merge_heads_are_inverse_and_split_the_feature_axis():
    x = torch.arange(2 * 3 * 8, dtype=F64).reshape(2, 3, 8)
    s = attention_ref.split_heads(x, 4)
    assert s.shape == (2, 4, 3, 2)
    assert torch.equal(s[1, 2, 0], x[1, 0, 4:6])  # head 2 of token 0 owns features 4:6
    assert torch.equal(attention_ref.merge_heads(s), x)


# ---------------------------------------------------------------------------------------
# Positional encodings

def test_sinusoidal_closed_form():
    T, d = 50, 16
    pe = attention_ref.sinusoidal_positions(T, d, dtype=F64)
    for p in (0, 1, 7, 49):
        for i in range(d // 2):
            angle = p / 10000 ** (2 * i / d)
            assert math.isclose(pe[p, 2 * i].item(), math.sin(angle), abs_tol=1e-12)
            assert math.isclose(pe[p, 2 * i + 1].item(), math.cos(angle), abs_tol=1e-12)
    assert torch.equal(pe[0], torch.tensor([0.0, 1.0] * (d // 2), dtype=F64))
    assert attention_ref.sinusoidal_positions(T, d).dtype == torch.float32
    # PE[p + k] = PE[p] @ M_k, one fixed 2x2 rotation per frequency (the paper's motivation)
    k = 5
    M = torch.zeros(d, d, dtype=F64)
    for i in range(d // 2):
        b = k / 10000 ** (2 * i / d)
        M[2 * i:2 * i + 2, 2 * i:2 * i + 2] = torch.tensor([[math.cos(b), -math.sin(b)],
                                                            [math.sin(b), math.cos(b)]], dtype=F64)
    torch.testing.assert_close(pe[:T - k] @ M, pe[k:], atol=1e-12, rtol=0)


def test_learned_positions_is_a_lookup():
    lp = attention_ref.LearnedPositions(10, 4)
    pos = torch.tensor([[0, 3], [9, 9]])
    assert torch.equal(lp(pos), lp.weight[pos])
    assert lp.weight.requires_grad


def rope_by_complex_numbers(x, positions, base=10000.0):
    """Independent RoPE: pair (x_i, x_{i+d/2}) is the complex number z_i; multiply by e^{i a}."""
    d = x.shape[-1]
    z = torch.complex(x[..., : d // 2].to(F64), x[..., d // 2:].to(F64))
    theta = base ** (-2 * torch.arange(d // 2, dtype=F64) / d)
    z = z * torch.polar(torch.ones_like(theta), positions.to(F64)[..., None] * theta)
    return torch.cat([z.real, z.imag], dim=-1).to(x.dtype)


@FAST
@given(lead=st.lists(st.integers(1, 3), max_size=2), t=st.integers(1, 7), half=st.integers(1, 6),
       offset=st.integers(0, 100), base=st.sampled_from([10000.0, 100.0]), seed=st.integers(0, 2**16))
def test_rope_closed_form(lead, t, half, offset, base, seed):
    g = torch.Generator().manual_seed(seed)
    x = randn(g, *lead, t, 2 * half)
    pos = torch.arange(offset, offset + t)
    torch.testing.assert_close(attention_ref.apply_rope(x, pos, base), rope_by_complex_numbers(x, pos, base),
                               rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(attention_ref.apply_rope(x, base=base), rope_by_complex_numbers(x, pos - offset, base))
    torch.testing.assert_close(attention_ref.apply_rope(x, pos, base).norm(dim=-1), x.norm(dim=-1))


def test_rope_d2_is_a_rotation_by_the_position():
    x = torch.tensor([[1.0, 0.0]] * 4, dtype=F64)
    out = attention_ref.apply_rope(x, torch.tensor([0, 1, 2, 3]))
    m = torch.arange(4, dtype=F64)
    torch.testing.assert_close(out, torch.stack([m.cos(), m.sin()], dim=-1))


@FAST
@given(half=st.integers(1, 8), m=st.integers(0, 200), n=st.integers(0, 200), shift=st.integers(0, 500),
       seed=st.integers(0, 2**16))
def test_rope_scores_depend_only_on_relative_position(half, m, n, shift, seed):
    g = torch.Generator().manual_seed(seed)
    q, k = randn(g, 1, 2 * half), randn(g, 1, 2 * half)

    def score(a, b):
        return (attention_ref.apply_rope(q, torch.tensor([a])) * attention_ref.apply_rope(k, torch.tensor([b]))).sum()

    torch.testing.assert_close(score(m, n), score(m + shift, n + shift), rtol=1e-9, atol=1e-9)
    if m >= n:
        torch.testing.assert_close(score(m, n), score(m - n, 0), rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------------------------------
# LayerNorm, FFN, encoder and decoder layers

@FAST
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=3), d=st.integers(1, 9),
       eps=st.sampled_from([1e-5, 1e-2, 1.0]), scale=st.sampled_from([1e-3, 1.0, 1e3]),
       seed=st.integers(0, 2**16))
def test_layer_norm_matches_torch(shape, d, eps, scale, seed):
    g = torch.Generator().manual_seed(seed)
    x, w, b = randn(g, *shape, d, scale=scale), randn(g, d), randn(g, d)
    torch.testing.assert_close(transformer_ref.layer_norm(x, w, b, eps), F.layer_norm(x, (d,), w, b, eps),
                               rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(transformer_ref.layer_norm(x, eps=eps), F.layer_norm(x, (d,), eps=eps),
                               rtol=1e-9, atol=1e-9)


def test_layer_norm_module_matches_nn_layernorm():
    torch.manual_seed(0)
    ours, theirs = transformer_ref.LayerNorm(6), nn.LayerNorm(6)
    with torch.no_grad():
        theirs.weight.normal_(), theirs.bias.normal_()
        ours.weight.copy_(theirs.weight), ours.bias.copy_(theirs.bias)
    x = torch.randn(3, 4, 6)
    torch.testing.assert_close(ours(x), theirs(x))


@pytest.mark.parametrize("activation,module", [("relu", nn.ReLU()), ("gelu", nn.GELU()),
                                               ("gelu_tanh", nn.GELU(approximate="tanh"))])
def test_feed_forward_matches_linear_act_linear(activation, module):
    torch.manual_seed(1)
    seq = nn.Sequential(nn.Linear(8, 20), module, nn.Linear(20, 8)).double()
    ffn = transformer_ref.FeedForward(8, 20, activation).double()
    ffn.load_state_dict({"linear1.weight": seq[0].weight, "linear1.bias": seq[0].bias,
                         "linear2.weight": seq[2].weight, "linear2.bias": seq[2].bias})
    x = torch.randn(2, 5, 8, dtype=F64)
    torch.testing.assert_close(ffn(x), seq(x), rtol=1e-12, atol=1e-12)


def randomize(module, g, scale=0.3):
    """Random weights everywhere; LayerNorm weights near 1 and biases near 0 (as trained
    models have them), so the outputs depend on the input rather than on ln biases."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(randn(g, *p.shape, dtype=p.dtype, scale=scale))
        for m in module.modules():
            if isinstance(m, (nn.LayerNorm, transformer_ref.LayerNorm)):
                m.weight.add_(1.0), m.bias.mul_(0.1)
    return module


@pytest.mark.parametrize("dtype,tol", [(F64, 1e-10), (torch.float32, 2e-5)])
def test_encoder_layer_matches_torch_post_ln(dtype, tol):
    g = torch.Generator().manual_seed(4)
    d, h, ff, B, T = 16, 4, 24, 3, 7
    theirs = nn.TransformerEncoderLayer(d, h, ff, dropout=0.0, activation="relu", batch_first=True,
                                        norm_first=False, dtype=dtype)
    randomize(theirs, g).eval()
    ours = transformer_ref.load_from_torch(transformer_ref.EncoderLayer(d, h, ff).to(dtype), theirs).eval()
    x = randn(g, B, T, d, dtype=dtype)
    keep = attention_ref.padding_mask(torch.tensor([7, 4, 1]), T)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=tol, atol=tol)
        # causal + key padding (train() disables PyTorch's fused inference fast path)
        want = theirs.train()(x, src_mask=~attention_ref.causal_mask(T), src_key_padding_mask=~keep)
        got = ours(x, attention_ref.causal_mask(T) & keep[:, None, :])
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype,tol", [(F64, 1e-10), (torch.float32, 2e-5)])
def test_decoder_layer_matches_torch_post_ln(dtype, tol):
    g = torch.Generator().manual_seed(5)
    d, h, ff, B, T, S = 16, 2, 32, 2, 5, 6
    theirs = nn.TransformerDecoderLayer(d, h, ff, dropout=0.0, activation="relu", batch_first=True,
                                        norm_first=False, dtype=dtype)
    randomize(theirs, g).eval()
    ours = transformer_ref.load_from_torch(transformer_ref.DecoderLayer(d, h, ff).to(dtype), theirs).eval()
    x, mem = randn(g, B, T, d, dtype=dtype), randn(g, B, S, d, dtype=dtype)
    mem_keep = attention_ref.padding_mask(torch.tensor([6, 2]), S)
    with torch.no_grad():
        want = theirs(x, mem, tgt_mask=~attention_ref.causal_mask(T), memory_key_padding_mask=~mem_keep)
        got = ours(x, mem, attention_ref.causal_mask(T), mem_keep[:, None, :])
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)


def test_post_ln_is_not_pre_ln():
    """Guard: the two PyTorch variants really differ on these weights, so the test above
    tells post-LN from pre-LN."""
    g = torch.Generator().manual_seed(6)
    post = randomize(nn.TransformerEncoderLayer(8, 2, 16, 0.0, batch_first=True, dtype=F64), g)
    pre = nn.TransformerEncoderLayer(8, 2, 16, 0.0, batch_first=True, norm_first=True, dtype=F64)
    pre.load_state_dict(post.state_dict())
    x = randn(g, 1, 4, 8)
    assert not torch.allclose(post.train()(x), pre.train()(x), atol=1e-3)


# ---------------------------------------------------------------------------------------
# GPT against Hugging Face GPT-2 (random weights from a config; nothing is downloaded)

def hf_gpt2(transformers):
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=50, n_positions=32,
                                     bos_token_id=0, eos_token_id=0, attn_implementation="eager")
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    randomize(model, torch.Generator().manual_seed(7), scale=0.3)  # LN weights and biases too
    assert model.lm_head.weight is model.transformer.wte.weight
    return model


def test_gpt_equals_hf_gpt2_logits_and_greedy_generation():
    """One test (importing transformers costs seconds). float32 logits within 1e-5: float32
    rounding grows with the logits' size (HF's own float32 logits are ~5e-6 from exact
    here), so the tight check is the float64 one. Then greedy generation: ours with and
    without the KV cache, and HF's generate(), give the same tokens."""
    hf = hf_gpt2(pytest.importorskip("transformers"))
    idx = torch.randint(0, 50, (3, 32), generator=torch.Generator().manual_seed(8))
    ours = gpt_ref.from_hf(hf)
    assert ours.lm_head.weight is ours.transformer.wte.weight
    with torch.no_grad():
        want, got = hf(idx).logits, ours(idx)
    assert want.abs().max() > 1.0  # not a trivially small output
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)

    prompt = torch.randint(0, 50, (2, 4), generator=torch.Generator().manual_seed(9))
    cached = ours.generate(prompt, 12, use_cache=True)
    assert torch.equal(cached, ours.generate(prompt, 12, use_cache=False))
    assert len(set(cached[0, 4:].tolist())) > 1  # a non-degenerate continuation
    with torch.no_grad():
        theirs = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12,
                             do_sample=False, pad_token_id=0)
    assert torch.equal(cached, theirs)

    hf64 = hf.double()
    ours64 = gpt_ref.from_hf(hf64)
    with torch.no_grad():
        torch.testing.assert_close(ours64(idx), hf64(idx).logits, rtol=1e-12, atol=1e-12)
    assert torch.equal(ours64.generate(prompt, 12, use_cache=True),
                       ours64.generate(prompt, 12, use_cache=False))


def test_rope_matches_hf_llama_rotary():
    llama = pytest.importorskip("transformers.models.llama.modeling_llama")
    config = llama.LlamaConfig(hidden_size=32, num_attention_heads=2, num_key_value_heads=2,
                               max_position_embeddings=64)
    rotary = llama.LlamaRotaryEmbedding(config)
    g = torch.Generator().manual_seed(10)
    q, k = randn(g, 2, 2, 9, 16, dtype=torch.float32), randn(g, 2, 2, 9, 16, dtype=torch.float32)
    pos = torch.arange(20, 29)[None].expand(2, 9)
    cos, sin = rotary(q, pos)
    hq, hk = llama.apply_rotary_pos_emb(q, k, cos, sin)
    torch.testing.assert_close(attention_ref.apply_rope(q, pos[:, None, :]), hq, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(attention_ref.apply_rope(k, pos[:, None, :]), hk, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------
# KV cache without Hugging Face

def test_gpt_kv_cache_logits_equal_full_forward():
    torch.manual_seed(11)
    model = gpt_ref.GPT(gpt_ref.GPTConfig(vocab_size=40, block_size=16, n_layer=2, n_head=4, n_embd=16)).double()
    randomize(model, torch.Generator().manual_seed(12), scale=0.3).eval()
    idx = torch.randint(0, 40, (2, 10))
    with torch.no_grad():
        full = model(idx)
        first, cache = model(idx[:, :6], use_cache=True)
        rest, cache = model(idx[:, 6:], cache, use_cache=True)
    torch.testing.assert_close(torch.cat([first, rest], dim=1), full, rtol=1e-12, atol=1e-12)
    assert cache[0][0].shape == (2, 4, 10, 4)
    with pytest.raises(ValueError, match="block_size"):
        model.generate(idx, 7)


# -- a query with no allowed key (fully masked row) --------------------------------------

def _left_padding(lengths, T):
    """(batch, T, T): causal & left padding (real tokens at the end)."""
    keep = torch.arange(T) >= T - lengths[:, None]
    return attention_ref.causal_mask(T) & keep[:, None, :], keep


def test_fully_masked_rows_are_zeros_like_torch_sdpa():
    g = torch.Generator().manual_seed(11)
    q, k, v = (randn(g, 3, 2, 6, 4).requires_grad_() for _ in range(3))
    mask, _ = _left_padding(torch.tensor([6, 3, 1]), 6)
    mask = mask[:, None]  # (3, 1, 6, 6): sequence 2 has 5 padding queries that see nothing
    empty = ~mask.any(-1)
    assert empty.sum() == 3 + 5  # the rows under test exist
    got = attention_ref.scaled_dot_product_attention(q, k, v, mask)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    w = attention_ref.attention_weights(q, k, mask)
    assert torch.equal(w[empty.expand_as(w[..., 0])], torch.zeros_like(w[empty.expand_as(w[..., 0])]))
    torch.testing.assert_close(w.sum(-1), (~empty).to(F64).expand_as(w[..., 0]))
    got.sum().backward()  # no NaN gradient either
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


def test_left_padding_through_three_layers_has_no_nan_and_equals_torch():
    """Left padding + causal mask: the padding queries see nothing. With NaN there, the next
    layer's real queries would take 0 * NaN = NaN from the padding's values."""
    g = torch.Generator().manual_seed(12)
    d, h, ff, T = 16, 4, 24, 7
    lengths = torch.tensor([7, 4, 1])
    mask, keep = _left_padding(lengths, T)
    theirs = [randomize(nn.TransformerEncoderLayer(d, h, ff, dropout=0.0, batch_first=True,
                                                   dtype=F64), g).train() for _ in range(3)]
    ours = [transformer_ref.load_from_torch(transformer_ref.EncoderLayer(d, h, ff).to(F64), t).eval()
            for t in theirs]
    x = randn(g, 3, T, d, dtype=F64)
    y, z = x, x
    with torch.no_grad():
        for o, t in zip(ours, theirs):
            y = o(y, mask)
            # train() keeps PyTorch off its fused inference path (no dropout: p = 0)
            z = t(z, src_mask=~attention_ref.causal_mask(T), src_key_padding_mask=~keep)
    assert torch.isfinite(y).all()
    real = keep[..., None].expand_as(y)
    torch.testing.assert_close(y[real], z[real], rtol=1e-10, atol=1e-10)
    # the real tokens do not depend on what the padding holds
    x2 = x.clone()
    x2[~keep] = 100.0
    y2 = x2
    with torch.no_grad():
        for o in ours:
            y2 = o(y2, mask)
    torch.testing.assert_close(y2[real], y[real], rtol=1e-10, atol=1e-10)

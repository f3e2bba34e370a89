"""Chapter 07 references against independent authorities: PyTorch's own parameter and FLOP
counts, GPT-2's published size, closed forms checked by numerical minimisation, gloo in two
real processes, torch's quantized tensors and torch.nn.utils.prune."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import run_gloo
from torch import nn
from torch.nn.utils import prune
from torch.utils.flop_counter import FlopCounterMode

from llmcourse.reference import compression as compression_ref
from llmcourse.reference import parallel as parallel_ref
from llmcourse.reference import scaling as scaling_ref
from llmcourse.reference.gpt import GPT, GPTConfig

CONFIGS = [(256, 128, 4, 4, 128), (64, 16, 1, 1, 8), (100, 33, 3, 2, 24), (50257, 1024, 12, 12, 768)]


@pytest.mark.parametrize("V,T,L,H,C", CONFIGS)
def test_param_count_matches_numel(V, T, L, H, C):
    with torch.device("meta"):
        model = GPT(GPTConfig(vocab_size=V, block_size=T, n_layer=L, n_head=H, n_embd=C))
    assert scaling_ref.gpt_param_count(V, T, L, C) == sum(p.numel() for p in model.parameters())
    assert scaling_ref.count_parameters(model) == scaling_ref.gpt_param_count(V, T, L, C)
    emb = model.transformer.wte.weight.numel() + model.transformer.wpe.weight.numel()
    assert scaling_ref.gpt_param_count(V, T, L, C, non_embedding=True) == scaling_ref.count_parameters(model) - emb


def test_gpt2_small_published_size():
    assert scaling_ref.gpt_param_count(50257, 1024, 12, 768) == 124_439_808  # GPT-2 small, as published by HF


@pytest.mark.parametrize("L,C,T,V", [(2, 32, 16, 256), (1, 16, 7, 50), (3, 48, 40, 128)])
def test_flops_match_flop_counter(L, C, T, V):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=V, block_size=64, n_layer=L, n_head=2, n_embd=C))
    idx = torch.randint(0, V, (3, T))
    fwd = FlopCounterMode(display=False)
    with fwd:
        model(idx)
    assert fwd.get_total_flops() == scaling_ref.forward_flops_per_token(V, L, C, T) * idx.numel()
    assert scaling_ref.measure_flops(model, idx) == scaling_ref.train_flops_per_token(V, L, C, T) * idx.numel()


def test_fit_power_law_recovers_exact_constants():
    N = torch.logspace(3, 7, 7, dtype=torch.float64)
    for E, A, alpha in [(1.7, 40.0, 0.3), (0.2, 5.0, 0.6), (2.5, 400.0, 0.1)]:
        got = scaling_ref.fit_power_law(N, scaling_ref.power_law(N, E, A, alpha))
        assert got == pytest.approx((E, A, alpha), rel=1e-6)


def test_fit_power_law_is_the_least_squares_minimum():
    """On noisy data: no point of a fine brute-force grid over alpha has a lower SSE."""
    g = torch.Generator().manual_seed(0)
    N = torch.logspace(4, 6.5, 6, dtype=torch.float64)
    L = scaling_ref.power_law(N, 1.2, 30.0, 0.4) * (1 + 0.01 * torch.randn(6, generator=g, dtype=torch.float64))
    E, A, alpha = scaling_ref.fit_power_law(N, L)
    best = ((L - scaling_ref.power_law(N, E, A, alpha)) ** 2).sum().item()
    for a in torch.linspace(0.05, 1.5, 3000, dtype=torch.float64).tolist():
        X = torch.stack([torch.ones_like(N), N ** -a], 1)
        sol = torch.linalg.lstsq(X, L[:, None]).solution[:, 0]
        assert ((L - X @ sol) ** 2).sum().item() >= best * (1 - 1e-9)


@pytest.mark.parametrize("fit", [scaling_ref.CHINCHILLA, scaling_ref.BESIROGLU])
@pytest.mark.parametrize("C", [1e18, 1e21, 5.76e23, 1e26])
def test_chinchilla_closed_form_matches_numerical_minimum(fit, C):
    n, d = scaling_ref.optimal_allocation(C, fit)
    n_num, d_num = scaling_ref.chinchilla_optimal_numeric(C, fit)
    assert n == pytest.approx(n_num, rel=1e-6) and d == pytest.approx(d_num, rel=1e-6)
    assert 6 * n * d == pytest.approx(C, rel=1e-12)
    # any other split of the same budget is worse
    for f in (0.9, 1.1):
        assert scaling_ref.chinchilla_loss(n, d, fit) < scaling_ref.chinchilla_loss(n * f, d / f, fit)


def test_chinchilla_exponents_match_the_paper():
    """Hoffmann et al. report N* ~ C^0.46 and D* ~ C^0.54 for approach 3 (rounded)."""
    ch = scaling_ref.CHINCHILLA
    a, b = ch.beta / (ch.alpha + ch.beta), ch.alpha / (ch.alpha + ch.beta)
    assert round(a, 2) in (0.45, 0.46) and round(b, 2) in (0.54, 0.55)
    n1, _ = scaling_ref.optimal_allocation(1e20)
    n2, _ = scaling_ref.optimal_allocation(1e22)
    assert math.log(n2 / n1, 100) == pytest.approx(a, rel=1e-9)


def test_chinchilla_accepts_tensors():
    C = torch.tensor([1e19, 1e22], dtype=torch.float64)
    n, d = scaling_ref.optimal_allocation(C)
    for i in range(2):
        ni, di = scaling_ref.optimal_allocation(float(C[i]))
        assert float(n[i]) == pytest.approx(ni, rel=1e-12) and float(d[i]) == pytest.approx(di, rel=1e-12)


# --- data and tensor parallelism --------------------------------------------------------

def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 4)).double()


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_simulated_data_parallel_equals_full_batch(world_size):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4 * world_size, 6, dtype=torch.float64, generator=g)
    y = torch.randint(0, 4, (4 * world_size,), generator=g)
    full = _mlp()
    F.cross_entropy(full(x), y).backward()
    group = parallel_ref.SimulatedGroup(world_size)
    models = [_mlp() for _ in range(world_size)]

    def rank_step(model, xs, ys):
        F.cross_entropy(model(xs), ys).backward()
        parallel_ref.average_gradients(model, world_size, group.all_reduce)

    group.run(rank_step, [(m, xs, ys) for m, xs, ys in zip(models, x.chunk(world_size), y.chunk(world_size))])
    for m in models:
        for a, b in zip(m.parameters(), full.parameters()):
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-14)


def test_simulated_group_reraises_rank_errors():
    group = parallel_ref.SimulatedGroup(3, timeout=5)

    def bad(t):
        if group.rank == 1:
            raise KeyError("boom")
        group.all_reduce(t)

    with pytest.raises(KeyError):
        group.run(bad, [(torch.ones(2),) for _ in range(3)])


@pytest.mark.parametrize("mbs", [1, 3, 4, 7])
def test_accumulation_equals_full_batch(mbs):
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(7, 6, dtype=torch.float64, generator=g), torch.randint(0, 4, (7,), generator=g)
    full, acc = _mlp(), _mlp()
    F.cross_entropy(full(x), y).backward()
    for p in acc.parameters():
        p.grad = torch.ones_like(p)  # stale
    parallel_ref.accumulate_gradients(acc, x, y, mbs)
    for a, b in zip(acc.parameters(), full.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("ranks", [1, 2, 3, 4])
def test_tensor_parallel_linear_equals_nn_linear(ranks):
    torch.manual_seed(3)
    lin = nn.Linear(12, 10).double()
    x = torch.randn(2, 5, 12, dtype=torch.float64)
    with torch.no_grad():
        ws, bs = parallel_ref.shard_linear(lin.weight, lin.bias, ranks, "column")
        torch.testing.assert_close(parallel_ref.column_parallel_linear(x, ws, bs), lin(x))
        wr, b = parallel_ref.shard_linear(lin.weight, lin.bias, ranks, "row")
        torch.testing.assert_close(parallel_ref.row_parallel_linear(list(x.chunk(ranks, -1)), wr, b), lin(x))


def test_megatron_mlp_needs_one_sum():
    torch.manual_seed(4)
    fc, proj = nn.Linear(8, 32).double(), nn.Linear(32, 8).double()
    h = torch.randn(3, 8, dtype=torch.float64)
    with torch.no_grad():
        W1, b1 = parallel_ref.shard_linear(fc.weight, fc.bias, 4, "column")
        W2, b2 = parallel_ref.shard_linear(proj.weight, proj.bias, 4, "row")
        hidden = [F.gelu(parallel_ref.column_parallel_linear(h, [W1[i]], [b1[i]])) for i in range(4)]
        torch.testing.assert_close(parallel_ref.row_parallel_linear(hidden, W2, b2), proj(F.gelu(fc(h))))


def test_two_process_gloo_equivalence():
    """The real thing: two processes, gloo over loopback. Skips where sockets are unavailable."""
    results = run_gloo(parallel_ref.run_local, 2)
    assert [r["rank"] for r in results] == [0, 1]
    for r in results:
        for key in ("data_parallel_max_err", "accumulation_max_err", "column_parallel_max_err",
                    "row_parallel_max_err"):
            assert r[key] < 1e-12, (key, r)


# --- compression ------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore::UserWarning")
def test_absmax_matches_torch_quantized_tensor_and_error_bound():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(16, 32, generator=g)
    q, scale = compression_ref.absmax_quantize(x)
    ours = q.int()
    theirs = torch.quantize_per_tensor(x, float(scale), 0, torch.qint8).int_repr().int()
    assert (ours - theirs).abs().max() <= 1 and (ours != theirs).float().mean() < 0.01
    assert (x - compression_ref.absmax_dequantize(q, scale)).abs().max() <= scale / 2 + 1e-7
    assert q.abs().max() == 127


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_zeropoint_matches_torch_per_channel():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(8, 20, generator=g, dtype=torch.float64).float() + 0.3
    q, scale, z = compression_ref.zeropoint_quantize(x, dim=1)
    theirs = torch.quantize_per_channel(x, scale[:, 0].double(), z[:, 0].long(), 0, torch.qint8)
    ours, ref = q.int(), theirs.int_repr().int()
    assert (ours - ref).abs().max() <= 1 and (ours != ref).float().mean() < 0.01
    err = (x - compression_ref.zeropoint_dequantize(q, scale, z)).abs()
    assert (err <= scale / 2 + 1e-6).all()
    assert compression_ref.zeropoint_dequantize(*compression_ref.zeropoint_quantize(torch.tensor([0.0, 1.0, 5.0])))[0] == 0


def test_zero_point_represents_zero_exactly_and_all_positive_data():
    x = torch.rand(5, 7, dtype=torch.float64) + 1.0  # all positive
    q, scale, z = compression_ref.zeropoint_quantize(x)
    assert int(z) == -128 and (compression_ref.zeropoint_dequantize(q, scale, z) - x).abs().max() <= scale / 2


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9, 1.0])
def test_magnitude_prune_matches_torch_prune(sparsity):
    torch.manual_seed(7)
    lin = nn.Linear(9, 11)
    w = lin.weight.detach().clone()
    k = math.floor(sparsity * w.numel())
    prune.l1_unstructured(lin, "weight", amount=k)
    torch.testing.assert_close(compression_ref.magnitude_prune(w, sparsity), lin.weight.detach())
    assert int((compression_ref.magnitude_prune(w, sparsity) == 0).sum()) == k


def test_compression_helpers_on_a_gpt():
    torch.manual_seed(8)
    model = GPT(GPTConfig(vocab_size=32, block_size=8, n_layer=2, n_head=2, n_embd=16))
    names = [n for n, _ in compression_ref.prunable_weights(model)]
    assert len(names) == 8 and all(".h." in n for n in names)
    compression_ref.apply_to_weights(model, lambda w: compression_ref.magnitude_prune(w, 0.5))
    assert all(abs(float((w == 0).float().mean()) - 0.5) < 0.01 for _, w in compression_ref.prunable_weights(model))
    full = compression_ref.model_bytes(model)
    assert full == 4 * scaling_ref.count_parameters(model)
    assert compression_ref.model_bytes(model, bits=8) < full

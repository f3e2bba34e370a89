"""Chapter 06 references against independent authorities: F.kl_div, F.cross_entropy,
F.cosine_embedding_loss, autograd, and closed forms (Hinton et al. 2015's high-T limit)."""

import math

import pytest
import torch
import torch.nn.functional as F

from llmcourse.reference import distillation as distillation_ref
from llmcourse.reference.gpt import GPT, GPTConfig
from llmcourse.reference.training import TrainConfig, encode, evaluate_lm, train_lm

F64 = torch.float64


def _logits(*shape, seed=0, scale=2.0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype) * scale


@pytest.mark.parametrize("T", [0.1, 0.5, 1.0, 2.0, 7.0])
def test_softmax_with_temperature_is_softmax_of_scaled_logits(T):
    z = _logits(3, 4, 11, scale=5.0)
    torch.testing.assert_close(distillation_ref.softmax_with_temperature(z, T), torch.softmax(z / T, -1))
    torch.testing.assert_close(distillation_ref.softmax_with_temperature(z, T, dim=1), torch.softmax(z / T, 1))


def test_temperature_limits():
    z = torch.tensor([1.0, 3.0, 2.0], dtype=F64)
    assert torch.allclose(distillation_ref.softmax_with_temperature(z, 1e-3), torch.tensor([0.0, 1.0, 0.0], dtype=F64))
    assert torch.allclose(distillation_ref.softmax_with_temperature(z, 1e6), torch.full((3,), 1 / 3, dtype=F64))
    big = torch.tensor([[20.0, 10.0, 0.0]])  # z / 0.1 = 200: exp overflows float32 without the shift
    assert torch.isfinite(distillation_ref.softmax_with_temperature(big, 0.1)).all()


@pytest.mark.parametrize("shape,T", [((4, 10), 1.0), ((2, 5, 16), 2.0), ((2, 2, 3, 9), 5.0),
                                     ((1, 1, 256), 0.5)])
def test_kl_matches_F_kl_div_batchmean_over_positions(shape, T):
    s, t = _logits(*shape, seed=1), _logits(*shape, seed=2, scale=4.0)
    V = shape[-1]
    expected = T ** 2 * F.kl_div(F.log_softmax(s.reshape(-1, V) / T, -1),
                                 F.log_softmax(t.reshape(-1, V) / T, -1),
                                 reduction="batchmean", log_target=True)
    torch.testing.assert_close(distillation_ref.distillation_kl(s, t, T), expected)


def test_kl_closed_forms():
    z = _logits(3, 6)
    assert distillation_ref.distillation_kl(z, z.clone(), 3.0).abs() < 1e-12  # KL(p || p) = 0
    # two classes, hand-computed: p = (0.8, 0.2), q = (0.5, 0.5) at T = 1
    p, q = torch.tensor([[math.log(0.8), math.log(0.2)]], dtype=F64), torch.zeros(1, 2, dtype=F64)
    kl = 0.8 * math.log(0.8 / 0.5) + 0.2 * math.log(0.2 / 0.5)
    torch.testing.assert_close(distillation_ref.distillation_kl(q, p, 1.0), torch.tensor(kl, dtype=F64))
    # T^2 scaling: logits scaled by T at temperature T give T^2 times the T = 1 value
    torch.testing.assert_close(distillation_ref.distillation_kl(2 * q, 2 * p, 2.0), torch.tensor(4 * kl, dtype=F64))
    # the direction matters: KL(p || q) != KL(q || p)
    assert not torch.allclose(distillation_ref.distillation_kl(q, p), distillation_ref.distillation_kl(p, q))


def test_kl_underflowing_teacher_is_finite():
    t = torch.tensor([[100.0, 0.0, -100.0, 0.0]])  # softmax underflows to exactly 0 in float32
    s = torch.zeros(1, 4)
    assert (torch.softmax(t, -1) == 0).any()
    out = distillation_ref.distillation_kl(s, t)
    assert torch.isfinite(out)
    expected = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), reduction="batchmean",
                        log_target=True)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("T,alpha", [(2.0, 0.5), (4.0, 0.9), (1.0, 0.0), (3.0, 1.0)])
def test_combined_loss_against_pytorch(T, alpha):
    s, t = _logits(2, 6, 12, seed=3), _logits(2, 6, 12, seed=4, scale=4.0)
    y = torch.randint(0, 12, (2, 6), generator=torch.Generator().manual_seed(5))
    soft = F.kl_div(F.log_softmax(s.reshape(-1, 12) / T, -1), F.softmax(t.reshape(-1, 12) / T, -1),
                    reduction="batchmean")
    hard = F.cross_entropy(s.reshape(-1, 12), y.reshape(-1))
    torch.testing.assert_close(distillation_ref.distillation_loss(s, t, y, T, alpha),
                               alpha * T ** 2 * soft + (1 - alpha) * hard)


@pytest.mark.parametrize("shape", [(4, 8), (2, 5, 8), (2, 2, 3, 8)])
def test_cosine_loss_matches_cosine_embedding_loss(shape):
    a, b = _logits(*shape, seed=6), _logits(*shape, seed=7)
    ones = torch.ones(a.reshape(-1, shape[-1]).shape[0], dtype=F64)
    expected = F.cosine_embedding_loss(a.reshape(-1, shape[-1]), b.reshape(-1, shape[-1]), ones)
    torch.testing.assert_close(distillation_ref.hidden_cosine_loss(a, b), expected)


def test_cosine_loss_with_projection_and_closed_forms():
    hs, ht, W = _logits(2, 5, 16, seed=8), _logits(2, 5, 32, seed=9), _logits(16, 32, seed=10)
    expected = 1 - F.cosine_similarity(hs @ W, ht, dim=-1).mean()
    torch.testing.assert_close(distillation_ref.hidden_cosine_loss(hs, ht, W), expected)
    h = _logits(3, 6, seed=11)
    assert distillation_ref.hidden_cosine_loss(h, 3 * h).abs() < 1e-12  # same direction: 0
    torch.testing.assert_close(distillation_ref.hidden_cosine_loss(h, -h), torch.tensor(2.0, dtype=F64))
    z = torch.zeros(1, 6, dtype=F64)  # a zero vector has cosine 0, as in F.cosine_similarity
    torch.testing.assert_close(distillation_ref.hidden_cosine_loss(z, h[:1]), torch.tensor(1.0, dtype=F64))
    with pytest.raises(ValueError, match="projection"):
        distillation_ref.hidden_cosine_loss(hs, ht)


@pytest.mark.parametrize("T", [1.0, 2.0, 5.0, 20.0])
def test_soft_target_gradient_closed_form_matches_autograd(T):
    s, t = _logits(6, 10, seed=12).requires_grad_(), _logits(6, 10, seed=13, scale=4.0)
    distillation_ref.distillation_kl(s, t, T).backward()
    torch.testing.assert_close(s.grad, distillation_ref.soft_target_grad(s.detach(), t, T, scaled=True))
    torch.testing.assert_close(s.grad / T ** 2, distillation_ref.soft_target_grad(s.detach(), t, T, scaled=False))


def test_T2_keeps_the_gradient_size_constant_hinton_limit():
    """With T^2 the gradient tends to (d - mean d) / (V N) as T grows (Hinton et al. 2015,
    eq. 3-4); without it, it falls like 1/T^2."""
    s, t = _logits(8, 50, seed=14), _logits(8, 50, seed=15, scale=3.0)
    limit = distillation_ref.high_temperature_grad(s, t)
    for T in (100.0, 1000.0):
        g = distillation_ref.soft_target_grad(s, t, T)
        assert (g - limit).norm() / limit.norm() < 10 / T
    norms = {T: distillation_ref.soft_target_grad(s, t, T).norm().item() for T in (4.0, 16.0, 64.0)}
    raw = {T: distillation_ref.soft_target_grad(s, t, T, scaled=False).norm().item() for T in (4.0, 16.0, 64.0)}
    assert max(norms.values()) / min(norms.values()) < 1.5
    assert raw[4.0] / raw[64.0] > 100  # ~ (64 / 4)^2 = 256 times smaller without T^2


def test_gpt_hidden_matches_the_model_and_the_student_wrapper():
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=256, block_size=16, n_layer=2, n_head=2, n_embd=16)
    model = GPT(cfg).eval()
    idx = torch.randint(0, 256, (2, 16))
    logits, h = distillation_ref.gpt_hidden(model, idx)
    torch.testing.assert_close(logits, model(idx))
    assert h.shape == (2, 16, 16)
    torch.testing.assert_close(model.lm_head(h), logits)
    wrapped = distillation_ref.StudentWithProjection(model, 32)
    torch.testing.assert_close(wrapped(idx), logits)
    assert distillation_ref.count_params(wrapped) == distillation_ref.count_params(model) + 16 * 32
    assert distillation_ref.tokens_per_second(model, batch_size=2, block_size=16, repeats=1) > 0


def test_distill_loss_fn_trains_a_student_and_leaves_the_teacher_alone():
    torch.manual_seed(0)
    tokens = encode("the cat sat on the mat. " * 40)
    teacher = GPT(GPTConfig(vocab_size=256, block_size=16, n_layer=2, n_head=2, n_embd=32))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    cfg = TrainConfig(steps=15, batch_size=8, block_size=16, warmup_steps=3, max_lr=1e-2)
    for beta in (0.0, 1.0):
        gpt = GPT(GPTConfig(vocab_size=256, block_size=16, n_layer=1, n_head=2, n_embd=16))
        student = distillation_ref.StudentWithProjection(gpt, 32) if beta else gpt
        start = evaluate_lm(student, tokens, 16)
        hist = train_lm(student, tokens, cfg, loss_fn=distillation_ref.distill_loss_fn(teacher, 2.0, 0.5, beta))
        assert len(hist.loss) == 15 and all(math.isfinite(v) for v in hist.loss)
        assert evaluate_lm(student, tokens, 16) < start
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())

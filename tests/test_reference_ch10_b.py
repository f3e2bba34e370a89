"""Chapter 10 (privacy, inside the model, alignment) references against independent
authorities: Opacus (GradSampleModule per-sample gradients, DPOptimizer's clipped and noised
update with a fixed generator, the RDP accountant), autograd loops, Hugging Face BLOOM/MPT
ALiBi tensors and GPT-2 hidden states/attentions, closed forms (FedAvg = full-batch GD, the
Bradley-Terry minimiser of the DPO loss, its gradient), and the language's own ratings."""

import math
import re

import pytest
import torch
import torch.nn.functional as F

from llmcourse.reference import alignment as align
from llmcourse.reference import interpret
from llmcourse.reference import positions
from llmcourse.reference import privacy

F64 = torch.float64


def _setup(N=12, D=5, H=8, K=3, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    params = privacy.init_mlp(D, H, K, g, dtype)
    params["b1"] = torch.randn(H, generator=g, dtype=F64).to(dtype) * 0.3
    params["b2"] = torch.randn(K, generator=g, dtype=F64).to(dtype) * 0.3
    x = (torch.randn(N, D, generator=g, dtype=F64) * 1.5).to(dtype)
    y = torch.randint(0, K, (N,), generator=g)
    return params, x, y


def _opacus_net(params):
    D, H, K = params["W1"].shape[1], params["W1"].shape[0], params["W2"].shape[0]
    net = torch.nn.Sequential(torch.nn.Linear(D, H), torch.nn.Tanh(), torch.nn.Linear(H, K))
    net = net.to(params["W1"].dtype)
    with torch.no_grad():
        for p, key in zip(net.parameters(), ("W1", "b1", "W2", "b2")):
            p.copy_(params[key])
    return net


KEYS = ("W1", "b1", "W2", "b2")


# -- privacy -------------------------------------------------------------------------------

@pytest.mark.parametrize("N,dtype", [(1, torch.float32), (12, torch.float32), (7, F64)])
def test_per_example_grads_equal_opacus_grad_sample_and_a_loop(N, dtype):
    from opacus import GradSampleModule

    params, x, y = _setup(N=N, dtype=dtype)
    ours = privacy.per_example_grads(params, x, y)
    gsm = GradSampleModule(_opacus_net(params), loss_reduction="mean")
    F.cross_entropy(gsm(x), y).backward()
    for p, key in zip(gsm.parameters(), KEYS):
        torch.testing.assert_close(ours[key], p.grad_sample, rtol=1e-5, atol=1e-6)
    for i in range(N):  # autograd, one example at a time
        p = {k: v.clone().requires_grad_() for k, v in params.items()}
        privacy.mlp_loss(p, x[i:i + 1], y[i:i + 1]).backward()
        for key in KEYS:
            torch.testing.assert_close(ours[key][i], p[key].grad)
    # the per-example mean is the batch gradient
    batch = torch.func.grad(privacy.mlp_loss)(params, x, y)
    for key in KEYS:
        torch.testing.assert_close(ours[key].mean(0), batch[key])


@pytest.mark.parametrize("C,sigma", [(1.0, 1.1), (0.3, 0.0), (5.0, 2.5), (1e3, 0.7)])
def test_dp_gradient_equals_opacus_dpoptimizer_with_the_same_noise(C, sigma):
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    params, x, y = _setup(N=16, seed=3)
    gsm = GradSampleModule(_opacus_net(params), loss_reduction="mean")
    opt = DPOptimizer(torch.optim.SGD(gsm.parameters(), lr=1.0), noise_multiplier=sigma,
                      max_grad_norm=C, expected_batch_size=len(y),
                      generator=torch.Generator().manual_seed(42))
    F.cross_entropy(gsm(x), y).backward()
    assert opt.pre_step()  # clip, accumulate, add noise, scale; p.grad is the DP gradient
    # Opacus draws N(0, (sigma C)^2) per parameter, in order, from its generator
    g = torch.Generator().manual_seed(42)
    std = sigma * C
    noise = {key: (torch.normal(0, std, p.shape, generator=g) / std if std > 0
                   else torch.zeros(p.shape)) for key, p in zip(KEYS, gsm.parameters())}
    ours = privacy.dp_sgd_gradient(params, x, y, C, sigma, noise)
    for p, key in zip(gsm.parameters(), KEYS):  # Opacus divides by (norm + 1e-6): ~1e-6 relative
        torch.testing.assert_close(ours[key], p.grad, rtol=1e-5, atol=1e-6)


def test_clipped_sum_has_sensitivity_C():
    params, x, y = _setup(N=20, seed=5)
    grads = privacy.per_example_grads(params, x, y)
    grads = {k: v * 50 for k, v in grads.items()}  # every example far outside the ball
    zero = {k: torch.zeros_like(v[0]) for k, v in grads.items()}
    C = 0.7
    full = privacy.dp_aggregate(grads, C, 0.0, zero)
    for drop in range(5):
        rest = {k: torch.cat([v[:drop], v[drop + 1:]]) for k, v in grads.items()}
        part = privacy.dp_aggregate(rest, C, 0.0, zero)
        diff = torch.cat([(20 * full[k] - 19 * part[k]).reshape(-1) for k in full])  # sums
        assert diff.norm() <= C * (1 + 1e-5)
        assert diff.norm() >= C * (1 - 1e-4)  # clipped to exactly C
    f = privacy.clip_factors(grads, C)
    clipped = {k: v * f.reshape(-1, *([1] * (v.dim() - 1))) for k, v in grads.items()}
    assert privacy.per_example_norms(clipped).max() <= C * (1 + 1e-6)


def test_rdp_accountant_epsilon_falls_with_noise_and_grows_with_steps():
    from opacus.accountants import RDPAccountant

    def eps(sigma, q, steps):
        a = RDPAccountant()
        a.history = [(sigma, q, steps)]
        return a.get_epsilon(1e-5)

    assert eps(0.5, 0.026, 400) > eps(1.0, 0.026, 400) > eps(2.0, 0.026, 400) > eps(4.0, 0.026, 400)
    assert eps(1.0, 0.026, 800) > eps(1.0, 0.026, 400)
    # Abadi et al. 2016 (Fig. 2 setting: q = 0.01, sigma = 4, 10 000 steps): epsilon about 1.2
    # by the moments accountant; RDP gives a bound of the same size
    assert 0.8 < eps(4.0, 0.01, 10_000) < 1.6


@pytest.mark.parametrize("sizes", [(3, 10, 25), (1, 40), (7,)])
def test_fedavg_with_one_local_step_is_one_full_batch_step(sizes):
    g = torch.Generator().manual_seed(1)
    params = privacy.init_mlp(4, 6, 3, g, F64)
    clients = [(torch.randn(n, 4, generator=g, dtype=F64), torch.randint(0, 3, (n,), generator=g))
               for n in sizes]
    x = torch.cat([c[0] for c in clients])
    y = torch.cat([c[1] for c in clients])
    central = privacy.local_sgd(params, x, y, lr=0.4, steps=1)
    fed = privacy.fedavg_round(params, clients, lr=0.4, local_steps=1)
    for k in params:
        torch.testing.assert_close(fed[k], central[k])
    if len(sizes) > 1:  # with more local steps on unequal data it is no longer the same
        fed5 = privacy.fedavg_round(params, clients, lr=0.4, local_steps=5)
        central5 = privacy.local_sgd(params, x, y, lr=0.4, steps=5)
        assert max((fed5[k] - central5[k]).abs().max() for k in params) > 1e-6


def test_fedavg_of_identical_clients_is_local_training():
    g = torch.Generator().manual_seed(2)
    params = privacy.init_mlp(3, 4, 2, g, F64)
    x, y = torch.randn(9, 3, generator=g, dtype=F64), torch.randint(0, 2, (9,), generator=g)
    fed = privacy.fedavg_round(params, [(x, y)] * 3, lr=0.3, local_steps=4)
    local = privacy.local_sgd(params, x, y, lr=0.3, steps=4)
    for k in params:
        torch.testing.assert_close(fed[k], local[k])


# -- ALiBi and the position LM ---------------------------------------------------------------

@pytest.mark.parametrize("n_heads", list(range(1, 21)) + [24, 32, 40])
def test_alibi_slopes_equal_bloom_and_mpt(n_heads):
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor
    from transformers.models.mpt.modeling_mpt import build_mpt_alibi_tensor

    T = 7
    bloom = build_alibi_tensor(torch.ones(1, T, dtype=torch.long), n_heads, F64)  # (H, 1, T): m * j
    ours = positions.alibi_slopes(n_heads)
    torch.testing.assert_close(ours, bloom[:, 0, 1])
    mpt = build_mpt_alibi_tensor(n_heads, T)[:, 0]  # (H, T): m * (j - (T - 1))
    torch.testing.assert_close(ours, (mpt[:, 1] - mpt[:, 0]).double(), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("n_heads,T", [(8, 9), (6, 12), (12, 5), (1, 1)])
def test_alibi_bias_gives_bloom_attention(n_heads, T):
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor

    g = torch.Generator().manual_seed(n_heads)
    scores = torch.randn(n_heads, T, T, generator=g, dtype=F64)
    bloom = build_alibi_tensor(torch.ones(1, T, dtype=torch.long), n_heads, F64)  # (H, 1, T)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    theirs = torch.softmax((scores + bloom).masked_fill(~causal, float("-inf")), -1)
    bias = positions.alibi_bias(n_heads, T, F64)
    torch.testing.assert_close(torch.softmax(scores + bias, -1), theirs)
    assert (bias.diagonal(dim1=-2, dim2=-1) == 0).all() and torch.isinf(bias[:, ~causal]).all()
    assert (bias[:, causal] <= 0).all()


@pytest.mark.parametrize("kind", positions.KINDS)
def test_position_lm_is_causal_and_runs_past_the_training_length(kind):
    torch.manual_seed(0)
    m = positions.PositionLM(kind, d=16, n_layer=1, n_head=2, max_len=40,
                             alibi_fn=positions.alibi_bias).eval()
    idx = torch.randint(0, 256, (2, 40))
    out = m(idx)
    changed = idx.clone()
    changed[:, 20:] = (changed[:, 20:] + 1) % 256
    torch.testing.assert_close(m(changed)[:, :20], out[:, :20])  # no position sees the future
    assert not torch.allclose(m(changed)[:, 20:], out[:, 20:])
    if kind in ("learned", "sinusoidal"):
        with pytest.raises(ValueError):
            m(torch.zeros(1, 41, dtype=torch.long))
    else:
        assert m(torch.zeros(1, 100, dtype=torch.long)).shape == (1, 100, 256)


def test_loss_by_position_averages_to_the_window_loss():
    torch.manual_seed(0)
    m = positions.PositionLM("alibi", d=16, n_layer=1, n_head=2, alibi_fn=positions.alibi_bias)
    with pytest.raises(ValueError, match="alibi_fn"):
        positions.PositionLM("alibi", d=16, n_layer=1, n_head=2)
    tokens = torch.randint(0, 256, (500,))
    per = positions.loss_by_position(m, tokens, 20, 10)
    x = tokens[:200].reshape(10, 20)
    y = tokens[1:201].reshape(10, 20)
    with torch.no_grad():
        whole = F.cross_entropy(m(x).reshape(-1, 256), y.reshape(-1)).item()
    assert per.shape == (20,) and math.isclose(per.mean().item(), whole, rel_tol=1e-5)


# -- interpretability ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hf_pair():
    from transformers import GPT2Config, GPT2LMHeadModel

    from llmcourse.reference.gpt import from_hf

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=97, n_positions=32, n_embd=48, n_layer=3, n_head=4,
                     attn_implementation="eager")
    hf = GPT2LMHeadModel(cfg).eval()
    return hf, from_hf(hf)


def test_residual_stream_logit_lens_and_attention_equal_hugging_face(hf_pair):
    hf, ours = hf_pair
    idx = torch.randint(0, 97, (2, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = hf(idx, output_hidden_states=True, output_attentions=True)
    resid = interpret.residual_stream(ours, idx)
    # HF's hidden_states: the embeddings and blocks 1..L-1 as they are, the LAST one after ln_f
    torch.testing.assert_close(resid[:-1], torch.stack(out.hidden_states[:-1]), rtol=1e-4, atol=1e-5)
    ln = ours.transformer.ln_f
    lens = interpret.logit_lens(resid, ln.weight, ln.bias, ours.lm_head.weight, ln.eps)
    torch.testing.assert_close(lens[-1], out.logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(interpret.attention_maps(ours, idx), torch.stack(out.attentions),
                               rtol=1e-4, atol=1e-6)


def test_logit_lens_last_layer_is_the_tiny_gpt_output():
    from llmcourse.pretrained import tiny_gpt

    gpt = tiny_gpt()
    idx = torch.randint(32, 127, (2, 20), generator=torch.Generator().manual_seed(0))
    ln = gpt.transformer.ln_f
    with torch.no_grad():
        lens = interpret.logit_lens(interpret.residual_stream(gpt, idx), ln.weight, ln.bias,
                                    gpt.lm_head.weight, ln.eps)
        torch.testing.assert_close(lens[-1], gpt(idx), rtol=1e-4, atol=1e-4)
    assert lens.shape == (5, 2, 20, 256)


def test_induction_score_closed_forms():
    n = 7
    T = 2 * n
    perfect = torch.zeros(T, T)
    perfect[0, 0] = 1
    for t in range(1, T):
        perfect[t, t - n + 1 if t >= n else 0] = 1
    assert interpret.induction_score(perfect).item() == 1.0
    uniform = torch.ones(T, T).tril()
    uniform = uniform / uniform.sum(-1, keepdim=True)
    expect = sum(1 / (t + 1) for t in range(n, T)) / n
    assert math.isclose(interpret.induction_score(uniform).item(), expect, rel_tol=1e-6)
    # TransformerLens-style stripe: the diagonal at offset -(n - 1), second copy only
    a = torch.softmax(torch.randn(3, 2, T, T), -1)
    stripe = a.diagonal(offset=-(n - 1), dim1=-2, dim2=-1)[..., 1:].mean(-1)
    torch.testing.assert_close(interpret.induction_score(a), stripe)
    rep = interpret.repeated_random_tokens(5, 3, torch.Generator().manual_seed(0))
    assert rep.shape == (3, 10) and torch.equal(rep[:, :5], rep[:, 5:])


# -- alignment -------------------------------------------------------------------------------

def test_sequence_logprob_is_a_sum_of_masked_token_logprobs():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=g, dtype=F64)
    targets = torch.randint(0, 7, (2, 5), generator=g)
    mask = torch.tensor([[0, 1, 1, 1, 0], [0, 0, 1, 0, 0]], dtype=torch.bool)
    got = align.sequence_logprob(logits, targets, mask)
    for b in range(2):
        want = sum(math.log(torch.softmax(logits[b, t], -1)[targets[b, t]].item())
                   for t in range(5) if mask[b, t])
        assert math.isclose(got[b].item(), want, rel_tol=1e-12)


def test_dpo_loss_hand_computation_and_reference_point():
    pc, pr = torch.tensor([-10.0, -4.0], dtype=F64), torch.tensor([-12.0, -3.0], dtype=F64)
    rc, rr = torch.tensor([-11.0, -5.0], dtype=F64), torch.tensor([-11.0, -2.0], dtype=F64)
    beta = 0.5
    hand = [-math.log(1 / (1 + math.exp(-beta * ((-10 + 11) - (-12 + 11))))),
            -math.log(1 / (1 + math.exp(-beta * ((-4 + 5) - (-3 + 2)))))]
    assert math.isclose(align.dpo_loss(pc, pr, rc, rr, beta).item(), sum(hand) / 2, rel_tol=1e-12)
    assert math.isclose(align.dpo_loss(pc, pr, pc, pr, 0.1).item(), math.log(2), rel_tol=1e-12)
    huge = align.dpo_loss(torch.tensor([-500.0]), torch.tensor([0.0]), torch.tensor([0.0]),
                          torch.tensor([0.0]), 1.0)
    assert torch.isfinite(huge) and math.isclose(huge.item(), 500.0, rel_tol=1e-6)


@pytest.mark.parametrize("p", [0.5, 0.8, 0.95])
def test_dpo_minimiser_is_the_bradley_terry_log_odds(p):
    """With y1 preferred with probability p, the expected DPO loss p L(h) + (1-p) L(-h) over the
    implicit reward margin h is minimised at h = log(p / (1 - p)) (Rafailov et al., eq. 4-7)."""
    h = torch.zeros((), dtype=F64, requires_grad=True)
    opt = torch.optim.LBFGS([h], max_iter=200, tolerance_grad=1e-14, tolerance_change=1e-16,
                            line_search_fn="strong_wolfe")
    one, zero = torch.ones(1, dtype=F64), torch.zeros(1, dtype=F64)

    def closure():
        opt.zero_grad()
        loss = p * align.dpo_loss(h * one, zero, zero, zero, 1.0) + \
            (1 - p) * align.dpo_loss(-h * one, zero, zero, zero, 1.0)
        loss.backward()
        return loss

    opt.step(closure)
    assert math.isclose(h.item(), math.log(p / (1 - p)), abs_tol=1e-6)


def test_dpo_gradient_is_beta_sigmoid_of_minus_margin():
    pc = torch.tensor([-3.0, -1.0], dtype=F64, requires_grad=True)
    pr = torch.tensor([-2.0, -4.0], dtype=F64, requires_grad=True)
    rc, rr = torch.tensor([-2.5, -1.5], dtype=F64), torch.tensor([-2.0, -3.0], dtype=F64)
    beta = 0.3
    align.dpo_loss(pc, pr, rc, rr, beta).backward()
    h = beta * ((pc - rc) - (pr - rr)).detach()
    torch.testing.assert_close(pc.grad, -beta * torch.sigmoid(-h) / 2)
    torch.testing.assert_close(pr.grad, beta * torch.sigmoid(-h) / 2)


def test_sampling_and_completion_masks():
    from llmcourse.pretrained import tiny_gpt
    from llmcourse.reference.training import encode

    gpt = tiny_gpt()
    prompt = encode("Review: The")
    a = align.sample(gpt, prompt, 4, 30, torch.Generator().manual_seed(0))
    b = align.sample(gpt, prompt, 4, 30, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == (4, 30)
    for row in a:  # after the first newline, only newlines
        hits = (row == 10).nonzero()
        if len(hits):
            assert (row[hits[0, 0]:] == 10).all()
    x, y, mask = align.completion_batch(prompt, a)
    assert x.shape == y.shape == mask.shape == (4, len(prompt) + 29)
    assert not mask[:, :len(prompt) - 1].any() and mask[:, len(prompt) - 1].all()
    with torch.no_grad():
        lp = align.completion_logprob(gpt, prompt, a)
        # the same number from the full sequence, summed by hand
        full = torch.cat([prompt.expand(4, -1), a], 1)
        logp = torch.log_softmax(gpt(full[:, :-1]), -1).gather(-1, full[:, 1:, None])[..., 0]
    torch.testing.assert_close(lp, (logp * mask).sum(1))


def test_review_score_gives_the_languages_rating():
    from llmcourse.data.synthetic import documents, domain_of
    from llmcourse.data.truth import review_score, review_stars

    reviews = [d for d in documents(1500, seed=9) if domain_of(d) == "review"]
    assert len(reviews) > 300
    for d in reviews:
        assert review_stars(d) == int(re.search(r"Rating: (\d)", d).group(1))
    assert review_score("Review: The food was very good, but the staff was not bad.") == 1
    assert review_score("Review: The soup was awful, and the music was extremely nice.") == 0  # -2 + 2
    assert review_score("Review: The pasta was not great. The room was really bad.") == -3  # -1 - 2
    assert review_score("Review: The food was") is None
    assert review_score("Math: 1 + 1 = 2.") is None

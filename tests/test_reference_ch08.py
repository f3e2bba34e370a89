"""Chapter 08 references against independent authorities: the exact prefix probabilities of
the domain corpus against brute-force enumeration, Bayes' rule written out, Hugging Face's
Mixtral and Switch Transformer modules and loss functions with copied weights, PyTorch's own
parameter and FLOP counts, and gloo in two real processes."""

import math
import random
from dataclasses import replace

import pytest
import torch
from conftest import run_gloo
from hypothesis import given, settings
from hypothesis import strategies as st

from llmcourse.data import domains as DOM
from llmcourse.data import synthetic as SYN
from llmcourse.reference import demix as DX
from llmcourse.reference import expert_models as XM
from llmcourse.reference import moe as M
from llmcourse.reference import scaling as S
from llmcourse.reference.gpt import GPTConfig

F64 = torch.float64
HYP = settings(max_examples=25, deadline=None)


# --- the domain corpus -----------------------------------------------------------------

def _tiny_domains():
    t = replace(SYN.Language.tiny(), domain_weights=(1.0, 0.0, 0.0))
    a = replace(t, names=(("Tom", "he"), ("Mia", "she")))
    b = replace(t, names=(("Mia", "she"), ("Tom", "he")), event_weights=(0.1, 0.5, 0.2, 0.2))
    return a, b


def test_prefix_probabilities_equal_enumeration():
    a, b = _tiny_domains()
    docs = {lang: list(SYN.enumerate_documents(lang)) for lang in (a, b)}
    for lang in (a, b):
        assert abs(sum(math.exp(lp) for _, lp in docs[lang]) - 1) < 1e-12
    for doc, _ in random.Random(0).sample(docs[a], 25):
        offsets, ll = DOM.boundary_log_likelihoods(doc, (a, b))
        for e, row in zip(offsets, ll):
            for lang, lp in zip((a, b), row):
                brute = sum(math.exp(l) for d, l in docs[lang] if d.startswith(doc[:e]))
                assert abs(math.exp(lp) - brute) < 1e-12, (doc[:e], lang is a)


def test_posterior_is_bayes_rule_on_the_exact_likelihoods():
    doc = DOM.documents("farm", 1, seed=5)[0]
    prior = [0.5, 0.3, 0.2]
    offsets, post = DOM.true_log_posterior(doc, prior=prior)
    _, ll = DOM.boundary_log_likelihoods(doc)
    for row_p, row_l in zip(post, ll):
        joint = [math.exp(l) * p for l, p in zip(row_l, prior)]
        for lp, j in zip(row_p, joint):
            assert abs(math.exp(lp) - j / sum(joint)) < 1e-9
    assert [math.exp(x) for x in post[0]] == pytest.approx(prior)  # nothing seen yet
    assert offsets[-1] == len(doc) and all(math.isfinite(x) for x in post[-1])


def test_no_header_announces_the_domain_and_evidence_builds_up():
    heads = {DOM.documents(d, 1, 3)[0][:29] for d in DOM.LANGUAGES}
    assert heads == {"Once upon a time, there was a"}
    right = 0
    for d_i, d in enumerate(DOM.TRAIN_DOMAINS):
        for doc in DOM.documents(d, 6, seed=2):
            _, post = DOM.true_log_posterior(doc)
            assert max(post[7]) == pytest.approx(math.log(1 / 3))  # header: no evidence
            right += max(range(3), key=lambda i: post[-1][i]) == d_i
    assert right >= 15  # by the end of a story its domain is usually clear


def test_domain_floors_and_corpus():
    for d in DOM.LANGUAGES:
        f = DOM.domain_floor(d, n_docs=300)
        assert 0.1 < f.nats_per_char < 0.3
    text, labels = DOM.mixed_corpus(20_000, seed=0)
    assert len(SYN.split_documents(text)) == len(labels) and set(labels) == {0, 1, 2}
    assert DOM.corpus("town", 5000, 1) == DOM.corpus("town", 5000, 1)


# --- DEMix -------------------------------------------------------------------------------

@HYP
@given(st.integers(1, 4), st.integers(1, 3), st.integers(1, 12), st.integers(0, 10_000))
def test_domain_posterior_is_bayes_position_by_position(D, B, T, seed):
    g = torch.Generator().manual_seed(seed)
    lp = -torch.rand(D, B, T, generator=g, dtype=F64) * 3
    prior = torch.rand(D, generator=g, dtype=F64) + 0.1
    prior /= prior.sum()
    post = DX.domain_posterior(lp, prior.log())
    for b in range(B):
        for t in range(T):
            lik = [math.prod(math.exp(lp[d, b, s].item()) for s in range(t)) for d in range(D)]
            joint = [l * p for l, p in zip(lik, prior.tolist())]
            assert post[b, t].tolist() == pytest.approx([j / sum(joint) for j in joint], rel=1e-9)


def test_domain_posterior_survives_long_prefixes():
    lp = torch.full((3, 1, 2000), -2.0, dtype=F64)
    lp[0] -= 0.01
    post = DX.domain_posterior(lp, torch.full((3,), 1 / 3, dtype=F64).log())
    assert torch.isfinite(post).all() and post[0, -1, 1] > 0.99 / 2


@HYP
@given(st.integers(1, 4), st.integers(1, 3), st.integers(1, 5), st.integers(2, 7), st.integers(0, 10_000))
def test_mixture_is_the_posterior_weighted_sum_of_probabilities(D, B, T, V, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(D, B, T, V, generator=g, dtype=F64) * 3
    post = torch.softmax(torch.randn(B, T, D, generator=g, dtype=F64), -1)
    want = sum(post[..., d, None] * torch.softmax(logits[d], -1) for d in range(D))
    torch.testing.assert_close(DX.mixture_log_probs(logits, post).exp(), want)


def test_prior_update_routing_add_remove():
    prior = torch.tensor([0.5, 0.3, 0.2], dtype=F64)
    post = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]], dtype=F64)
    torch.testing.assert_close(DX.update_prior(prior, post, 0.3),
                               0.3 * prior + 0.7 * torch.tensor([0.5, 0.5, 0], dtype=F64))
    g = torch.Generator().manual_seed(0)
    w = [torch.randn(3, 5, 4, generator=g, dtype=F64), torch.randn(3, 5, generator=g, dtype=F64),
         torch.randn(3, 4, 5, generator=g, dtype=F64), torch.randn(3, 4, generator=g, dtype=F64)]
    x = torch.randn(4, 6, 4, generator=g, dtype=F64)
    dom = torch.tensor([2, 0, 2, 1])
    out = DX.domain_routed_ffn(x, dom, *w)
    for b, d in enumerate(dom.tolist()):
        lin1 = torch.nn.Linear(4, 5).double()
        lin2 = torch.nn.Linear(5, 4).double()
        with torch.no_grad():
            lin1.weight.copy_(w[0][d]), lin1.bias.copy_(w[1][d])
            lin2.weight.copy_(w[2][d]), lin2.bias.copy_(w[3][d])
        torch.testing.assert_close(out[b], lin2(torch.nn.functional.gelu(lin1(x[b]), approximate="tanh")))
    added = DX.add_expert(w, torch.tensor([0.1, 0.7, 0.2]))
    for old, new in zip(w, added):
        assert torch.equal(new[:3], old) and torch.equal(new[3], old[1])
    removed, p = DX.remove_expert(w, prior, 0)
    assert torch.equal(removed[0], w[0][1:]) and p.tolist() == pytest.approx([0.6, 0.4])


# --- Sparse routing vs Hugging Face ------------------------------------------------------

def _mixtral_block(C, I, E, k, seed):
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    cfg = MixtralConfig(hidden_size=C, intermediate_size=I, num_local_experts=E,
                        num_experts_per_tok=k, router_jitter_noise=0.0)
    torch.manual_seed(seed)
    block = MixtralSparseMoeBlock(cfg).double().eval()
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.5)
    return block


@HYP
@given(st.integers(2, 6), st.integers(1, 3), st.integers(1, 9), st.integers(0, 1000))
def test_top_k_mixture_equals_hf_mixtral(E, k, N, seed):
    k = min(k, E)
    block = _mixtral_block(8, 6, E, k, seed)
    x = torch.randn(1, N, 8, dtype=F64, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        want = block(x)[0]  # HF's router takes its softmax in float32: float32 tolerances
        mine = M.MixtralStyleMoE(8, 6, E, k).double().load_mixtral(block)
        tol = dict(rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(mine(x)[0], want, **tol)
        args = (x[0], block.gate.weight, block.experts.gate_up_proj, block.experts.down_proj, k)
        torch.testing.assert_close(M.moe_forward(*args), want, **tol)
        torch.testing.assert_close(M.moe_forward_dispatched(*args), M.moe_forward(*args))
        _, hf_w, hf_i = block.gate(x[0])
        w, i = M.top_k_route(x[0] @ block.gate.weight.T, k)
        assert torch.equal(i, hf_i) and torch.allclose(w, hf_w.to(F64))


def test_softmax_over_the_kept_logits_is_the_renormalised_top_k():
    logits = torch.randn(20, 6, dtype=F64)
    w, i = M.top_k_route(logits, 2)
    torch.testing.assert_close(torch.softmax(logits.gather(-1, i), -1), w)
    raw, _ = M.top_k_route(logits, 2, normalize=False)
    assert (raw.sum(-1) < 1).all()


def test_dispatch_groups_by_expert_in_token_order():
    idx = torch.tensor([[2, 0], [0, 1], [2, 1]])
    token, slot, counts = M.dispatch(idx, 4)
    assert token.tolist() == [0, 1, 1, 2, 0, 2] and slot.tolist() == [1, 0, 1, 1, 0, 0]
    assert counts.tolist() == [2, 2, 2, 0] and torch.equal(idx[token, slot], torch.tensor([0, 0, 1, 1, 2, 2]))


def _switch(C, H, E, capacity, seed):
    from transformers import SwitchTransformersConfig
    from transformers.models.switch_transformers.modeling_switch_transformers import (
        SwitchTransformersSparseMLP)

    cfg = SwitchTransformersConfig(d_model=C, d_ff=H, num_experts=E, expert_capacity=capacity,
                                   router_dtype="float32", router_jitter_noise=0.0,
                                   dropout_rate=0.0, dense_act_fn="relu")
    torch.manual_seed(seed)
    mlp = SwitchTransformersSparseMLP(cfg).eval()  # its router only runs in float32
    with torch.no_grad():
        for p in mlp.parameters():
            p.normal_(0, 0.5)
    return mlp


@HYP
@given(st.integers(2, 5), st.integers(1, 3), st.integers(2, 12),
       st.sampled_from([0.25, 0.5, 1.0, 1.25, 2.0]), st.integers(0, 1000))
def test_switch_layer_equals_hf_with_capacity(E, G, T, cf, seed):
    cap = M.expert_capacity(T, E, cf)
    mlp = _switch(6, 10, E, cap, seed)
    x = torch.randn(G, T, 6, generator=torch.Generator().manual_seed(seed))
    w_in = torch.stack([mlp.experts[f"expert_{e}"].wi.weight for e in range(E)])
    w_out = torch.stack([mlp.experts[f"expert_{e}"].wo.weight for e in range(E)])
    with torch.no_grad():
        torch.testing.assert_close(M.switch_layer(x, mlp.router.classifier.weight, w_in, w_out, cf),
                                   x + mlp(x))
        hf_mask, hf_p, logits = mlp.router(x)
        mask, gate = M.switch_route(logits, cf)
        assert torch.equal(mask, hf_mask) and torch.allclose(gate, hf_p[..., 0])


@HYP
@given(st.integers(2, 8), st.integers(1, 3), st.integers(1, 40), st.integers(0, 1000))
def test_aux_losses_equal_hf(E, k, N, seed):
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func as mixtral_lb
    from transformers.models.switch_transformers.modeling_switch_transformers import (
        load_balancing_loss_func as switch_lb, router_z_loss_func)

    k = min(k, E)
    logits = torch.randn(N, E, generator=torch.Generator().manual_seed(seed)) * 3
    torch.testing.assert_close(M.load_balancing_loss(logits, k), mixtral_lb((logits,), E, k))
    if k == 1:
        probs = torch.softmax(logits, -1)
        torch.testing.assert_close(M.load_balancing_loss(logits, 1),
                                   switch_lb(probs[None], probs.argmax(-1)[None]))
    torch.testing.assert_close(M.router_z_loss(logits), router_z_loss_func(logits[None]))


def test_balanced_routing_has_load_balancing_loss_one():
    E = 4
    logits = torch.zeros(8, E)
    logits[torch.arange(8), torch.arange(8) % E] = 5.0
    assert M.load_balancing_loss(logits, 1).item() == pytest.approx(1.0)
    collapsed = torch.zeros(8, E)
    collapsed[:, 0] = 5.0
    assert M.load_balancing_loss(collapsed, 1).item() > 3.5


# --- Expert parallelism -------------------------------------------------------------------

def test_simulated_expert_parallel_equals_dense():
    g = torch.Generator().manual_seed(1)
    E, C, H, R = 4, 5, 7, 2
    w_in, w_out = torch.randn(E, H, C, generator=g, dtype=F64), torch.randn(E, C, H, generator=g, dtype=F64)
    xs = [torch.randn(n, C, generator=g, dtype=F64) for n in (6, 3)]
    es = [torch.randint(0, E, (len(x),), generator=g) for x in xs]
    gs = [torch.rand(len(x), generator=g, dtype=F64) for x in xs]
    outs, counts = M.expert_parallel_forward(xs, es, gs, w_in, w_out)
    for x, e, gt, y in zip(xs, es, gs, outs):
        want = torch.stack([torch.relu(x[i] @ w_in[j].T) @ w_out[j].T for i, j in enumerate(e.tolist())])
        torch.testing.assert_close(y, want * gt[:, None])
    assert counts.sum(1).tolist() == [6, 3]
    assert counts[0, 1] == int((es[0] >= 2).sum())


def test_two_process_gloo_expert_parallel():
    """The real thing: two processes, gloo, all_to_all_single. Skips where sockets are unavailable."""
    results = run_gloo(M.run_expert_parallel_local, 2)
    assert [r["rank"] for r in results] == [0, 1]
    assert all(r["max_err"] < 1e-12 for r in results)


# --- Counting -------------------------------------------------------------------------------

@pytest.mark.parametrize("C,H,E,k,R", [(16, 64, 4, 1, 2), (8, 12, 6, 2, 3), (32, 16, 8, 2, 8)])
def test_layer_counts_match_numel_and_flop_counter(C, H, E, k, R):
    from torch.utils.flop_counter import FlopCounterMode

    layer = XM.SparseFFN(C, H, E, k)
    total, active, flops, per_rank = M.moe_layer_counts(C, H, E, k, R)
    assert total == sum(p.numel() for p in layer.parameters())
    assert per_rank == (total - C * E) // R + C * E
    x = torch.randn(2, 9, C)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        layer(x)
    assert counter.get_total_flops() == flops * 18
    expert = (total - C * E) // E
    assert active == k * expert + C * E


@pytest.mark.parametrize("E,k,d_ff", [(4, 1, 64), (4, 2, 32), (8, 2, 16)])
def test_moe_gpt_counts_match_numel_and_flop_counter(E, k, d_ff):
    cfg = GPTConfig(vocab_size=100, block_size=24, n_layer=2, n_head=2, n_embd=16)
    model = XM.MoEGPT(cfg, E, k, d_ff=d_ff)
    total, active, flops = S.moe_gpt_counts(100, 24, 2, 16, E, k, d_ff, seq_len=24)
    assert total == S.count_parameters(model)
    idx = torch.randint(0, 100, (3, 24))
    assert S.measure_flops(model, idx, backward=False) == flops * idx.numel()
    expert = 2 * 16 * d_ff + d_ff + 16
    assert active == total - 2 * (E - k) * expert


def test_demix_and_moe_gpts_train_a_step():
    cfg = GPTConfig(vocab_size=256, block_size=16, n_layer=1, n_head=2, n_embd=16)
    torch.manual_seed(0)
    dm = XM.DEMixGPT(cfg, 3)
    idx = torch.randint(0, 256, (4, 16))
    out = dm(idx, torch.tensor([0, 1, 2, 0]))
    out.sum().backward()
    assert dm.gpt.transformer.h[0].mlp.w_fc.grad[1].abs().sum() > 0
    dm.zero_grad()
    dm(idx, 2).sum().backward()
    assert dm.gpt.transformer.h[0].mlp.w_fc.grad[0].abs().sum() == 0  # other experts untouched
    mix, paths, post = XM.demix_scores(dm, ["Once upon a time.\n", "ab\n"], 16,
                                       torch.full((3,), 1 / 3))
    assert mix.shape == (2, 16) and paths.shape == (3, 2, 16) and post.shape == (2, 16, 3)
    sw = XM.MoEGPT(cfg, 4, 1, capacity_factor=0.5)
    loss = XM.moe_loss()(sw, idx, idx)
    loss.backward()
    assert 0 < sw.moe_layers()[0].last_dropped < 1


def test_eval_texts_are_cut_at_word_boundaries_with_exact_log_probs():
    for text, lp in DOM.eval_set("mixed", 12, 100, seed=3):
        assert len(text) <= 100 or text.endswith("\n")
        assert text.endswith((" ", "\n"))
        offsets, ll = DOM.boundary_log_likelihoods(text, ("mixed",))
        assert offsets[-1] == len(text) and ll[-1][0] == pytest.approx(lp, abs=1e-9)
        full = [d for d in DOM.documents("mixed", 12, 3) if d.startswith(text)]
        assert full and lp >= DOM.cross_log_prob(full[0], "mixed") - 1e-9  # a prefix is likelier

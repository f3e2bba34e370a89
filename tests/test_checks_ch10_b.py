"""Chapter 10 (part B) exercise specs: other correct ways of writing each answer pass (a
Python loop with autograd, Opacus's clip factor, BLOOM-style slopes, F.layer_norm, logsigmoid),
the issue's named mistakes are diagnosed, and the authorities the tests use stay off limits in
the answers."""

import math

import pytest
import torch
import torch.nn.functional as F

from llmcourse.checks import all_exercises, get, run
from llmcourse.checks.forbidden import violations_for
from llmcourse.reference.privacy import mlp_loss

IDS_B = ["10.alibi_bias", "10.dp_aggregate", "10.dpo_loss", "10.fedavg", "10.induction_score",
         "10.logit_lens", "10.per_example_grads", "10.sequence_logprob"]


def test_chapter_registers_part_b_exercises():
    assert set(IDS_B) <= {e.id for e in all_exercises("10")}


# -- alternative correct implementations ------------------------------------------------------

def peg_loop(params, x, y):
    rows = {k: [] for k in params}
    for i in range(len(y)):
        p = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
        mlp_loss(p, x[i:i + 1], y[i:i + 1]).backward()
        for k in p:
            rows[k].append(p[k].grad)
    return {k: torch.stack(v) for k, v in rows.items()}


def dp_opacus_style(grads, C, sigma, noise):
    N = next(iter(grads.values())).shape[0]
    norms = torch.stack([g.reshape(N, -1).norm(dim=1) for g in grads.values()], 1).norm(dim=1)
    f = (C / (norms + 1e-6)).clamp(max=1.0)
    return {k: (torch.einsum("i,i...", f.to(g.dtype), g) + sigma * C * noise[k]) / N
            for k, g in grads.items()}


def fedavg_autograd(params, clients, lr, local_steps=1):
    n = sum(len(y) for _, y in clients)
    out = {k: torch.zeros_like(v) for k, v in params.items()}
    for x, y in clients:
        p = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
        for _ in range(local_steps):
            grads = torch.autograd.grad(mlp_loss(p, x, y), list(p.values()))
            p = {k: (v - lr * g).detach().requires_grad_() for (k, v), g in zip(p.items(), grads)}
        for k in out:
            out[k] = out[k] + p[k].detach() * (len(y) / n)
    return out


def alibi_bloom_style(n_heads, T):
    closest = 2 ** math.floor(math.log2(n_heads))
    base = 2 ** (-(2 ** -(math.log2(closest) - 3)))
    slopes = [base ** i for i in range(1, closest + 1)]
    if closest != n_heads:
        extra = 2 ** (-(2 ** -(math.log2(2 * closest) - 3)))
        slopes += [extra ** i for i in range(1, 2 * (n_heads - closest), 2)]
    m = torch.tensor(slopes, dtype=torch.float64)
    i = torch.arange(T)
    dist = (i[None, :] - i[:, None]).double()  # j - i
    return (m[:, None, None] * dist).masked_fill(dist > 0, float("-inf")).float()


def lens_layer_norm(resid, ln_weight, ln_bias, unembed, eps=1e-5):
    return F.layer_norm(resid, resid.shape[-1:], ln_weight, ln_bias, eps) @ unembed.T


def induction_diagonal(attn):
    n = attn.shape[-1] // 2
    return attn.diagonal(offset=-(n - 1), dim1=-2, dim2=-1)[..., 1:].mean(-1)


def seq_logprob_cross_entropy(logits, targets, mask):
    nll = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    return -(nll * mask).sum(-1)


def dpo_logsigmoid(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1):
    logits = (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)
    return -F.logsigmoid(beta * logits).mean()


@pytest.mark.parametrize("exid,fn", [
    ("10.per_example_grads", peg_loop), ("10.dp_aggregate", dp_opacus_style),
    ("10.fedavg", fedavg_autograd), ("10.alibi_bias", alibi_bloom_style),
    ("10.logit_lens", lens_layer_norm), ("10.induction_score", induction_diagonal),
    ("10.sequence_logprob", seq_logprob_cross_entropy), ("10.dpo_loss", dpo_logsigmoid),
])
def test_other_correct_implementations_pass(exid, fn):
    ex = get(exid)
    for seed, hidden in ((None, False), (11, True), (12345, True)):
        r = run(ex, fn, seed=seed, hidden=hidden)
        assert r.status == "pass", str(r)


# -- the issue's named mistakes ------------------------------------------------------------------

@pytest.mark.parametrize("exid,name", [
    ("10.dp_aggregate", "clipped the batch gradient instead of each example's"),
    ("10.dp_aggregate", "noise scaled by sigma, not sigma * C"),
    ("10.dpo_loss", "reference log-ratio sign flipped"),
    ("10.alibi_bias", "slopes for non-power-of-two heads"),
])
def test_the_issue_mistakes_are_diagnosed(exid, name):
    ex = get(exid)
    mistake = next(m for m in ex.mistakes if m.name == name)
    for seed in (None, 3):
        r = run(ex, mistake.impl, hidden=seed is not None, seed=seed)
        assert r.status == "fail" and r.diagnosis is mistake and name in str(r), str(r)


def test_power_of_two_slopes_pass_the_first_alibi_case():
    """The naive slope formula is right for 8 heads: it fails only on the non-power-of-two
    cases, and is named there."""
    ex = get("10.alibi_bias")
    naive = next(m for m in ex.mistakes if m.name == "slopes for non-power-of-two heads")
    r = run(ex, naive.impl)
    assert r.passed >= 1 and "heads" in r.detail


def test_authorities_are_forbidden_in_answers():
    src = ("from opacus import GradSampleModule\n"
           "def per_example_grads(params, x, y):\n    return GradSampleModule\n")
    found = violations_for("per_example_grads", get("10.per_example_grads").rules, [("cell", src)])
    assert found and "opacus" in str(found[0])
    src = ("from transformers.models.bloom.modeling_bloom import build_alibi_tensor\n"
           "def alibi_bias(n_heads, T, dtype=None):\n    return build_alibi_tensor\n")
    assert violations_for("alibi_bias", get("10.alibi_bias").rules, [("cell", src)])
    # a lab cell may import Opacus when the answer does not use it
    lab = "from opacus import GradSampleModule\n"
    ok = "import torch\ndef dp_aggregate(grads, C, sigma, noise):\n    return grads\n"
    assert not violations_for("dp_aggregate", get("10.dp_aggregate").rules,
                              [("lab", lab), ("cell", ok)])


def test_alignment_notebook_may_import_the_sampler_but_not_the_answers():
    rules = get("10.dpo_loss").rules
    ok = ("from llmcourse.reference.gpt import GPT\n"
          "def dpo_loss(a, b, c, d, beta=0.1):\n    return a.sum()\n")
    assert not violations_for("dpo_loss", rules, [("cell", ok)])
    bad = ("from llmcourse.reference.alignment import dpo_loss as ref\n"
           "def dpo_loss(a, b, c, d, beta=0.1):\n    return ref(a, b, c, d, beta)\n")
    assert violations_for("dpo_loss", rules, [("cell", bad)])

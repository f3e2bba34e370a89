"""Chapter 08 exercise specs: a learner's own (different but right) answers pass public and
hidden cases, and calling Hugging Face's MoE code is forbidden."""

import pytest

from llmcourse.checks import all_exercises, get, run

IDS = ["08.add_expert", "08.dispatch", "08.domain_posterior", "08.excess_per_char",
       "08.expert_parallel", "08.load_balancing", "08.mixture", "08.moe_counts", "08.moe_forward",
       "08.remove_expert", "08.routed_ffn", "08.switch_layer", "08.switch_route",
       "08.top_k_router", "08.update_prior", "08.z_loss"]

# Right answers written differently from the reference.
LEARNER = '''
import math

import torch
import torch.nn.functional as F


def domain_posterior(token_log_probs, log_prior):
    D, B, T = token_log_probs.shape
    zero = torch.zeros(D, B, 1, dtype=token_log_probs.dtype)
    seen = torch.cat([zero, token_log_probs[..., :-1]], dim=-1).cumsum(-1)
    joint = seen + log_prior.view(D, 1, 1)
    return (joint - torch.logsumexp(joint, 0, keepdim=True)).exp().movedim(0, -1)


def update_prior(prior, posterior, decay):
    return prior + (1 - decay) * (posterior.sum(0) / len(posterior) - prior)


def mixture_log_probs(expert_logits, posterior):
    logp = expert_logits - torch.logsumexp(expert_logits, -1, keepdim=True)
    return torch.logsumexp(logp + torch.log(posterior).movedim(-1, 0).unsqueeze(-1), 0)


def domain_routed_ffn(x, domains, w_fc, b_fc, w_proj, b_proj):
    outs = []
    for b, d in enumerate(domains.tolist()):
        h = F.gelu(torch.einsum("tc,hc->th", x[b], w_fc[d]) + b_fc[d], approximate="tanh")
        outs.append(torch.einsum("th,ch->tc", h, w_proj[d]) + b_proj[d])
    return torch.stack(outs)


def add_expert(expert_weights, posterior):
    best = max(range(len(posterior)), key=lambda i: float(posterior[i]))
    return [torch.cat([w, w[best].unsqueeze(0)]) for w in expert_weights]


def remove_expert(expert_weights, prior, d):
    keep = torch.ones(len(prior), dtype=torch.bool)
    keep[d] = False
    return [w[keep] for w in expert_weights], prior[keep] / (1 - prior[d])


def top_k_route(logits, k, normalize=True):
    if normalize:
        vals, idx = logits.topk(k, -1)
        return torch.softmax(vals, -1), idx
    p = torch.softmax(logits, -1)
    return p.topk(k, -1)


def moe_forward(x, router_weight, gate_up, down, k):
    w, idx = top_k_route(x @ router_weight.T, k)
    out = torch.zeros_like(x)
    for n in range(len(x)):
        for j in range(k):
            e = int(idx[n, j])
            I = down.shape[-1]
            g, u = x[n] @ gate_up[e, :I].T, x[n] @ gate_up[e, I:].T
            out[n] += w[n, j] * (down[e] @ (g * torch.sigmoid(g) * u))
    return out


def dispatch(indices, n_experts):
    N, k = indices.shape
    pairs = sorted((int(indices[n, j]), n * k + j) for n in range(N) for j in range(k))
    pos = torch.tensor([p for _, p in pairs], dtype=torch.long)
    counts = torch.zeros(n_experts, dtype=torch.long)
    for e, _ in pairs:
        counts[e] += 1
    return pos // k, pos % k, counts


def switch_route(logits, capacity_factor):
    G, T, E = logits.shape
    cap = math.ceil(capacity_factor * T / E)
    probs = logits.softmax(-1)
    gate = probs.amax(-1)
    choice = probs.argmax(-1)
    out = torch.zeros(G, T, E, dtype=torch.long)
    for g in range(G):
        used = [0] * E
        for t in range(T):
            e = int(choice[g, t])
            if used[e] < cap:
                out[g, t, e] = 1
                used[e] += 1
    return out, gate


def switch_layer(x, router_weight, w_in, w_out, capacity_factor):
    mask, gate = switch_route(x @ router_weight.T, capacity_factor)
    y = x.clone()
    G, T, _ = x.shape
    for g in range(G):
        for t in range(T):
            hit = mask[g, t].nonzero()
            if len(hit):
                e = int(hit[0, 0])
                y[g, t] = x[g, t] + gate[g, t] * (w_out[e] @ torch.relu(w_in[e] @ x[g, t]))
    return y


def load_balancing_loss(router_logits, top_k):
    n_tok, N = router_logits.shape
    p = router_logits.softmax(-1)
    counts = torch.zeros(N, dtype=p.dtype)
    for row in p.topk(top_k, -1).indices:
        counts[row] += 1
    return N * torch.dot(counts / n_tok, p.sum(0) / n_tok)


def router_z_loss(router_logits):
    z = router_logits.reshape(-1, router_logits.shape[-1])
    m = z.amax(-1, keepdim=True)
    lse = (m + (z - m).exp().sum(-1, keepdim=True).log()).squeeze(-1)
    return (lse * lse).sum() / len(lse)


def expert_parallel_forward(x_shards, expert_shards, gate_shards, w_in, w_out):
    R, E = len(x_shards), len(w_in)
    counts = torch.zeros(R, R, dtype=torch.long)
    outputs = []
    for r, (x, es, g) in enumerate(zip(x_shards, expert_shards, gate_shards)):
        y = torch.empty_like(x)
        for i, e in enumerate(es.tolist()):
            counts[r, e * R // E] += 1
            y[i] = g[i] * (w_out[e] @ torch.relu(w_in[e] @ x[i]))
        outputs.append(y)
    return outputs, counts


def moe_layer_counts(d_model, d_ff, n_experts, top_k, n_ranks=1):
    one = d_model * d_ff + d_ff + d_ff * d_model + d_model
    r = n_experts * d_model
    return n_experts * one + r, top_k * one + r, 4 * top_k * d_model * d_ff + 2 * r, one * (n_experts // n_ranks) + r


def excess_per_char(token_log_probs, mask, exact_log_probs, domains, n_domains):
    out = []
    for d in range(n_domains):
        rows = (domains == d).nonzero().flatten().tolist()
        nats = sum(-float(token_log_probs[b][mask[b]].double().sum()) + float(exact_log_probs[b]) for b in rows)
        chars = sum(int(mask[b].sum()) for b in rows)
        out.append(nats / chars)
    return torch.tensor(out, dtype=torch.float64)
'''


def test_chapter_registers_its_exercises():
    assert [e.id for e in all_exercises("08") if getattr(e, "kind", "") != "challenge"] == IDS


@pytest.mark.parametrize("exercise_id", IDS)
def test_a_different_right_answer_passes(learner, exercise_id):
    mod = learner(LEARNER)
    ex = get(exercise_id)
    fn = getattr(mod, ex.entry)
    r = run(ex, fn)
    assert r.status == "pass", str(r)
    r = run(ex, fn, seed=4321, hidden=True)
    assert r.status == "pass", str(r)


def test_hugging_face_moe_code_is_forbidden(learner):
    mod = learner('''
        from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

        def load_balancing_loss(router_logits, top_k):
            return load_balancing_loss_func((router_logits,), router_logits.shape[-1], top_k)
    ''')
    r = run(get("08.load_balancing"), mod.load_balancing_loss)
    assert r.status == "forbidden" and "transformers" in str(r)


def test_probability_space_posterior_is_named_on_the_long_prefix(learner):
    mod = learner('''
        import torch

        def domain_posterior(token_log_probs, log_prior):
            lik = torch.exp(token_log_probs.cumsum(-1) - token_log_probs) * log_prior.exp()[:, None, None]
            return (lik / lik.sum(0)).permute(1, 2, 0)
    ''')
    r = run(get("08.domain_posterior"), mod.domain_posterior)
    assert r.status == "fail" and "a long prefix" in str(r)
    assert r.diagnosis is not None and r.diagnosis.name == "posterior in probability space"

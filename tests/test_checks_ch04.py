"""Chapter 04 exercise specs: every cataloged mistake already fails on the PUBLIC cases and is
named; answers written differently from the reference (loops, other formulas) pass; the
forbidden shortcuts are caught; randomised exercises are exact given the generator."""


import pytest
import torch

from llmcourse.checks import all_exercises, get, run
from llmcourse.checks.runner import PUBLIC_SEED

IDS = ["04.adamw", "04.causal_lm_loss", "04.clip_grad_norm", "04.cosine_lr", "04.electra_loss",
       "04.electra_replace", "04.eval_windows", "04.get_batch", "04.mask_tokens", "04.nsp_pairs",
       "04.prefix_lm_mask", "04.xlnet_masks", "04.xlnet_partial"]

# What a learner might write: other formulas and loops, no course code.
LEARNER = '''
import math

import torch
import torch.nn.functional as F


def causal_lm_loss(logits, labels, ignore_index=-100):
    total, count = 0.0, 0
    logp = torch.log_softmax(logits, dim=-1)
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1] - 1):
            y = int(labels[b, t + 1])
            if y != ignore_index:
                total = total - logp[b, t, y]
                count += 1
    return total / count


def mask_tokens(input_ids, special_mask, mask_token_id, vocab_size, generator, mlm_probability=0.15):
    probs = torch.where(special_mask, 0.0, mlm_probability)
    selected = torch.bernoulli(probs, generator=generator) == 1
    to_mask = (torch.bernoulli(torch.full(input_ids.shape, 0.8), generator=generator) == 1) & selected
    coin = torch.bernoulli(torch.full(input_ids.shape, 0.5), generator=generator) == 1
    to_random = coin & selected & ~to_mask
    random_ids = torch.randint(0, vocab_size, input_ids.shape, generator=generator)
    out = input_ids.clone()
    out[to_mask] = mask_token_id
    out[to_random] = random_ids[to_random]
    labels = torch.full_like(input_ids, -100)
    labels[selected] = input_ids[selected]
    return out, labels


def nsp_pairs(doc_ids, generator):
    docs = doc_ids.tolist()
    a = [i for i in range(len(docs) - 1) if docs[i] == docs[i + 1]]
    coin = torch.rand(len(a), generator=generator) < 0.5
    u = torch.rand(len(a), generator=generator)
    b = []
    for k, i in enumerate(a):
        others = [s for s, d in enumerate(docs) if d != docs[i]]
        b.append(i + 1 if coin[k] else others[int(u[k] * len(others))])
    return torch.tensor(a), torch.tensor(b), coin.long()


def prefix_lm_mask(T, prefix_len):
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    out = causal.repeat(len(prefix_len), 1, 1)
    for b, p in enumerate(prefix_len.tolist()):
        out[b, :p, :p] = True
    return out


def electra_replace(input_ids, masked, gen_logits, generator):
    u = torch.rand(gen_logits.shape, generator=generator, dtype=gen_logits.dtype)
    gumbel = -torch.log(-torch.log(u))
    sample = torch.argmax(gen_logits + gumbel, dim=-1)
    corrupted = input_ids.clone()
    corrupted[masked] = sample[masked]
    return corrupted, (corrupted != input_ids).to(torch.int64)


def electra_loss(gen_logits, mlm_labels, disc_logits, disc_labels, attention_mask, disc_weight=50.0):
    sel = mlm_labels != -100
    gen = -torch.log_softmax(gen_logits[sel], -1).gather(-1, mlm_labels[sel][:, None]).mean()
    z, y = disc_logits[attention_mask], disc_labels[attention_mask].to(disc_logits.dtype)
    disc = (torch.clamp(z, min=0) - z * y + torch.log1p(torch.exp(-z.abs()))).mean()
    return gen + disc_weight * disc, gen, disc


class AdamW(torch.optim.Optimizer):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if len(state) == 0:
                    state["t"] = 0
                    state["m"] = torch.zeros_like(p)
                    state["v"] = torch.zeros_like(p)
                state["t"] += 1
                t = state["t"]
                p.mul_(1 - group["lr"] * group["weight_decay"])
                state["m"].lerp_(p.grad, 1 - beta1)
                state["v"].mul_(beta2).add_((1 - beta2) * p.grad ** 2)
                step_size = group["lr"] / (1 - beta1 ** t)           # torch's own arrangement
                denom = state["v"].sqrt() / math.sqrt(1 - beta2 ** t) + group["eps"]
                p.addcdiv_(state["m"], denom, value=-step_size)


def clip_grad_norm(grads, max_norm):
    total = math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads))
    total = torch.tensor(total, dtype=grads[0].dtype)
    coef = min(1.0, max_norm / (float(total) + 1e-6))
    return [g * coef for g in grads], total


def cosine_lr(step, max_lr, warmup_steps, total_steps, min_lr=0.0):
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    ratio = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + (max_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * ratio))


def get_batch(tokens, batch_size, block_size, generator):
    starts = torch.randint(0, len(tokens) - block_size, (batch_size,), generator=generator)
    x = torch.stack([tokens[s:s + block_size] for s in starts.tolist()])
    y = torch.stack([tokens[s + 1:s + block_size + 1] for s in starts.tolist()])
    return x, y


def eval_windows(tokens, block_size):
    n = (len(tokens) - 1) // block_size
    x = tokens[:n * block_size].view(n, block_size)
    y = tokens[1:n * block_size + 1].view(n, block_size)
    return x, y


def _one_order(order, num_predict):
    T = len(order)
    rank = [0] * T
    for t, p in enumerate(order):
        rank[p] = t
    c = T - num_predict
    content = torch.zeros(T, T, dtype=torch.bool)
    query = torch.zeros(T, T, dtype=torch.bool)
    for i in range(T):
        for j in range(T):
            content[i, j] = rank[j] <= rank[i] or rank[j] < c
            query[i, j] = rank[j] < rank[i] or rank[j] < c
    targets = torch.tensor([rank[p] >= c for p in range(T)])
    return content, query, targets


def partial_prediction(z, num_predict):
    rows = [z.tolist()] if z.dim() == 1 else z.tolist()
    parts = [_one_order(order, num_predict) for order in rows]
    stacked = tuple(torch.stack(p) for p in zip(*parts))
    return stacked if z.dim() == 2 else tuple(s[0] for s in stacked)


def two_stream_masks(z):
    content, query, _ = partial_prediction(z, z.shape[-1])
    return content, query
'''


def test_chapter_registers_its_exercises():
    assert [e.id for e in all_exercises("04") if getattr(e, "kind", "") != "challenge"] == IDS


@pytest.mark.parametrize("exercise_id", IDS)
def test_every_mistake_fails_on_public_cases_and_is_named(exercise_id):
    ex = get(exercise_id)
    names = [m.name for m in ex.mistakes]
    assert len(names) == len(set(names)) >= 4
    for mistake in ex.mistakes:
        result = run(ex, mistake.impl)  # public cases only
        assert result.status in ("fail", "error"), (mistake.name, str(result))
        assert result.diagnosis is mistake, (mistake.name, str(result))


@pytest.mark.parametrize("exercise_id", IDS)
def test_hidden_cases_differ_from_public(exercise_id):
    ex = get(exercise_id)
    public = {c.label for c in ex.cases(PUBLIC_SEED, False)}
    hidden = {c.label for c in ex.cases(1234, True)} - public
    assert len(hidden) >= 3


@pytest.mark.parametrize("exercise_id", IDS)
def test_answers_written_differently_pass(learner, exercise_id):
    module = learner(LEARNER)
    ex = get(exercise_id)
    for seed in (None, 11):
        result = run(ex, getattr(module, ex.entry), seed=seed, hidden=seed is not None)
        assert result.status == "pass", str(result)


def test_randomised_exercises_depend_on_the_generator(learner):
    """Ignoring the generator (the global RNG instead) fails: the check is exact."""
    module = learner(LEARNER.replace("generator=generator", "generator=None"))
    for exercise_id in ("04.mask_tokens", "04.nsp_pairs", "04.electra_replace", "04.get_batch"):
        ex = get(exercise_id)
        assert run(ex, getattr(module, ex.entry)).status == "fail", exercise_id


@pytest.mark.parametrize("source,exercise_id,name", [
    ('''
    import torch
    class AdamW(torch.optim.AdamW):
        pass
    ''', "04.adamw", "torch.optim.AdamW"),
    ('''
    import torch
    def clip_grad_norm(grads, max_norm):
        total = torch.nn.utils.get_total_norm(grads)
        return [g * min(1.0, max_norm / (total + 1e-6)) for g in grads], total
    ''', "04.clip_grad_norm", "torch.nn.utils"),
    ('''
    import torch.nn.functional as F
    def causal_lm_loss(logits, labels, ignore_index=-100):
        return F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=ignore_index)
    ''', "04.causal_lm_loss", "cross_entropy"),
    ('''
    def cosine_lr(step, max_lr, warmup_steps, total_steps, min_lr=0.0):
        from llmcourse.reference.training import cosine_lr as lr
        return lr(step, max_lr, warmup_steps, total_steps, min_lr)
    ''', "04.cosine_lr", "llmcourse.reference"),
])
def test_forbidden_shortcuts(learner, source, exercise_id, name):
    module = learner(source, name="cheater_ch04")
    ex = get(exercise_id)
    result = run(ex, getattr(module, ex.entry))
    assert result.status == "forbidden" and name in str(result), str(result)


def test_adamw_check_runs_100_steps_and_rejects_plain_adam():
    ex = get("04.adamw")
    assert all(c.kwargs["steps"] >= 100 for c in ex.cases(0, True))

    class PlainAdam(torch.optim.Optimizer):  # bias-corrected Adam, no decay at all
        def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
            super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

        @torch.no_grad()
        def step(self, closure=None):
            for group in self.param_groups:
                b1, b2 = group["betas"]
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    st = self.state[p]
                    if not st:
                        st.update(t=0, m=torch.zeros_like(p), v=torch.zeros_like(p))
                    st["t"] += 1
                    st["m"].mul_(b1).add_(p.grad, alpha=1 - b1)
                    st["v"].mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                    m_hat = st["m"] / (1 - b1 ** st["t"])
                    v_hat = st["v"] / (1 - b2 ** st["t"])
                    p.sub_(group["lr"] * m_hat / (v_hat.sqrt() + group["eps"]))

    result = run(ex, PlainAdam)
    assert result.status == "fail" and result.diagnosis is None


def test_pretraining_notebook_may_import_the_trainer_but_not_the_batching_answers(learner):
    ok = learner('''
    from llmcourse.reference.gpt import GPT, GPTConfig
    from llmcourse.reference.training import TrainConfig, encode, evaluate_windows, make_optimizer, train_steps
    import torch

    def eval_windows(tokens, block_size):
        n = (len(tokens) - 1) // block_size
        return tokens[:n * block_size].view(n, -1), tokens[1:n * block_size + 1].view(n, -1)
    ''')
    assert run(get("04.eval_windows"), ok.eval_windows).status == "pass"
    bad = learner('''
    from llmcourse.reference.training import get_batch as course_batch

    def get_batch(tokens, batch_size, block_size, generator):
        return course_batch(tokens, batch_size, block_size, generator)
    ''', name="cheater_ch04")
    result = run(get("04.get_batch"), bad.get_batch)
    assert result.status == "forbidden" and "training.get_batch" in str(result)
    # train_lm batches with the reference get_batch: calling it is refused too
    via_trainer = learner('''
    from llmcourse.reference.training import evaluate_lm

    def eval_windows(tokens, block_size):
        return evaluate_lm
    ''', name="cheater_ch04_trainer")
    result = run(get("04.eval_windows"), via_trainer.eval_windows)
    assert result.status == "forbidden" and "training.evaluate_lm" in str(result)

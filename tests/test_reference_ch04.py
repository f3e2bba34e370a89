"""Chapter 04 references against independent authorities: PyTorch's cross-entropy, AdamW,
clip_grad_norm_ and cosine annealing; Hugging Face's causal-LM loss and masked-LM collator;
closed forms; and statistical tests of every randomised objective on large inputs."""

import math

import pytest
import torch
import torch.nn.functional as F

from llmcourse.reference import attention as attention_ref
from llmcourse.reference import optim as optim_ref
from llmcourse.reference import pretraining as pretraining_ref
from llmcourse.reference import training as training_ref

F64 = torch.float64


def z_score(count: int, n: int, p: float) -> float:
    """How many standard errors a binomial count is from its mean."""
    return (count - n * p) / math.sqrt(n * p * (1 - p))


def chi2_ok(counts: torch.Tensor, probs: torch.Tensor) -> bool:
    """Pearson chi-square test at a very small significance level (~1e-6, wilson-hilferty)."""
    n = counts.sum().item()
    exp = probs * n
    stat = ((counts - exp) ** 2 / exp).sum().item()
    k = counts.numel() - 1
    # Wilson-Hilferty: (stat/k)^(1/3) is ~ normal(1 - 2/(9k), 2/(9k))
    z = ((stat / k) ** (1 / 3) - (1 - 2 / (9 * k))) / math.sqrt(2 / (9 * k))
    return z < 5.0


# --- causal LM loss -----------------------------------------------------------------------

def test_causal_lm_loss_matches_pytorch_and_hf():
    from transformers.loss.loss_utils import ForCausalLMLoss

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 11, generator=g)
    labels = torch.randint(0, 11, (3, 7), generator=g)
    labels[0, 4:] = -100
    labels[2, :2] = -100
    ours = pretraining_ref.causal_lm_loss(logits, labels)
    torch_ = F.cross_entropy(logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1), ignore_index=-100)
    hf = ForCausalLMLoss(logits, labels, vocab_size=11)
    torch.testing.assert_close(ours, torch_)
    torch.testing.assert_close(ours, hf)


def test_causal_lm_loss_uniform_is_log_v_and_custom_ignore():
    logits = torch.zeros(2, 5, 13, dtype=F64)
    labels = torch.tensor([[1, 2, 3, 4, 5], [7, 7, -1, -1, -1]])
    assert math.isclose(pretraining_ref.causal_lm_loss(logits, labels, ignore_index=-1).item(), math.log(13))


# --- masked LM -----------------------------------------------------------------------------

class _Tok:
    """Just enough tokenizer for DataCollatorForLanguageModeling.torch_mask_tokens."""
    mask_token = "[MASK]"

    def __init__(self, n, mask_id):
        self.n, self.mask_id = n, mask_id

    def __len__(self):
        return self.n

    def convert_tokens_to_ids(self, token):
        return self.mask_id


def _mlm_batch(g, B=4, T=50, V=30):
    ids = torch.randint(5, V, (B, T), generator=g)
    ids[:, 0], ids[:, -1] = 1, 2  # [CLS] ... [SEP]
    ids[1, 30:] = 0  # padding
    return ids, (ids <= 2)


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_mask_tokens_equals_huggingface_collator(seed):
    from transformers import DataCollatorForLanguageModeling

    ids, special = _mlm_batch(torch.Generator().manual_seed(100 + seed))
    collator = DataCollatorForLanguageModeling(tokenizer=_Tok(30, 3), mlm_probability=0.15)
    collator.generator = torch.Generator().manual_seed(seed)
    hf_inputs, hf_labels = collator.torch_mask_tokens(ids.clone(), special_tokens_mask=special.clone())
    inputs, labels = pretraining_ref.mask_tokens(ids, special, 3, 30, torch.Generator().manual_seed(seed))
    assert torch.equal(inputs, hf_inputs) and torch.equal(labels, hf_labels)


def test_mask_tokens_proportions():
    g = torch.Generator().manual_seed(0)
    V, mask_id = 1000, 3
    ids = torch.randint(5, V, (400, 500), generator=g)
    special = torch.rand(ids.shape, generator=g) < 0.1
    ids[special] = 1
    inputs, labels = pretraining_ref.mask_tokens(ids, special, mask_id, V, g)
    selected = labels != -100
    assert not (selected & special).any(), "a special token was selected"
    assert torch.equal(labels[selected], ids[selected])
    assert torch.equal(inputs[~selected], ids[~selected])
    n_ok = int((~special).sum())
    n_sel = int(selected.sum())
    assert abs(z_score(n_sel, n_ok, 0.15)) < 5
    masked = int((inputs[selected] == mask_id).sum())
    kept = int((inputs[selected] == ids[selected]).sum())
    other = n_sel - masked - kept
    p_rand_mask, p_rand_same = 0.1 / V, 0.1 / V  # a random id can be [MASK] or the original
    assert abs(z_score(masked, n_sel, 0.8 + p_rand_mask)) < 5
    assert abs(z_score(kept, n_sel, 0.1 + p_rand_same)) < 5
    assert abs(z_score(other, n_sel, 0.1 - p_rand_mask - p_rand_same)) < 5
    # the random replacements are uniform over the vocabulary
    rnd = inputs[selected & (inputs != mask_id) & (inputs != ids)]
    counts = torch.bincount(rnd // 100, minlength=10).double()
    assert chi2_ok(counts, torch.full((10,), 0.1, dtype=F64))


# --- next-sentence prediction --------------------------------------------------------------

def _nsp_loop(doc_ids, g):
    """A plain-Python reading of the same contract."""
    docs = doc_ids.tolist()
    a = [i for i in range(len(docs) - 1) if docs[i + 1] == docs[i]]
    coin = (torch.rand(len(a), generator=g) < 0.5).tolist()
    u = torch.rand(len(a), generator=g)
    b = []
    for k, i in enumerate(a):
        others = [s for s in range(len(docs)) if docs[s] != docs[i]]
        j = int((u[k] * len(others)).floor())
        b.append(i + 1 if coin[k] else others[j])
    return a, b, [int(c) for c in coin]


def test_nsp_pairs_equal_a_plain_loop():
    doc_ids = torch.tensor([0, 0, 0, 1, 2, 2, 3, 3, 3, 3, 5, 5])
    for seed in range(5):
        a, b, y = pretraining_ref.nsp_pairs(doc_ids, torch.Generator().manual_seed(seed))
        la, lb, ly = _nsp_loop(doc_ids, torch.Generator().manual_seed(seed))
        assert a.tolist() == la and b.tolist() == lb and y.tolist() == ly
        assert a.dtype == b.dtype == y.dtype == torch.int64


def test_nsp_pairs_statistics():
    sizes = [1, 2, 3, 4, 5, 6]
    doc_ids = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(len(doc_ids), dtype=F64)
    n_next = n_pairs = 0
    a_of_doc5 = []
    for _ in range(4000):
        a, b, y = pretraining_ref.nsp_pairs(doc_ids, g)
        assert torch.equal(doc_ids[a[y == 1]], doc_ids[b[y == 1]]) and torch.equal(b[y == 1], a[y == 1] + 1)
        assert (doc_ids[a[y == 0]] != doc_ids[b[y == 0]]).all()
        n_next += int(y.sum())
        n_pairs += len(y)
        neg = (y == 0) & (doc_ids[a] == 5)
        a_of_doc5.append(b[neg])
    assert abs(z_score(n_next, n_pairs, 0.5)) < 5
    # negatives of document 5's sentences are uniform over the 15 sentences of docs 0-4
    b5 = torch.cat(a_of_doc5)
    counts = torch.bincount(b5, minlength=15).double()
    assert chi2_ok(counts, torch.full((15,), 1 / 15, dtype=F64))


# --- prefix LM -----------------------------------------------------------------------------

def test_prefix_lm_mask_closed_form_and_limits():
    T = 6
    m = pretraining_ref.prefix_lm_mask(T, torch.tensor([0, 3, 6]))
    assert m.shape == (3, T, T) and m.dtype == torch.bool
    assert torch.equal(m[0], attention_ref.causal_mask(T))
    assert m[2].all()
    for i in range(T):
        for j in range(T):
            assert m[1, i, j].item() == (j <= i or (i < 3 and j < 3))


def test_prefix_is_bidirectional_and_suffix_cannot_leak():
    g = torch.Generator().manual_seed(0)
    T, P_len, d = 8, 3, 4
    q, k, v = (torch.randn(T, d, generator=g, dtype=F64) for _ in range(3))
    mask = pretraining_ref.prefix_lm_mask(T, torch.tensor([P_len]))[0]
    out = attention_ref.scaled_dot_product_attention(q, k, v, mask)
    k2, v2 = k.clone(), v.clone()
    k2[P_len:] += 1.0
    v2[P_len:] -= 2.0  # change everything after the prefix
    out2 = attention_ref.scaled_dot_product_attention(q, k2, v2, mask)
    torch.testing.assert_close(out[:P_len], out2[:P_len])  # prefix never sees the suffix
    k3 = k.clone()
    k3[P_len - 1] += 1.0  # the last prefix token changes: the first token must notice
    assert not torch.allclose(attention_ref.scaled_dot_product_attention(q, k3, v, mask)[0], out[0])


# --- ELECTRA -------------------------------------------------------------------------------

def test_electra_sampling_follows_the_generator_softmax():
    g = torch.Generator().manual_seed(0)
    V = 6
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, 0.5, 1.5], dtype=F64)
    n = 40000
    ids = torch.zeros(1, n, dtype=torch.long)
    masked = torch.ones(1, n, dtype=torch.bool)
    corrupted, labels = pretraining_ref.electra_replace(ids, masked, logits.expand(1, n, V), g)
    counts = torch.bincount(corrupted[0], minlength=V).double()
    assert chi2_ok(counts, torch.softmax(logits, -1))
    assert torch.equal(labels, (corrupted != 0).long())


def test_electra_replace_only_masked_positions_and_label_semantics():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 5, (3, 9), generator=g)
    masked = torch.rand(3, 9, generator=g) < 0.5
    logits = torch.full((3, 9, 5), -30.0)
    logits.scatter_(-1, ids.unsqueeze(-1), 30.0)  # the generator is sure of the original
    corrupted, labels = pretraining_ref.electra_replace(ids, masked, logits, g)
    assert torch.equal(corrupted, ids) and not labels.any()  # sampled == original: label 0
    logits2 = torch.full((3, 9, 5), -30.0)
    logits2.scatter_(-1, ((ids + 1) % 5).unsqueeze(-1), 30.0)
    corrupted, labels = pretraining_ref.electra_replace(ids, masked, logits2, g)
    assert torch.equal(labels.bool(), masked)
    assert torch.equal(corrupted[~masked], ids[~masked])


def test_electra_loss_closed_form():
    g = torch.Generator().manual_seed(0)
    B, T, V = 2, 6, 9
    gen_logits = torch.randn(B, T, V, generator=g, dtype=F64)
    mlm = torch.full((B, T), -100)
    mlm[0, 1], mlm[1, 3], mlm[1, 4] = 4, 0, 8
    disc_logits = torch.randn(B, T, generator=g, dtype=F64)
    disc_labels = torch.randint(0, 2, (B, T), generator=g)
    attn = torch.ones(B, T, dtype=torch.bool)
    attn[1, 5] = False
    total, gl, dl = pretraining_ref.electra_loss(gen_logits, mlm, disc_logits, disc_labels, attn)
    lp = torch.log_softmax(gen_logits, -1)
    gen = -(lp[0, 1, 4] + lp[1, 3, 0] + lp[1, 4, 8]) / 3
    z, y = disc_logits[attn], disc_labels[attn].double()
    disc = -(y * F.logsigmoid(z) + (1 - y) * F.logsigmoid(-z)).mean()
    torch.testing.assert_close(gl, gen)
    torch.testing.assert_close(dl, disc)
    torch.testing.assert_close(total, gen + 50 * disc)


# --- AdamW and clipping --------------------------------------------------------------------

def _problem(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(32, 5, generator=g, dtype=dtype)
    Y = torch.randn(32, 3, generator=g, dtype=dtype)
    W = torch.randn(5, 3, generator=g, dtype=dtype)
    b = torch.randn(3, generator=g, dtype=dtype)
    return X, Y, W, b


def _run(opt_cls, dtype, steps=100, **kw):
    X, Y, W0, b0 = _problem(dtype)
    W, b = W0.clone().requires_grad_(), b0.clone().requires_grad_()
    opt = opt_cls([{"params": [W]}, {"params": [b], "weight_decay": 0.0, "lr": 0.02}], **kw)
    for _ in range(steps):
        opt.zero_grad()
        loss = ((torch.tanh(X @ W + b) - Y) ** 2).mean()
        loss.backward()
        opt.step()
    return W.detach(), b.detach()


@pytest.mark.parametrize("dtype,tol", [(F64, 1e-12), (torch.float32, 2e-6)])
@pytest.mark.parametrize("kw", [dict(lr=0.05, weight_decay=0.1),
                                dict(lr=0.01, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.5),
                                dict()])
def test_adamw_matches_torch_over_100_steps(dtype, tol, kw):
    ours = _run(optim_ref.AdamW, dtype, **kw)
    theirs = _run(torch.optim.AdamW, dtype, **kw)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_adamw_decay_alone_is_geometric_and_differs_from_adam_l2():
    p = torch.tensor([1.0, -2.0], dtype=F64, requires_grad=True)
    opt = optim_ref.AdamW([p], lr=0.1, weight_decay=0.5)
    for _ in range(10):
        p.grad = torch.zeros_like(p)
        opt.step()
    torch.testing.assert_close(p.detach(), torch.tensor([1.0, -2.0], dtype=F64) * 0.95 ** 10)
    # Adam with L2 (torch.optim.Adam's weight_decay) is a different optimiser
    assert not torch.allclose(_run(optim_ref.AdamW, F64, weight_decay=0.5)[0],
                              _run(torch.optim.Adam, F64, weight_decay=0.5)[0])


@pytest.mark.parametrize("max_norm", [0.5, 3.0, 1e3])
def test_clip_grad_norm_matches_torch(max_norm):
    g = torch.Generator().manual_seed(0)
    params = [torch.zeros(4, 3, requires_grad=True), torch.zeros(5, requires_grad=True)]
    grads = [torch.randn(4, 3, generator=g), torch.randn(5, generator=g)]
    for p, gr in zip(params, grads):
        p.grad = gr.clone()
    total_torch = torch.nn.utils.clip_grad_norm_(params, max_norm)
    clipped, total = optim_ref.clip_grad_norm(grads, max_norm)
    torch.testing.assert_close(total, total_torch)
    for p, c in zip(params, clipped):
        torch.testing.assert_close(c, p.grad)
    new_norm = torch.stack([c.norm() for c in clipped]).norm()
    assert new_norm <= max_norm * (1 + 1e-6)
    assert clipped[0] is not grads[0] and grads[0].abs().sum() > 0  # inputs untouched


# --- schedule and batching -----------------------------------------------------------------

def test_cosine_lr_matches_torch_cosine_annealing_after_warmup():
    max_lr, min_lr, warm, total = 1.0, 0.1, 10, 60
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=max_lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total - warm, eta_min=min_lr)
    for step in range(warm, total + 1):
        assert math.isclose(training_ref.cosine_lr(step, max_lr, warm, total, min_lr),
                            opt.param_groups[0]["lr"], rel_tol=1e-9, abs_tol=1e-12)
        opt.step()
        sched.step()
    assert [training_ref.cosine_lr(s, max_lr, warm, total, min_lr) for s in (0, 4, 9)] == [0.1, 0.5, 1.0]
    assert training_ref.cosine_lr(total + 5, max_lr, warm, total, min_lr) == min_lr


def test_get_batch_windows_and_eval_windows():
    tokens = torch.arange(1000)
    x, y = training_ref.get_batch(tokens, 16, 8, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (16, 8)
    assert torch.equal(y, x + 1) and torch.equal(x[:, 1:], x[:, :-1] + 1)
    x, y = pretraining_ref.eval_windows(tokens, 64)
    assert x.shape == (15, 64) and torch.equal(x.flatten(), tokens[:960]) and torch.equal(y, x + 1)


def test_eval_windows_give_evaluate_lm():
    class Bigram(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.table = torch.nn.Parameter(torch.randn(256, 256, generator=torch.Generator().manual_seed(0)))

        def forward(self, idx):
            return self.table[idx]

    model = Bigram()
    tokens = training_ref.encode("the cat sat on the mat. " * 40)
    x, y = pretraining_ref.eval_windows(tokens, 32)
    mine = F.cross_entropy(model(x).reshape(-1, 256), y.reshape(-1)).item()
    assert math.isclose(mine, training_ref.evaluate_lm(model, tokens, 32, batch_size=4), rel_tol=1e-6)

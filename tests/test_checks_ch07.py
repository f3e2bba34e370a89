"""Chapter 07 exercise specs: a learner's own (different but right) answers pass, cheating
with the measurement is forbidden, and the simulated ranks behave like real ones."""

import time

import pytest

from llmcourse.checks import all_exercises, get, run

IDS = ["07.absmax_quantize", "07.accumulate_gradients", "07.albert_param_count", "07.average_gradients",
       "07.chinchilla_optimal", "07.column_parallel_linear", "07.fit_power_law",
       "07.magnitude_prune", "07.param_count", "07.row_parallel_linear", "07.train_flops",
       "07.zeropoint_quantize"]

# Right answers written differently from the reference.
LEARNER = '''
import math

import torch
import torch.nn.functional as F


def gpt_param_count(vocab_size, block_size, n_layer, n_head, n_embd, non_embedding=False):
    c = n_embd
    blocks = n_layer * (2 * 2 * c + 3 * c * (c + 1) + c * (c + 1) + 4 * c * (c + 1) + c * 4 * c + c)
    emb = 0 if non_embedding else (vocab_size + block_size) * c
    return emb + blocks + 2 * c


def train_flops_per_token(vocab_size, n_layer, n_embd, seq_len):
    forward = 2 * (n_layer * 12 * n_embd * n_embd + vocab_size * n_embd) + n_layer * 2 * (2 * seq_len * n_embd)
    return 3 * forward


def chinchilla_optimal(C, A, B, alpha, beta):
    # from alpha A N^-alpha = beta B D^-beta with D = C / (6 N)
    n = ((alpha * A) / (beta * B) * (C / 6) ** beta) ** (1 / (alpha + beta))
    return n, C / (6 * n)


def albert_param_count(config):
    v, e, h = config["vocab_size"], config["embedding_size"], config["hidden_size"]
    ffn = config["intermediate_size"]
    tables = e * (v + config["max_position_embeddings"] + config["type_vocab_size"] + 2)
    linear = lambda i, o: i * o + o  # noqa: E731
    layer = 4 * linear(h, h) + 2 * 2 * h + linear(h, ffn) + linear(ffn, h)
    groups = [config["inner_group_num"]] * config["num_hidden_groups"]
    return tables + linear(e, h) + sum(groups) * layer + linear(h, h)


def fit_power_law(N, L):
    best = None
    lo, hi = 1e-3, 3.0
    for _ in range(5):  # zooming grid search
        for a in torch.linspace(lo, hi, 401, dtype=torch.float64).tolist():
            X = torch.stack([torch.ones_like(N), N ** (-a)], 1)
            sol = torch.linalg.lstsq(X, L[:, None]).solution[:, 0]
            sse = float(((L - X @ sol) ** 2).sum())
            if best is None or sse < best[0]:
                best = (sse, float(sol[0]), float(sol[1]), a)
        step = (hi - lo) / 400
        lo, hi = max(1e-4, best[3] - 2 * step), best[3] + 2 * step
    return best[1], best[2], best[3]


def average_gradients(model, world_size, all_reduce):
    for p in model.parameters():
        if p.grad is None:
            continue
        p.grad.div_(world_size)
        all_reduce(p.grad)


def accumulate_gradients(model, x, y, micro_batch_size):
    model.zero_grad(set_to_none=False)
    for xb, yb in zip(x.split(micro_batch_size), y.split(micro_batch_size)):
        loss = F.cross_entropy(model(xb), yb, reduction="sum") / len(x)
        loss.backward()


def column_parallel_linear(x, weight_shards, bias_shards):
    return torch.cat([torch.einsum("...i,oi->...o", x, w) + b for w, b in zip(weight_shards, bias_shards)], -1)


def row_parallel_linear(x_shards, weight_shards, bias):
    return sum(torch.einsum("...i,oi->...o", x, w) for x, w in zip(x_shards, weight_shards)) + bias


def absmax_quantize(x, dim=None):
    m = x.abs().amax() if dim is None else x.abs().amax(dim, keepdim=True)
    scale = torch.where(m > 0, m / 127, torch.ones_like(m))
    return torch.round(x / scale).to(torch.int8), scale


def zeropoint_quantize(x, dim=None):
    lo = torch.clamp(x.amin() if dim is None else x.amin(dim, keepdim=True), max=0)
    hi = torch.clamp(x.amax() if dim is None else x.amax(dim, keepdim=True), min=0)
    scale = torch.where(hi > lo, (hi - lo) / 255, torch.ones_like(hi))
    z = (-128 - torch.round(lo / scale)).int()
    return torch.clamp(torch.round(x / scale) + z, -128, 127).to(torch.int8), scale, z


def magnitude_prune(w, sparsity):
    k = math.floor(sparsity * w.numel())
    if k == 0:
        return w.clone()
    threshold = w.abs().flatten().kthvalue(k).values
    return torch.where(w.abs() <= threshold, torch.zeros_like(w), w)
'''


def test_chapter_registers_its_exercises():
    assert [e.id for e in all_exercises("07") if getattr(e, "kind", "") != "challenge"] == IDS


@pytest.mark.parametrize("exercise_id", IDS)
def test_a_different_right_answer_passes(learner, exercise_id):
    mod = learner(LEARNER)
    ex = get(exercise_id)
    fn = getattr(mod, ex.entry)
    assert run(ex, fn).status == "pass", str(run(ex, fn))
    r = run(ex, fn, seed=4321, hidden=True)
    assert r.status == "pass", str(r)


def test_counting_a_built_model_is_forbidden(learner):
    mod = learner('''
        from llmcourse.reference.gpt import GPT, GPTConfig


        def gpt_param_count(vocab_size, block_size, n_layer, n_head, n_embd, non_embedding=False):
            model = GPT(GPTConfig(vocab_size, block_size, n_layer, n_head, n_embd))
            return sum(p.numel() for p in model.parameters())
    ''', name="cheater_ch07")
    r = run(get("07.param_count"), mod.gpt_param_count)
    assert r.status == "forbidden" and "numel" in str(r) or "parameters" in str(r)


def test_building_an_albert_model_is_forbidden(learner):
    mod = learner('''
        import torch
        import transformers


        def albert_param_count(config):
            with torch.device("meta"):
                model = transformers.AlbertModel(transformers.AlbertConfig(**config))
            return sum(p.numel() for p in model.parameters())
    ''', name="cheater_ch07")
    assert run(get("07.albert_param_count"), mod.albert_param_count).status == "forbidden"


def test_flop_counter_and_reference_are_forbidden(learner):
    mod = learner('''
        import torch
        from torch.utils.flop_counter import FlopCounterMode
        from llmcourse.reference import scaling


        def train_flops_per_token(vocab_size, n_layer, n_embd, seq_len):
            with FlopCounterMode(display=False) as c:
                pass
            return scaling.train_flops_per_token(vocab_size, n_layer, n_embd, seq_len)
    ''', name="cheater_ch07")
    r = run(get("07.train_flops"), mod.train_flops_per_token)
    assert r.status == "forbidden"


def test_trainer_and_gpt_may_be_imported(learner):
    mod = learner(LEARNER.replace("import math\n", "import math\nfrom llmcourse.reference.training "
                                  "import train_lm\nfrom llmcourse.reference.gpt import GPT\n"))
    assert run(get("07.fit_power_law"), mod.fit_power_law).status == "pass"


def test_row_parallel_may_not_concatenate(learner):
    mod = learner('''
        import torch


        def row_parallel_linear(x_shards, weight_shards, bias):
            return torch.cat(x_shards, -1) @ torch.cat(weight_shards, 1).T + bias
    ''', name="cheater_ch07")
    assert run(get("07.row_parallel_linear"), mod.row_parallel_linear).status == "forbidden"


def test_average_gradients_that_never_reduces_is_diagnosed(learner):
    mod = learner('''
        def average_gradients(model, world_size, all_reduce):
            for p in model.parameters():
                if p.grad is not None:
                    p.grad /= world_size
    ''', name="cheater_ch07")
    r = run(get("07.average_gradients"), mod.average_gradients)
    assert r.status == "fail"


def test_average_gradients_with_unmatched_collectives_does_not_hang(learner):
    """A rank that skips the all-reduce must not deadlock the check."""
    mod = learner('''
        import threading

        LOCK = threading.Lock()
        SEEN = []


        def average_gradients(model, world_size, all_reduce):
            with LOCK:
                first = not SEEN
                SEEN.append(1)
            if first:
                return  # this rank skips the collective: the others must not wait forever
            for p in model.parameters():
                if p.grad is not None:
                    all_reduce(p.grad)
    ''', name="cheater_ch07")
    t0 = time.perf_counter()
    r = run(get("07.average_gradients"), mod.average_gradients)
    assert r.status == "error" and "same number of times" in str(r)
    assert time.perf_counter() - t0 < 5

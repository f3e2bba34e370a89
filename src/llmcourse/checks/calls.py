"""How a spec calls the learner's function when the plain ``fn(*args, **kwargs)`` is not enough.

Each function here is an exercise's ``call`` (or ``build``): ``call(exercise, fn, case)``, set
in the spec class as ``call = calls.<name>``. They live here, not in the chapter's spec
module, because the grader's LEARNER BUILD ships this module (and not the spec modules, which
hold the cataloged mistakes and call the reference): inside the sandbox the public cases are
precomputed and the learner's function is called exactly as the instructor's check calls it.

Rules for this module: no import of ``llmcourse.reference`` at the top; nothing here computes
an answer. The few course objects a call needs (the GPT's config, the simulated process
group, the sleep workload of the timing lab) are imported inside the function that needs
them; the learner build keeps those names only (``grading.learner`` reads the imports here).
"""

from __future__ import annotations

import random
import statistics

import torch
import torch.nn.functional as F
from torch import nn

from .core import Case
from .kit import F64, PARAM, SpecError, load_params

# ---------------------------------------------------------------------------------------
# Output conversions (Python lists, strings and 1-element tensors compared as numbers)


def int64_tensor(out, pairs=False):
    """list/tuple outputs -> int64 tensor ((m, 2) for merges); a str -> its code points."""
    if isinstance(out, (list, tuple)):
        try:
            t = torch.tensor(out, dtype=torch.int64)
        except (TypeError, ValueError, RuntimeError, OverflowError):
            return out
        return t.reshape(0, 2) if pairs and t.numel() == 0 else t
    if isinstance(out, str):
        return torch.tensor([ord(ch) for ch in out], dtype=torch.int64)
    return out


def list_tensor(out, dtype=torch.int64, pairs=False):
    """list/tuple outputs -> a tensor of ``dtype`` ((n, 2) with ``pairs``)."""
    if isinstance(out, (list, tuple)):
        try:
            t = torch.tensor(out, dtype=dtype)
        except (TypeError, ValueError, RuntimeError, OverflowError):
            return out
        return t.reshape(-1, 2) if pairs else t
    return out


def number(out):
    """A 1-element tensor -> float; anything else unchanged."""
    return float(out) if isinstance(out, torch.Tensor) and out.numel() == 1 else out


def bpe_lists(ex, fn, case):
    """ch01 BPE: lists of ids (merges as pairs for bpe_train) or a str."""
    return int64_tensor(fn(*case.args, **case.kwargs), pairs=ex.entry == "bpe_train")


def bpe_pieces(ex, fn, case):
    """ch01: a list of strings, compared piece by piece as code points."""
    out = fn(*case.args, **case.kwargs)
    if isinstance(out, (list, tuple)) and all(isinstance(p, str) for p in out):
        return [torch.tensor([ord(ch) for ch in p], dtype=torch.int64) for p in out]
    return out


def int64_list(ex, fn, case):
    return list_tensor(fn(*case.args, **case.kwargs))


def int64_pairs(ex, fn, case):
    return list_tensor(fn(*case.args, **case.kwargs), pairs=True)


def bool_list(ex, fn, case):
    return list_tensor(fn(*case.args, **case.kwargs), dtype=torch.bool)


def scalar(ex, fn, case):
    return number(fn(*case.args, **case.kwargs))


def int64_sequence(ex, fn, case):
    out = fn(*case.args, **case.kwargs)
    return torch.as_tensor(out, dtype=torch.int64) if isinstance(out, (list, tuple)) else out


def as_tuple(ex, fn, case):
    """A named tuple (torch.topk's) is a fine answer: compared as a plain tuple."""
    out = fn(*case.args, **case.kwargs)
    return tuple(out) if isinstance(out, tuple) else out


def table_lm(ex, fn, case):
    """ch10 decoding: the case's (V, V, V) log-prob table becomes a trigram LM function."""
    table, prompt = case.args[:2]

    def next_log_probs(seqs):
        return table[seqs[:, -2], seqs[:, -1]]

    out = fn(next_log_probs, prompt, *case.args[2:], **case.kwargs)
    return tuple(out) if isinstance(out, list) else out


# ---------------------------------------------------------------------------------------
# ch02: the GPT is built from a config object


def gpt_build(ex, cls, init):
    from ..reference.gpt import GPTConfig

    return cls(GPTConfig(**init))


# ---------------------------------------------------------------------------------------
# ch03


def _checkpoint_model(seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(6, 16), nn.Dropout(0.25), nn.GELU(), nn.Linear(16, 1))


def train_with_resume(ck, seed: int, steps: int, resume_at: int):
    """Train; at ``resume_at`` save, keep training 3 more steps (moving the weights and the
    RNG), then restore into a FRESH model and optimizer and continue to ``steps``. Returns the
    losses of every step that counts and the final weights, flattened."""
    torch.manual_seed(seed)
    random.seed(seed)
    model = _checkpoint_model(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    losses, step = [], 0
    saved = False
    while step < steps:
        if step == resume_at and not saved:
            saved = True
            state = ck.save(model, opt, step)
            for _ in range(3):
                opt.zero_grad()
                model(torch.randn(4, 6)).square().mean().backward()
                opt.step()
                random.random()
            model, opt = _checkpoint_model(seed + 1), None
            opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
            step = ck.load(state, model, opt)
        for group in opt.param_groups:
            group["lr"] = 1e-2 * (1.0 - step / steps)  # the schedule depends on the step
        x = torch.randn(8, 6)
        y = x.sum(-1, keepdim=True) * (1.0 + 0.1 * random.random())
        loss = F.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        step += 1
        if step > 2 * steps:
            break  # a load() that keeps returning an early step must not loop forever
    weights = torch.cat([p.detach().flatten() for p in model.parameters()])
    return torch.tensor(losses, dtype=F64), weights


def checkpoint_resume(ex, fn, case):
    if not hasattr(fn, "save"):
        fn()  # a stub function: raises NotImplementedError
    state = random.getstate()
    with torch.random.fork_rng(devices=[]):  # the learner's own random state is left alone
        try:
            return train_with_resume(fn, *case.args)
        finally:
            random.setstate(state)


def autograd_function(ex, fn, case):
    """ch03 FlashAttention as an autograd Function: the output and the three input grads."""
    q, k, v, grad_out = (t.detach().clone().requires_grad_(i < 3) for i, t in enumerate(case.args))
    apply = getattr(fn, "apply", fn)  # a stub function raises NotImplementedError itself
    out = apply(q, k, v, case.kwargs.get("causal", False))
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), grad_out)
    return out.detach(), dq, dk, dv


def python_rng(ex, fn, case):
    """The last positional argument of a case is a seed: the call passes random.Random(seed)."""
    *args, seed = case.args
    return fn(*args, random.Random(seed), **case.kwargs)


def arch_indices(arch: dict, space: dict) -> torch.Tensor:
    return torch.tensor([list(space[k]).index(arch[k]) for k in space], dtype=torch.long)


def mutate(ex, fn, case):
    """ch03 search: the child and the parent (after the call) as option indices."""
    arch, space = case.args[0], case.args[1]
    child = python_rng(ex, fn, case)
    return arch_indices(child, space), arch_indices(arch, space)


# ---------------------------------------------------------------------------------------
# ch04


def optimizer_steps(ex, fn, case):
    """ch04 AdamW: a few steps of a tiny regression; the parameters after them."""
    kw = case.kwargs
    X, Y = kw["X"], kw["Y"]
    W = kw["W"].clone().requires_grad_()
    b = kw["b"].clone().requires_grad_()
    frozen = [kw["unused"].clone().requires_grad_()] if "unused" in kw else []
    if "bias_group" in kw:
        groups = [{"params": [W] + frozen}, {"params": [b], **kw["bias_group"]}]
    else:
        groups = [{"params": [W, b] + frozen}]
    opt = fn(groups, **kw["hyper"])
    for _ in range(kw["steps"]):
        for p in [W, b] + frozen:
            p.grad = None
        loss = ((torch.tanh(X @ W + b) - Y) ** 2).mean()
        loss.backward()
        opt.step()
    return [p.detach() for p in [W, b] + frozen]


def schedule(ex, fn, case):
    """ch04 learning-rate schedule: the rate at steps 0 .. n_steps-1."""
    kw = dict(case.kwargs)
    n = kw.pop("n_steps")
    return torch.tensor([float(fn(s, **kw)) for s in range(n)], dtype=F64)


# ---------------------------------------------------------------------------------------
# ch05


def lora_linear(ex, fn, case):
    """ch05 LoRALinear: forward, merge(), trainable count and the initialisation."""
    kw = dict(case.kwargs)
    init = {k: kw.pop(k) for k in ex.init}
    params = {k[len(PARAM):]: kw.pop(k) for k in list(kw) if k.startswith(PARAM)}
    (x,) = case.args
    with torch.random.fork_rng(devices=[]):  # the learner's init must not move their seed
        torch.manual_seed(0)
        module = ex.build(fn, init)
    if not isinstance(module, nn.Module):
        raise SpecError(f"{ex.entry}(...) should build a torch.nn.Module, got "
                        f"{type(module).__name__}")
    module = module.to(x.dtype)
    have = dict(module.named_parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    b0 = bool((have["lora_B"] == 0).all()) if "lora_B" in have else None
    a0 = bool((have["lora_A"] != 0).any()) if "lora_A" in have else None
    with torch.no_grad():
        try:
            load_params(module, params, ex.optional, ex.entry)
        except SpecError:
            try:  # a stub whose forward is still `raise NotImplementedError`: say so instead
                module(x)
            except NotImplementedError:
                raise
            except Exception:
                pass
            raise
        y = module.eval()(x)
        merged = module.merge()
        if not isinstance(merged, nn.Linear):
            raise SpecError(f"merge() should return a torch.nn.Linear, got {type(merged).__name__}")
        return {"output": y, "merged_weight": merged.weight.detach().clone(),
                "merged_output": merged(x), "trainable_parameters": trainable,
                "lora_B_zero_at_init": b0, "lora_A_nonzero_at_init": a0}


# ---------------------------------------------------------------------------------------
# ch07: data parallel


def accumulate_gradients(ex, fn, case: Case):
    """A Linear-Tanh-Linear model with stale gradients; its .grad after the learner's step."""
    kw = case.kwargs
    w1, b1, w2, b2 = kw["w1"], kw["b1"], kw["w2"], kw["b2"]
    model = nn.Sequential(nn.Linear(w1.shape[1], w1.shape[0]), nn.Tanh(),
                          nn.Linear(w2.shape[1], w2.shape[0])).to(w1.dtype)
    with torch.no_grad():
        for p, v in zip(model.parameters(), (w1, b1, w2, b2)):
            p.copy_(v)
            p.grad = torch.full_like(v, 0.37)  # stale gradients from an earlier step
    fn(model, kw["x"], kw["y"], kw["micro_batch_size"])
    return [p.grad for p in model.parameters()]


class _Params(nn.Module):
    def __init__(self, values):
        super().__init__()
        self.ps = nn.ParameterList([nn.Parameter(v.clone()) for v in values])


def simulated_ranks(ex, fn, case: Case):
    """ch07 average_gradients: each rank a thread with its own model copy and gradients."""
    from ..reference.parallel import SimulatedGroup

    params, grads = case.kwargs["params"], case.kwargs["grads"]
    world_size = len(grads)
    group = SimulatedGroup(world_size)
    models = []
    for r in range(world_size):
        m = _Params(params)
        for p, gr in zip(m.parameters(), grads[r]):
            p.grad = None if gr is None else gr.clone()
        models.append(m)
    group.run(fn, [(m, world_size, group.all_reduce) for m in models])
    return [[p.grad for p in m.parameters()] for m in models]


# ---------------------------------------------------------------------------------------
# ch09: a timer on workloads of known duration


def timer_band(median_ms: float) -> tuple[float, float]:
    """Accepted range for a measured median of a scheduled median. Generous above: on a
    loaded grader machine a thread that wakes up from a sleep may wait several milliseconds
    for a core, and a GPU's clock may change between calibration and run; a mean dragged up by
    an outlier is caught by the consistency fields instead."""
    return 0.75 * median_ms - 0.3, 3.0 * median_ms + 30.0


def timed_schedule(schedule, warmup, repeats):
    return [schedule[min(i, len(schedule) - 1)] for i in range(warmup, warmup + repeats)]


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-6 * (1.0 + abs(b))


def sleep_timer(ex, fn, case: Case):
    from ..reference.timing import SleepWorkload, quantile

    kw = case.kwargs
    with SleepWorkload(kw["schedule"], kw["kind"]) as work:
        result = fn(work, warmup=kw["warmup"], repeats=kw["repeats"], sync=work.sync)
        work.drain()
        calls = work.calls
    if not isinstance(result, dict) or not {"median_ms", "iqr_ms", "times_ms"} <= set(result):
        raise TypeError("return a dict with the keys 'median_ms', 'iqr_ms' and 'times_ms'")
    times = [float(t) for t in result["times_ms"]]
    median, iqr = float(result["median_ms"]), float(result["iqr_ms"])
    lo, hi = timer_band(statistics.median(timed_schedule(kw["schedule"], kw["warmup"],
                                                         kw["repeats"])))
    return {"calls": calls, "n_times": len(times),
            "median_vs_schedule": -1 if median < lo else (1 if median > hi else 0),
            "median_is_median_of_times": bool(times) and _close(median, quantile(times, 0.5)),
            "iqr_is_iqr_of_times": bool(times) and _close(
                iqr, quantile(times, 0.75) - quantile(times, 0.25))}

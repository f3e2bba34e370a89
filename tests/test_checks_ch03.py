"""Chapter 03 checks beyond the catalog rails: forbidden shortcuts, independent learner
solutions that must pass, class-shaped answers (an autograd Function, a checkpoint class)
whose stubs are 'not implemented', and the checkpoint check's own premise."""

from __future__ import annotations

import torch

from llmcourse.checks import get, run
from llmcourse.checks.ch03 import primer as primer_spec


def test_builtin_rms_norm_is_forbidden(learner):
    mod = learner("""
        import torch.nn.functional as F

        def rms_norm(x, weight, eps=1e-6):
            return F.rms_norm(x, (x.shape[-1],), weight, eps)
    """)
    r = run(get("03.rms_norm"), mod.rms_norm)
    assert r.status == "forbidden" and "rms_norm" in str(r)


def test_flash_forward_with_softmax_is_forbidden(learner):
    mod = learner("""
        import torch

        def flash_forward(q, k, v, causal=False, block_q=16, block_k=16):
            s = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5
            if causal:
                s = s.masked_fill(~torch.ones(s.shape[-2:], dtype=torch.bool).tril(), float("-inf"))
            return torch.softmax(s, -1) @ v, torch.logsumexp(s, -1)
    """)
    r = run(get("03.flash_forward"), mod.flash_forward)
    assert r.status == "forbidden"


def test_an_independent_flash_forward_passes(learner):
    # one query row at a time, keys one tile at a time: another order of the same recurrence
    mod = learner("""
        import math
        import torch

        def flash_forward(q, k, v, causal=False, block_q=16, block_k=16):
            T_q, T_k = q.shape[-2], k.shape[-2]
            outs, lses = [], []
            for i in range(T_q):
                m = torch.full(q.shape[:-2], float("-inf"), dtype=q.dtype)
                l = torch.zeros_like(m)
                acc = torch.zeros(*q.shape[:-2], v.shape[-1], dtype=q.dtype)
                last = i + 1 if causal else T_k
                for c0 in range(0, last, block_k):
                    c1 = min(c0 + block_k, last)
                    s = (q[..., i:i + 1, :] @ k[..., c0:c1, :].transpose(-2, -1))[..., 0, :] / math.sqrt(q.shape[-1])
                    m2 = torch.maximum(m, s.amax(-1))
                    p = torch.exp(s - m2[..., None])
                    l = l * torch.exp(m - m2) + p.sum(-1)
                    acc = acc * torch.exp(m - m2)[..., None] + (p[..., None, :] @ v[..., c0:c1, :])[..., 0, :]
                    m = m2
                outs.append(acc / l[..., None])
                lses.append(m + torch.log(l))
            return torch.stack(outs, -2), torch.stack(lses, -1)
    """)
    r = run(get("03.flash_forward"), mod.flash_forward, seed=11)
    assert r.status == "pass", str(r)


def test_class_stubs_are_not_implemented(learner):
    mod = learner("""
        import torch

        class FlashAttention(torch.autograd.Function):
            @staticmethod
            def forward(ctx, q, k, v, causal=False):
                raise NotImplementedError()

            @staticmethod
            def backward(ctx, grad_out):
                raise NotImplementedError()

        class Checkpoint:
            @staticmethod
            def save(model, optimizer, step):
                raise NotImplementedError()

            @staticmethod
            def load(ckpt, model, optimizer):
                raise NotImplementedError()
    """)
    assert run(get("03.flash_attention"), mod.FlashAttention).status == "not implemented"
    assert run(get("03.checkpoint"), mod.Checkpoint).status == "not implemented"


def test_checkpoint_check_demands_the_uninterrupted_run():
    """The reference resumes into a FRESH model and optimizer and must reproduce, bit for bit,
    the run that never stopped (a resume point after the last step never saves)."""
    ref = get("03.checkpoint").reference
    for seed, steps, at in ((0, 20, 9), (5, 12, 1)):
        resumed = primer_spec._train_with_resume(ref, seed, steps, at)
        straight = primer_spec._train_with_resume(ref, seed, steps, steps + 1)
        assert torch.equal(resumed[0], straight[0]) and torch.equal(resumed[1], straight[1])


def test_checkpoint_check_leaves_the_learners_rng_alone():
    import random

    torch.manual_seed(123)
    random.seed(123)
    before = (torch.get_rng_state(), random.getstate())
    run(get("03.checkpoint"), get("03.checkpoint").reference)
    assert torch.equal(torch.get_rng_state(), before[0]) and random.getstate() == before[1]


def test_mutate_with_random_choice_is_the_same_search(learner):
    mod = learner("""
        def mutate(arch, space, rng):
            key = rng.choice(list(space))
            child = dict(arch)
            child[key] = rng.choice([o for o in space[key] if o != arch[key]])
            return child
    """)
    assert run(get("03.mutate"), mod.mutate, hidden=True).status == "pass"


def test_gpu_lab_modules_are_the_only_reference_allowed_in_flash(learner):
    mod = learner("""
        from llmcourse.reference import flash_triton, flash

        def flash_forward(q, k, v, causal=False, block_q=16, block_k=16):
            return flash.flash_forward(q, k, v, causal, block_q, block_k)
    """)
    r = run(get("03.flash_forward"), mod.flash_forward)
    assert r.status == "forbidden" and "llmcourse.reference.flash" in str(r)

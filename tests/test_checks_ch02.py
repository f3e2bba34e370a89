"""Chapter 02 checks: every exercise's reference passes, correct solutions written another
way pass (so the tolerances are not too tight), each cataloged mistake fails and is named,
stubs are "not implemented", module answers with the wrong parameters get one clear line,
and every forbidden shortcut is caught by reading the code."""

from __future__ import annotations


import pytest
import torch

from llmcourse.checks import all_exercises, check, CheckFailed, get, run
from llmcourse.checks.kit import ModuleExercise
from llmcourse.grading import codec
from llmcourse.reference import attention as A
from llmcourse.reference import gpt as G
from llmcourse.reference import transformer as TR

# The tensors here are tiny: with two pytest-xdist workers on two cores, one intra-op thread
# per process is ~10x faster than two threads each spinning for the other's core.
torch.set_num_threads(1)

IDS = ["02.causal_mask", "02.decoder_layer", "02.encoder_layer", "02.ffn", "02.gpt",
       "02.layer_norm", "02.mha", "02.padding_mask", "02.rope", "02.sdpa", "02.sinusoidal"]
REFERENCES = {
    "02.sdpa": A.scaled_dot_product_attention, "02.causal_mask": A.causal_mask,
    "02.padding_mask": A.padding_mask, "02.mha": A.MultiHeadAttention,
    "02.sinusoidal": A.sinusoidal_positions, "02.rope": A.apply_rope,
    "02.layer_norm": TR.layer_norm, "02.ffn": TR.feed_forward, "02.encoder_layer": TR.EncoderLayer,
    "02.decoder_layer": TR.DecoderLayer, "02.gpt": G.GPT,
}
MISTAKES = [(i, m.name) for i in IDS for m in get(i).mistakes]

# Correct answers written the way a learner would, NOT copied from the reference: other
# formulas and operation orders, float32 angles for float32 inputs, nn.LayerNorm inside the
# layers; in the GPT a registered mask buffer and no lm_head at all (x @ wte.weight.T).
LEARNER = '''
import math

import torch
import torch.nn.functional as F
from torch import nn


def scaled_dot_product_attention(q, k, v, mask=None):
    scores = torch.einsum("...qd,...kd->...qk", q / math.sqrt(q.shape[-1]), k)
    if mask is not None:
        scores = scores.masked_fill(mask.logical_not(), float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def causal_mask(T):
    return torch.arange(T)[:, None] >= torch.arange(T)[None, :]


def padding_mask(lengths, T):
    return torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)


class MultiHeadAttention(nn.Module):
    def __init__(self, d_model, n_heads):
        super().__init__()
        self.h, self.dh = n_heads, d_model // n_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, x_q, x_kv=None, mask=None):
        if x_kv is None:
            x_kv = x_q
        B, T, C = x_q.shape
        S = x_kv.shape[1]
        q = self.q_proj(x_q).view(B, T, self.h, self.dh).transpose(1, 2)
        k = self.k_proj(x_kv).view(B, S, self.h, self.dh).transpose(1, 2)
        v = self.v_proj(x_kv).view(B, S, self.h, self.dh).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.dh))
        if mask is not None:
            att = att.masked_fill(~mask.unsqueeze(-3), float("-inf"))
        y = F.softmax(att, dim=-1) @ v
        return self.out_proj(y.transpose(1, 2).contiguous().view(B, T, C))


def sinusoidal_positions(T, d, base=10000.0):
    position = torch.arange(T, dtype=torch.float32).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(base) / d))
    pe = torch.zeros(T, d)
    pe[:, 0::2] = torch.sin(position * div_term)
    pe[:, 1::2] = torch.cos(position * div_term)
    return pe


def apply_rope(x, positions=None, base=10000.0):
    T, d = x.shape[-2], x.shape[-1]
    if positions is None:
        positions = torch.arange(T)
    inv_freq = 1.0 / (base ** (torch.arange(0, d, 2, dtype=x.dtype) / d))
    freqs = positions.to(x.dtype)[:, None] * inv_freq[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def layer_norm(x, weight, bias, eps=1e-5):
    mean = x.mean(dim=-1, keepdim=True)
    var = x.var(dim=-1, keepdim=True, unbiased=False)
    return weight * (x - mean) * torch.rsqrt(var + eps) + bias


def feed_forward(x, w1, b1, w2, b2):
    return F.linear(F.relu(F.linear(x, w1, b1)), w2, b2)


class EncoderLayer(nn.Module):
    def __init__(self, d_model, n_heads, d_ff):
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, n_heads)
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, x, mask=None):
        x = self.norm1(x + self.self_attn(x, x, mask))
        return self.norm2(x + self.linear2(F.relu(self.linear1(x))))


class DecoderLayer(nn.Module):
    def __init__(self, d_model, n_heads, d_ff):
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, n_heads)
        self.cross_attn = MultiHeadAttention(d_model, n_heads)
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(self, x, memory, tgt_mask=None, memory_mask=None):
        x = self.norm1(x + self.self_attn(x, x, tgt_mask))
        x = self.norm2(x + self.cross_attn(x, memory, memory_mask))
        return self.norm3(x + self.linear2(F.relu(self.linear1(x))))


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.n_head, self.n_embd = config.n_head, config.n_embd
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.register_buffer("bias", torch.tril(torch.ones(config.block_size, config.block_size)))

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = att.masked_fill(self.bias[:T, :T] == 0, float("-inf"))
        y = F.softmax(att, dim=-1) @ v
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = nn.ModuleDict(dict(c_fc=nn.Linear(config.n_embd, 4 * config.n_embd),
                                      c_proj=nn.Linear(4 * config.n_embd, config.n_embd)))

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp.c_proj(F.gelu(self.mlp.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd),
        ))

    def forward(self, idx):
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)
        for block in self.transformer.h:
            x = block(x)
        return self.transformer.ln_f(x) @ self.transformer.wte.weight.T
'''

def test_chapter_registers_its_exercises():
    assert [e.id for e in all_exercises("02")] == IDS
    assert {i for i in IDS if isinstance(get(i), ModuleExercise)} == {
        "02.mha", "02.encoder_layer", "02.decoder_layer", "02.gpt"}
    for i in IDS:
        assert get(i).forbid and get(i).mistakes


@pytest.mark.parametrize("exercise_id", IDS)
def test_reference_passes_public_and_hidden(exercise_id):
    ex = get(exercise_id)
    fn = REFERENCES[exercise_id]  # the reference itself, so its source is inspected too
    assert run(ex, fn).status == "pass", str(run(ex, fn))
    for seed in (1, 987):
        r = run(ex, fn, seed=seed, hidden=True)
        assert r.status == "pass", str(r)
        assert r.n_cases > len(ex.cases(seed, False))


@pytest.mark.parametrize("exercise_id", IDS)
def test_a_learners_own_correct_solution_passes_on_many_seeds(learner, exercise_id):
    ex, module = get(exercise_id), learner(LEARNER)
    fn = getattr(module, ex.entry)
    for seed in range(6):
        r = run(ex, fn, seed=seed, hidden=True)
        assert r.status == "pass", f"seed {seed}: {r}"


@pytest.mark.parametrize("exercise_id,name", MISTAKES)
def test_each_mistake_fails_and_is_named(exercise_id, name):
    ex = get(exercise_id)
    mistake = next(m for m in ex.mistakes if m.name == name)
    r = run(ex, mistake.impl, hidden=True)
    assert r.status in ("fail", "error"), f"{name!r} passes"
    assert r.diagnosis is mistake, f"{name!r} diagnosed as {r.diagnosis and r.diagnosis.name}"
    assert f"Diagnosis - {name}:" in str(r)


# A learner's own wrong code (written independently of the catalog) is still named.
WRONG = '''
import math
import torch
from torch import nn


def scaled_dot_product_attention(q, k, v, mask=None):
    w = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
    if mask is not None:
        w = w.masked_fill(~mask, 0.0)
    return w @ v


def layer_norm(x, weight, bias, eps=1e-5):
    mu = x.mean(-1, keepdim=True)
    sd = torch.sqrt(((x - mu) ** 2).sum(-1, keepdim=True) / (x.shape[-1] - 1) + eps)
    return weight * (x - mu) / sd + bias


class MultiHeadAttention(nn.Module):
    def __init__(self, d_model, n_heads):
        super().__init__()
        self.h = n_heads
        self.q_proj, self.k_proj = nn.Linear(d_model, d_model), nn.Linear(d_model, d_model)
        self.v_proj, self.out_proj = nn.Linear(d_model, d_model), nn.Linear(d_model, d_model)

    def forward(self, x_q, x_kv=None, mask=None):
        x_kv = x_q if x_kv is None else x_kv
        B, T, C = x_q.shape
        S = x_kv.shape[1]
        q = self.q_proj(x_q).view(B, self.h, T, C // self.h)
        k = self.k_proj(x_kv).view(B, self.h, S, C // self.h)
        v = self.v_proj(x_kv).view(B, self.h, S, C // self.h)
        att = q @ k.transpose(-1, -2) / math.sqrt(C // self.h)
        if mask is not None:
            att = att.masked_fill(~mask.unsqueeze(-3), float("-inf"))
        return self.out_proj((att.softmax(-1) @ v).reshape(B, T, C))


class EncoderLayer(nn.Module):
    def __init__(self, d_model, n_heads, d_ff):
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, n_heads)
        self.linear1, self.linear2 = nn.Linear(d_model, d_ff), nn.Linear(d_ff, d_model)
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)

    def forward(self, x, mask=None):
        h = self.norm1(x)
        x = x + self.self_attn(h, h, mask)
        return x + self.linear2(torch.relu(self.linear1(self.norm2(x))))
'''


def test_a_learners_own_mistakes_are_named(learner):
    wrong = learner(WRONG)
    r = run(get("02.sdpa"), wrong.scaled_dot_product_attention, hidden=True)
    assert r.diagnosis.name == "mask applied after softmax", str(r)
    r = run(get("02.layer_norm"), wrong.layer_norm, hidden=True)
    assert r.diagnosis.name == "unbiased variance", str(r)
    r = run(get("02.mha"), wrong.MultiHeadAttention, hidden=True)
    assert r.diagnosis.name == "heads split along the wrong axis", str(r)
    # its encoder layer is pre-LN; with the reference's attention inside it is named as such
    fixed = learner(LEARNER)
    wrong.MultiHeadAttention = fixed.MultiHeadAttention
    r = run(get("02.encoder_layer"), wrong.EncoderLayer, hidden=True)
    assert r.diagnosis.name == "pre-LN where post-LN is asked", str(r)


def test_the_source_worked_example_is_the_first_public_case():
    case = get("02.sdpa").cases(0, False)[0]
    assert "worked example" in case.label
    out = get("02.sdpa").expected(case)
    assert not torch.allclose(out, torch.tensor([0.21, 0.24, 0.27]).expand(3, 3), atol=1e-2)


# ---------------------------------------------------------------------------------------
# Stubs and module answers that do not follow the task's layout

@pytest.mark.parametrize("exercise_id", IDS)
def test_stub_is_not_implemented(learner, exercise_id):
    ex = get(exercise_id)
    if isinstance(ex, ModuleExercise):
        module = learner(f'''
            from torch import nn

            class {ex.entry}(nn.Module):
                def __init__(self, *args):
                    super().__init__()
                    # YOUR CODE HERE
                    raise NotImplementedError()

                def forward(self, *args, **kwargs):
                    raise NotImplementedError()
        ''')
    else:
        module = learner(f"def {ex.entry}(*args, **kwargs):\n    raise NotImplementedError()\n")
    r = run(ex, getattr(module, ex.entry))
    assert r.status == "not implemented" and "not implemented yet" in str(r)


@pytest.mark.parametrize("exercise_id", ["02.mha", "02.gpt"])
def test_half_done_module_whose_forward_is_a_stub_is_not_implemented(learner, exercise_id):
    """__init__ written (or still empty), forward still `raise NotImplementedError()`: the
    missing parameters are not reported, "not implemented yet" is."""
    entry = get(exercise_id).entry
    module = learner(f'''
        from torch import nn

        class {entry}(nn.Module):
            def __init__(self, *args):
                super().__init__()

            def forward(self, *args, **kwargs):
                raise NotImplementedError()
    ''')
    assert run(get(exercise_id), getattr(module, entry)).status == "not implemented"


def test_module_with_other_parameter_names_gets_one_clear_line(learner):
    module = learner('''
        from torch import nn

        class MultiHeadAttention(nn.Module):
            def __init__(self, d_model, n_heads):
                super().__init__()
                self.qkv = nn.Linear(d_model, 3 * d_model)
                self.out_proj = nn.Linear(d_model, d_model)

            def forward(self, x_q, x_kv=None, mask=None):
                return self.out_proj(x_q)
    ''')
    r = run(get("02.mha"), module.MultiHeadAttention)
    assert r.status == "error"
    assert "no parameter `q_proj.weight`" in r.detail and "qkv.weight" in r.detail
    with pytest.raises(CheckFailed, match="Name the layers as the task says"):
        check("02.mha", module.MultiHeadAttention)


def test_module_with_an_extra_or_misshapen_parameter_is_reported(learner):
    module = learner('''
        import torch
        from torch import nn

        class Base(nn.Module):
            def __init__(self, d_model, n_heads, d_out=None):
                super().__init__()
                self.q_proj = nn.Linear(d_model, d_model)
                self.k_proj = nn.Linear(d_model, d_model)
                self.v_proj = nn.Linear(d_model, d_model)
                self.out_proj = nn.Linear(d_model, d_out or d_model)

            def forward(self, x_q, x_kv=None, mask=None):
                return x_q

        class Extra(Base):
            def __init__(self, d_model, n_heads):
                super().__init__(d_model, n_heads)
                self.gate = nn.Parameter(torch.ones(1))

        class Misshapen(Base):
            def __init__(self, d_model, n_heads):
                super().__init__(d_model, n_heads, d_out=1)
    ''')
    r = run(get("02.mha"), module.Extra)
    assert r.status == "error" and "does not define: `gate`" in r.detail
    r = run(get("02.mha"), module.Misshapen)
    assert r.status == "error" and "`out_proj.weight`" in r.detail and "shape (1, 8)" in r.detail


def test_gpt_may_tie_or_untie_its_output_layer(learner):
    untied = learner(LEARNER.replace("return self.transformer.ln_f(x) @ self.transformer.wte.weight.T",
                                     "return self.lm_head(self.transformer.ln_f(x))").replace(
        "            ln_f=nn.LayerNorm(config.n_embd),\n        ))",
        "            ln_f=nn.LayerNorm(config.n_embd),\n        ))\n"
        "        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)"))
    assert hasattr(untied.GPT(G.GPTConfig(11, 8, 1, 2, 8)), "lm_head")
    assert run(get("02.gpt"), untied.GPT, hidden=True).status == "pass"


def test_checking_a_module_leaves_the_learners_random_state_alone():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    run(get("02.encoder_layer"), TR.EncoderLayer)
    assert torch.equal(torch.random.get_rng_state(), before)


def test_cases_hold_only_values_the_grader_can_send():
    for ex in all_exercises("02"):
        for case in ex.cases(3, True):
            codec.encode((case.args, case.kwargs), {}, "k")  # raises on anything else


# ---------------------------------------------------------------------------------------
# Forbidden shortcuts

def offending_source(entry: str, is_class: bool, target: str) -> str:
    """A solution that uses ``target`` (a rule's dotted name, module, or ``.method``)."""
    if target.startswith("."):
        lines = [f"return x{target}(x)"]
    else:
        lines = [f"import {target.rsplit('.', 1)[0] if '.' in target else target}",
                 f"return {target}"]
    if is_class:
        head = (f"from torch import nn\n\n\nclass {entry}(nn.Module):\n"
                "    def forward(self, x, *args, **kwargs):\n")
        indent = " " * 8
    else:
        head, indent = f"def {entry}(x, *args, **kwargs):\n", " " * 4
    return "import torch\n\n\n" + head + "".join(indent + line + "\n" for line in lines)


@pytest.mark.parametrize("exercise_id", IDS)
def test_every_forbidden_rule_is_enforced(learner, exercise_id):
    ex = get(exercise_id)
    for rule in ex.rules:
        target = rule.target if not rule.allow else rule.target + ".internals"
        module = learner(offending_source(ex.entry, isinstance(ex, ModuleExercise), target))
        r = run(ex, getattr(module, ex.entry))
        assert r.status == "forbidden", f"{rule.target}: {r}"
        assert rule.why in r.detail


def test_real_shortcuts_are_forbidden_even_though_they_would_pass(learner):
    cheats = learner('''
        import torch
        import torch.nn.functional as F
        from torch import nn


        def scaled_dot_product_attention(q, k, v, mask=None):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


        def layer_norm(x, weight, bias, eps=1e-5):
            return F.layer_norm(x, x.shape[-1:], weight, bias, eps)


        class EncoderLayer(nn.TransformerEncoderLayer):
            def __init__(self, d_model, n_heads, d_ff):
                super().__init__(d_model, n_heads, d_ff, dropout=0.0, batch_first=True)


        class MultiHeadAttention(nn.Module):
            def __init__(self, d_model, n_heads):
                super().__init__()
                self.mha = nn.MultiheadAttention(d_model, n_heads, batch_first=True)
    ''')
    peeker = learner('''
        from llmcourse.reference.attention import apply_rope as _rope


        def apply_rope(x, positions=None, base=10000.0):
            return _rope(x, positions, base)
    ''')
    r = run(get("02.rope"), peeker.apply_rope)
    assert r.status == "forbidden" and "llmcourse.reference" in r.detail
    for exercise_id, entry, used in [
        ("02.sdpa", "scaled_dot_product_attention", "scaled_dot_product_attention"),
        ("02.layer_norm", "layer_norm", "layer_norm"),
        ("02.encoder_layer", "EncoderLayer", "TransformerEncoderLayer"),
        ("02.mha", "MultiHeadAttention", "MultiheadAttention"),
    ]:
        r = run(get(exercise_id), getattr(cheats, entry))
        assert r.status == "forbidden" and used in r.detail, f"{exercise_id}: {r}"
    # without the exercise's own rules the built-ins would pass: the rule is what stops them
    for exercise_id, entry in [("02.sdpa", "scaled_dot_product_attention"),
                               ("02.layer_norm", "layer_norm")]:
        unguarded = type("Unguarded", (type(get(exercise_id)),), {"forbid": ()})()
        assert run(unguarded, getattr(cheats, entry), hidden=True).status == "pass"

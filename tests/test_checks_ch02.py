"""Chapter 02 checks: every exercise's reference passes, correct solutions written another
way pass (so the tolerances are not too tight), each cataloged mistake fails and is named,
stubs are "not implemented", module answers with the wrong parameters get one clear line,
and every forbidden shortcut is caught by reading the code."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llmcourse.checks import all_exercises, check, CheckFailed, get, run
from llmcourse.checks.kit import ModuleExercise
from llmcourse.grading import codec
from llmcourse.reference import gpt as gpt_ref
from llmcourse.reference import transformer as transformer_ref

FIXTURES = Path(__file__).parent / "fixtures"

# The tensors here are tiny: with two pytest-xdist workers on two cores, one intra-op thread
# per process is ~10x faster than two threads each spinning for the other's core.
torch.set_num_threads(1)

IDS = ["02.causal_mask", "02.decoder_layer", "02.encoder_layer", "02.ffn", "02.gpt",
       "02.layer_norm", "02.mha", "02.padding_mask", "02.rope", "02.sdpa", "02.sinusoidal",
       "02.to_hf_gpt2"]

# Correct answers written the way a learner would, NOT copied from the reference: other
# formulas and operation orders, float32 angles for float32 inputs, nn.LayerNorm inside the
# layers; in the GPT a registered mask buffer and no lm_head at all (x @ wte.weight.T).
LEARNER = (FIXTURES / "ch02_learner.py").read_text(encoding="utf-8")

def test_chapter_registers_its_exercises():
    assert [e.id for e in all_exercises("02") if getattr(e, "kind", "") != "challenge"] == IDS
    assert {i for i in IDS if isinstance(get(i), ModuleExercise)} == {
        "02.mha", "02.encoder_layer", "02.decoder_layer", "02.gpt"}
    for i in IDS:
        assert get(i).mistakes and get(i).rules[0].target == "llmcourse.reference"


@pytest.mark.parametrize("exercise_id", IDS)
def test_a_learners_own_correct_solution_passes_on_many_seeds(learner, exercise_id):
    ex, module = get(exercise_id), learner(LEARNER)
    fn = getattr(module, ex.entry)
    for seed in range(6):
        r = run(ex, fn, seed=seed, hidden=True)
        assert r.status == "pass", f"seed {seed}: {r}"


# A learner's own wrong code (written independently of the catalog) is still named.
WRONG = (FIXTURES / "ch02_wrong.py").read_text(encoding="utf-8")


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
    assert hasattr(untied.GPT(gpt_ref.GPTConfig(11, 8, 1, 2, 8)), "lm_head")
    assert run(get("02.gpt"), untied.GPT, hidden=True).status == "pass"


def test_checking_a_module_leaves_the_learners_random_state_alone():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    run(get("02.encoder_layer"), transformer_ref.EncoderLayer)
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

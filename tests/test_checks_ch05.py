"""Chapter 05 checks: every exercise's reference passes, correct solutions written another
way pass (so the tolerances are not too tight), each cataloged mistake fails and is named,
a learner's own wrong code is named too, stubs are "not implemented", a LoRA layer without
the task's parameters gets one clear line, and forbidden shortcuts are caught."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llmcourse.checks import all_exercises, get, run
from llmcourse.checks.kit import ModuleExercise

FIXTURES = Path(__file__).parent / "fixtures"

torch.set_num_threads(1)

IDS = ["05.ClassificationHead", "05.LoRALinear", "05.chat_tokens", "05.early_stopping",
       "05.last_token_pool", "05.masked_lm_loss"]

# Correct answers written the way a learner would, not copied from the reference.
LEARNER = (FIXTURES / "ch05_learner.py").read_text(encoding="utf-8")

WRONG = (FIXTURES / "ch05_wrong.py").read_text(encoding="utf-8")

def test_chapter_registers_its_exercises():
    assert [e.id for e in all_exercises("05") if getattr(e, "kind", "") != "challenge"] == IDS
    assert {i for i in IDS if isinstance(get(i), ModuleExercise)} == {
        "05.ClassificationHead", "05.LoRALinear"}
    for i in IDS:
        assert get(i).mistakes and get(i).rules[0].target == "llmcourse.reference"


@pytest.mark.parametrize("exercise_id", IDS)
def test_a_learners_own_correct_solution_passes_on_many_seeds(learner, exercise_id):
    ex, module = get(exercise_id), learner(LEARNER)
    fn = getattr(module, ex.entry)
    for seed in range(4):
        r = run(ex, fn, seed=seed, hidden=True)
        assert r.status == "pass", f"seed {seed}: {r}"


def test_a_learners_own_mistakes_are_named(learner):
    wrong = learner(WRONG)
    expected = {"05.last_token_pool": "lengths - 1: assumes right padding",
                "05.masked_lm_loss": "mean of per-sequence means",
                "05.chat_tokens": "role headers in the loss",
                "05.LoRALinear": "scaled by alpha instead of alpha / r",
                "05.early_stopping": "a tie counts as an improvement (never stops on a plateau)"}
    for exercise_id, name in expected.items():
        ex = get(exercise_id)
        r = run(ex, getattr(wrong, ex.entry), hidden=True)
        assert r.status == "fail" and r.diagnosis is not None, str(r)
        assert r.diagnosis.name == name, str(r)


def test_lora_check_reports_what_the_layer_must_do():
    ex = get("05.LoRALinear")
    out = ex.expected(ex.cases(0, False)[0])
    assert out["trainable_parameters"] == 2 * (6 + 4)
    assert out["lora_B_zero_at_init"] is True and out["lora_A_nonzero_at_init"] is True
    torch.testing.assert_close(out["merged_output"], out["output"], rtol=1e-5, atol=1e-5)


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

                def merge(self):
                    raise NotImplementedError()
        ''')
    else:
        module = learner(f"def {ex.entry}(*args, **kwargs):\n    raise NotImplementedError()\n")
    r = run(ex, getattr(module, ex.entry))
    assert r.status == "not implemented" and "not implemented yet" in str(r)


def test_half_done_lora_is_not_implemented(learner):
    module = learner('''
        import torch
        from torch import nn

        class LoRALinear(nn.Module):
            def __init__(self, in_features, out_features, r, alpha):
                super().__init__()
                self.weight = nn.Parameter(torch.zeros(out_features, in_features), requires_grad=False)
                self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False)
                self.lora_A = nn.Parameter(torch.randn(r, in_features))
                self.lora_B = nn.Parameter(torch.zeros(out_features, r))

            def forward(self, x):
                raise NotImplementedError()

            def merge(self):
                raise NotImplementedError()
    ''')
    assert run(get("05.LoRALinear"), module.LoRALinear).status == "not implemented"


def test_lora_with_nested_linear_layers_gets_one_clear_line(learner):
    module = learner('''
        from torch import nn

        class LoRALinear(nn.Module):
            def __init__(self, in_features, out_features, r, alpha):
                super().__init__()
                self.base = nn.Linear(in_features, out_features)
                self.A = nn.Linear(in_features, r, bias=False)
                self.B = nn.Linear(r, out_features, bias=False)

            def forward(self, x):
                return self.base(x) + self.B(self.A(x))

            def merge(self):
                return self.base
    ''')
    r = run(get("05.LoRALinear"), module.LoRALinear)
    assert r.status == "error" and "no parameter `weight`" in r.detail, r.detail


@pytest.mark.parametrize("source,exercise_id", [
    ("from peft import LoraConfig\n\ndef LoRALinear(*a):\n    return LoraConfig()\n", "05.LoRALinear"),
    ("def chat_tokens(messages, add_generation_prompt=False):\n"
     "    return tok.apply_chat_template(messages)\n", "05.chat_tokens"),
    ("from llmcourse.reference.finetuning import masked_lm_loss\n", "05.masked_lm_loss"),
])
def test_forbidden_shortcuts_are_caught(learner, source, exercise_id):
    from llmcourse.checks.forbidden import violations_for

    ex = get(exercise_id)
    found = violations_for(ex.entry, ex.rules, [("cell In[1]", source)])
    assert found, f"{source!r} not caught"

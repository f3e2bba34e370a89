"""Chapter 05 checks: every exercise's reference passes, correct solutions written another
way pass (so the tolerances are not too tight), each cataloged mistake fails and is named,
a learner's own wrong code is named too, stubs are "not implemented", a LoRA layer without
the task's parameters gets one clear line, and forbidden shortcuts are caught."""

from __future__ import annotations


import pytest
import torch

from llmcourse.checks import all_exercises, get, run
from llmcourse.checks.kit import ModuleExercise
from llmcourse.reference import finetuning as FT
from llmcourse.reference import lora as L

torch.set_num_threads(1)

IDS = ["05.ClassificationHead", "05.LoRALinear", "05.chat_tokens", "05.last_token_pool",
       "05.masked_lm_loss"]
REFERENCES = {"05.last_token_pool": FT.last_token_pool, "05.ClassificationHead": FT.ClassificationHead,
              "05.LoRALinear": L.LoRALinear, "05.chat_tokens": FT.chat_tokens,
              "05.masked_lm_loss": FT.masked_lm_loss}
MISTAKES = [(i, m.name) for i in IDS for m in get(i).mistakes]

# Correct answers written the way a learner would, not copied from the reference.
LEARNER = '''
import math

import torch
import torch.nn.functional as F
from torch import nn


def last_token_pool(hidden, attention_mask):
    T = attention_mask.shape[1]
    flipped = attention_mask.flip(-1).int().argmax(-1)   # first True from the right
    last = T - 1 - flipped
    return torch.stack([hidden[b, last[b]] for b in range(hidden.shape[0])])


class ClassificationHead(nn.Module):
    def __init__(self, n_embd, n_classes):
        super().__init__()
        self.score = nn.Linear(n_embd, n_classes, bias=False)

    def forward(self, hidden, attention_mask):
        logits = self.score(hidden)                   # score every position, then pick
        return last_token_pool(logits, attention_mask)


class LoRALinear(nn.Module):
    def __init__(self, in_features, out_features, r, alpha):
        super().__init__()
        self.scale = alpha / r
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / math.sqrt(in_features),
                                   requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False)
        self.lora_A = nn.Parameter(torch.randn(r, in_features) * 0.01)
        self.lora_B = nn.Parameter(torch.zeros(out_features, r))

    def forward(self, x):
        return F.linear(x, self.weight, self.bias) + self.scale * F.linear(F.linear(x, self.lora_A), self.lora_B)

    def merge(self):
        out_features, in_features = self.weight.shape
        merged = nn.Linear(in_features, out_features).to(self.weight.dtype)
        with torch.no_grad():
            merged.weight.copy_(self.weight + self.scale * torch.einsum("or,ri->oi", self.lora_B, self.lora_A))
            merged.bias.copy_(self.bias)
        return merged


def chat_tokens(messages, add_generation_prompt=False):
    text, counts = "", []
    for m in messages:
        head = "<|" + m["role"] + "|>"
        body = m["content"] + "<|end|>"
        text += head + body
        counts += [False] * len(head.encode()) + [m["role"] == "assistant"] * len(body.encode())
    if add_generation_prompt:
        text += "<|assistant|>"
        counts += [False] * len("<|assistant|>")
    return torch.tensor(list(text.encode()), dtype=torch.long), torch.tensor(counts)


def masked_lm_loss(logits, targets, loss_mask):
    labels = targets.masked_fill(~loss_mask, -100)
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
'''

WRONG = '''
import torch
import torch.nn.functional as F
from torch import nn


def last_token_pool(hidden, attention_mask):
    lengths = attention_mask.long().sum(dim=1)
    return hidden[range(len(lengths)), lengths - 1]


def masked_lm_loss(logits, targets, loss_mask):
    losses = []
    for b in range(logits.shape[0]):
        keep = loss_mask[b]
        losses.append(F.cross_entropy(logits[b][keep], targets[b][keep]))
    return torch.stack(losses).mean()


def chat_tokens(messages, add_generation_prompt=False):
    ids, mask = [], []
    for m in messages:
        piece = "<|" + m["role"] + "|>" + m["content"] + "<|end|>"
        ids += list(piece.encode())
        mask += [m["role"] == "assistant"] * len(piece.encode())
    if add_generation_prompt:
        ids += list(b"<|assistant|>")
        mask += [False] * 13
    return torch.tensor(ids), torch.tensor(mask)


class LoRALinear(nn.Module):
    def __init__(self, in_features, out_features, r, alpha):
        super().__init__()
        self.alpha = alpha
        self.weight = nn.Parameter(torch.zeros(out_features, in_features), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False)
        self.lora_A = nn.Parameter(torch.randn(r, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, r))

    def forward(self, x):
        return x @ self.weight.T + self.bias + self.alpha * (x @ self.lora_A.T @ self.lora_B.T)

    def merge(self):
        lin = nn.Linear(self.weight.shape[1], self.weight.shape[0]).to(self.weight.dtype)
        lin.weight.data = self.weight + self.alpha * self.lora_B @ self.lora_A
        lin.bias.data = self.bias.clone()
        return lin
'''

def test_chapter_registers_its_exercises():
    assert [e.id for e in all_exercises("05")] == IDS
    assert {i for i in IDS if isinstance(get(i), ModuleExercise)} == {
        "05.ClassificationHead", "05.LoRALinear"}
    for i in IDS:
        assert get(i).forbid and get(i).mistakes


@pytest.mark.parametrize("exercise_id", IDS)
def test_reference_passes_public_and_hidden(exercise_id):
    ex = get(exercise_id)
    fn = REFERENCES[exercise_id]
    assert run(ex, fn).status == "pass", str(run(ex, fn))
    for seed in (1, 987):
        r = run(ex, fn, seed=seed, hidden=True)
        assert r.status == "pass", str(r)
        assert r.n_cases > len(ex.cases(seed, False))


@pytest.mark.parametrize("exercise_id", IDS)
def test_a_learners_own_correct_solution_passes_on_many_seeds(learner, exercise_id):
    ex, module = get(exercise_id), learner(LEARNER)
    fn = getattr(module, ex.entry)
    for seed in range(4):
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


def test_a_learners_own_mistakes_are_named(learner):
    wrong = learner(WRONG)
    expected = {"05.last_token_pool": "lengths - 1: assumes right padding",
                "05.masked_lm_loss": "mean of per-sequence means",
                "05.chat_tokens": "role headers in the loss",
                "05.LoRALinear": "scaled by alpha instead of alpha / r"}
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

"""Chapter 06 exercise specs: other correct ways of writing each loss pass (F.kl_div,
cross-entropy minus entropy, float64 upcasts, F.normalize), the classic mistakes are named,
and the training notebook may import the course's trainer but not the distillation answers."""

import pytest
import torch
import torch.nn.functional as F

from llmcourse.checks import all_exercises, get, run
from llmcourse.checks.forbidden import violations_for

IDS = ["06.cosine", "06.kd_kl", "06.kd_loss", "06.kd_objective", "06.softmax_t"]


def test_chapter_registers_its_exercises():
    assert [e.id for e in all_exercises("06") if getattr(e, "kind", "") != "challenge"] == IDS


# -- alternative correct implementations a learner might write --------------------------------

def softmax_pow(logits, T=1.0, dim=-1):  # softmax(z)^(1/T), renormalised, in log space
    z = logits / T
    e = torch.exp(z - z.amax(dim=dim, keepdim=True))
    return e / e.sum(dim=dim, keepdim=True)


def kl_via_kl_div(student_logits, teacher_logits, T=1.0):
    V = student_logits.shape[-1]
    return T ** 2 * F.kl_div(F.log_softmax(student_logits.reshape(-1, V) / T, -1),
                             F.log_softmax(teacher_logits.reshape(-1, V) / T, -1),
                             reduction="batchmean", log_target=True)


def kl_ce_minus_entropy(student_logits, teacher_logits, T=1.0):
    log_q = torch.log_softmax(student_logits / T, -1)
    log_p = torch.log_softmax(teacher_logits / T, -1)
    p = log_p.exp()
    ce = -(p * log_q).sum(-1)
    ent = -torch.xlogy(p, p).sum(-1)
    return T ** 2 * (ce - ent).mean()


def kl_float64(student_logits, teacher_logits, T=1.0):
    out = kl_ce_minus_entropy(student_logits.double(), teacher_logits.double(), T)
    return out.to(student_logits.dtype)


def loss_own_ce(student_logits, teacher_logits, targets, T=2.0, alpha=0.5):
    logp = torch.log_softmax(student_logits, -1)
    hard = -logp.gather(-1, targets.unsqueeze(-1)).mean()
    return alpha * kl_ce_minus_entropy(student_logits, teacher_logits, T) + (1 - alpha) * hard


def cosine_normalize(student_hidden, teacher_hidden, proj=None):
    h = student_hidden if proj is None else student_hidden @ proj
    a = h / h.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    b = teacher_hidden / teacher_hidden.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    return 1 - (a * b).sum(-1).mean()


def objective_log_target(student_logits, teacher_logits, targets, T=2.0, alpha=0.5):
    V = student_logits.shape[-1]
    s, t = student_logits.reshape(-1, V), teacher_logits.reshape(-1, V)
    soft = F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), reduction="sum",
                    log_target=True) / s.shape[0]
    return alpha * T ** 2 * soft + (1 - alpha) * F.cross_entropy(s, targets.reshape(-1))


@pytest.mark.parametrize("exercise_id,fn", [
    ("06.softmax_t", softmax_pow),
    ("06.kd_kl", kl_via_kl_div), ("06.kd_kl", kl_ce_minus_entropy), ("06.kd_kl", kl_float64),
    ("06.kd_loss", loss_own_ce),
    ("06.cosine", cosine_normalize),
    ("06.kd_objective", objective_log_target),
])
def test_other_correct_implementations_pass(exercise_id, fn):
    ex = get(exercise_id)
    for seed, hidden in ((None, False), (11, True), (12345, True)):
        # judged on behaviour only: these helpers use built-ins some specs forbid
        ex_rules, type(ex).rules = type(ex).rules, property(lambda self: ())
        try:
            r = run(ex, fn, seed=seed, hidden=hidden)
        finally:
            type(ex).rules = ex_rules
        assert r.status == "pass", str(r)


@pytest.mark.parametrize("exercise_id,name", [
    ("06.kd_kl", "KL direction reversed (student || teacher)"),
    ("06.kd_kl", "missing T^2"),
    ("06.kd_loss", "KL direction reversed (student || teacher)"),
    ("06.kd_loss", "missing T^2"),
    ("06.kd_objective", "F.kl_div arguments swapped"),
    ("06.kd_objective", "reduction='batchmean' on 3-D logits"),
    ("06.kd_objective", "missing T^2"),
])
def test_the_errata_mistakes_are_diagnosed(exercise_id, name):
    ex = get(exercise_id)
    mistake = next(m for m in ex.mistakes if m.name == name)
    r = run(ex, mistake.impl, hidden=True, seed=3)
    assert r.status == "fail" and r.diagnosis is mistake and name in str(r)


def test_kl_div_is_forbidden_in_losses_but_allowed_in_the_objective():
    src = ("import torch.nn.functional as F\n"
           "def distillation_kl(s, t, T=1.0):\n"
           "    return T ** 2 * F.kl_div(F.log_softmax(s / T, -1), F.softmax(t / T, -1))\n")
    assert violations_for("distillation_kl", get("06.kd_kl").rules, [("cell", src)])
    obj = src.replace("distillation_kl", "kd_objective")
    assert not violations_for("kd_objective", get("06.kd_objective").rules, [("cell", obj)])


def test_training_notebook_may_import_trainer_and_gpt_only():
    rules = get("06.kd_objective").rules
    ok = ("from llmcourse.reference.training import train_lm, TrainConfig\n"
          "from llmcourse.reference.gpt import GPT, GPTConfig\n"
          "def kd_objective(s, t, y, T=2.0, alpha=0.5):\n    return s.sum()\n")
    assert not violations_for("kd_objective", rules, [("cell", ok)])
    bad = ("from llmcourse.reference.distillation import distillation_loss\n"
           "def kd_objective(s, t, y, T=2.0, alpha=0.5):\n"
           "    return distillation_loss(s, t, y, T, alpha)\n")
    found = violations_for("kd_objective", rules, [("cell", bad)])
    assert found and "llmcourse.reference.distillation" in str(found[0])
    sneaky = ("import llmcourse.reference as R\n"
              "def kd_objective(s, t, y, T=2.0, alpha=0.5):\n"
              "    return R.distillation.distillation_loss(s, t, y, T, alpha)\n")
    assert violations_for("kd_objective", rules, [("cell", sneaky)])


def test_softmax_builtin_is_forbidden_in_softmax_t():
    src = "import torch\ndef softmax_with_temperature(z, T=1.0, dim=-1):\n    return torch.softmax(z / T, dim)\n"
    assert violations_for("softmax_with_temperature", get("06.softmax_t").rules, [("cell", src)])

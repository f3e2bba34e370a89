"""Chapter 05's train / validation split and early-stopping rule against independent
authorities: torch.utils.data.random_split (the split), a closed form (the first argmin) and
Hugging Face's own EarlyStoppingCallback driven through the Trainer's own best-metric code
(the rule with min_delta = 0), a declarative record-chain definition (min_delta > 0), and
the one place where Hugging Face's convention differs, pinned down."""

from __future__ import annotations

import types

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llmcourse.reference import early_stopping as es_ref

FAST = settings(max_examples=60, deadline=None, derandomize=True)
transformers = pytest.importorskip("transformers")


# ---------------------------------------------------------------------------------------
# The split

@pytest.mark.parametrize("n,frac,seed", [(10, 0.2, 0), (3209, 0.1, 0), (7, 0.5, 3), (101, 0.05, 9)])
def test_split_is_random_split(n, frac, seed):
    train, valid = es_ref.train_valid_split(n, frac, seed)
    n_valid = round(frac * n)
    assert len(valid) == n_valid and len(train) == n - n_valid
    theirs = torch.utils.data.random_split(range(n), [n - n_valid, n_valid],
                                           generator=torch.Generator().manual_seed(seed))
    assert train.tolist() == list(theirs[0]) and valid.tolist() == list(theirs[1])
    assert sorted(train.tolist() + valid.tolist()) == list(range(n))  # disjoint, complete
    again = es_ref.train_valid_split(n, frac, seed)
    assert torch.equal(again[0], train) and torch.equal(again[1], valid)  # deterministic


def test_split_rejects_bad_input():
    for args in [(1, 0.5, 0), (10, 0.0, 0), (10, 1.0, 0)]:
        with pytest.raises(ValueError):
            es_ref.train_valid_split(*args)


# ---------------------------------------------------------------------------------------
# The rule with min_delta = 0: a closed form, and Hugging Face

def closed_form(losses, patience):
    """Stop at the first e with e - (first argmin of losses[:e+1]) >= patience."""
    for e in range(len(losses)):
        best = min(range(e + 1), key=lambda i: (losses[i], i))
        if e - best >= patience:
            return e, best
    return None, min(range(len(losses)), key=lambda i: (losses[i], i))


def hugging_face(losses, patience, threshold=0.0):
    """Hugging Face's EarlyStoppingCallback.on_evaluate, then the Trainer's own
    _determine_best_metric, in the order Trainer._maybe_log_save_evaluate calls them.
    Returns (evaluation at which should_training_stop turns True or None, best evaluation)."""
    from transformers.trainer_callback import EarlyStoppingCallback, TrainerControl, TrainerState
    from transformers.trainer_utils import SaveStrategy

    args = types.SimpleNamespace(metric_for_best_model="loss", greater_is_better=False,
                                 load_best_model_at_end=True, save_strategy=SaveStrategy.STEPS)
    trainer = types.SimpleNamespace(args=args, state=TrainerState())
    callback, control = EarlyStoppingCallback(patience, threshold), TrainerControl()
    for e, v in enumerate(losses):
        trainer.state.global_step = e
        metrics = {"eval_loss": v}
        callback.on_evaluate(args, trainer.state, control, metrics)
        transformers.Trainer._determine_best_metric(trainer, metrics=metrics, trial=None)
        if control.should_training_stop:
            return e, trainer.state.best_global_step
    return None, trainer.state.best_global_step


losses_st = st.lists(st.integers(0, 6), min_size=1, max_size=14).map(lambda xs: [x / 4 for x in xs])


@FAST
@given(losses=losses_st, patience=st.integers(1, 5))
def test_rule_is_the_closed_form(losses, patience):
    got = es_ref.early_stopping({"val_loss": losses}, patience)
    assert got == closed_form(losses, patience)


@FAST
@given(losses=losses_st, patience=st.integers(1, 5))
def test_rule_is_hugging_face_with_min_delta_zero(losses, patience):
    got = es_ref.early_stopping({"val_loss": losses, "test_loss": losses[::-1]}, patience)
    assert got == hugging_face(losses, patience)


# ---------------------------------------------------------------------------------------
# min_delta > 0: Keras's rule, written declaratively

def record_chain(losses, patience, delta):
    """Records: r_0 = 0, r_{k+1} = the first e > r_k with losses[e] < losses[r_k] - delta.
    Stop at the first e with e - (last record <= e) >= patience."""
    records = [0]
    for e in range(1, len(losses)):
        if losses[e] < losses[records[-1]] - delta:
            records.append(e)
    for e in range(len(losses)):
        last = max(r for r in records if r <= e)
        if e - last >= patience:
            return e, last
    return None, records[-1]


@FAST
@given(losses=losses_st, patience=st.integers(1, 5), delta=st.sampled_from([0.0, 0.1, 0.25, 0.3, 0.6]))
def test_rule_is_the_record_chain(losses, patience, delta):
    assert es_ref.early_stopping({"val_loss": losses}, patience, delta) == record_chain(losses, patience, delta)


def test_where_hugging_face_differs():
    """Slow steady improvement by 0.03 per evaluation with a threshold of 0.05: this rule
    (Keras's) keeps the last improvement by more than 0.05 as its reference and never stops;
    Hugging Face's best moves on every step, so its counter reaches 3 and it stops at
    evaluation 3, restoring evaluation 3."""
    losses = [1.0, 0.97, 0.94, 0.91, 0.88, 0.85, 0.82]
    assert es_ref.early_stopping({"val_loss": losses}, 3, 0.05) == (None, 6)
    assert hugging_face(losses, 3, 0.05) == (3, 3)


def test_other_keys_are_ignored_and_bad_input_rejected():
    h = {"train_loss": [3.0, 2.0, 1.0], "val_loss": [0.5, 0.6, 0.7], "test_loss": [0.9, 0.1, 0.0]}
    assert es_ref.early_stopping(h, 2) == (2, 0)
    with pytest.raises(ValueError):
        es_ref.early_stopping({"val_loss": []}, 1)
    with pytest.raises(ValueError):
        es_ref.early_stopping({"val_loss": [1.0]}, 0)

"""classification.ipynb, early stopping: the rule that reads the validation loss of each
evaluation and returns (the evaluation to stop at or None, the checkpoint to restore)."""

from __future__ import annotations

import torch

from ...reference import early_stopping as es_ref
from .. import register
from ..core import Case, Exercise, Mistake, Rule
from ..kit import generator, knob


def _es(history, patience, min_delta=0.0, *, key="val_loss", restore_last=False, late=False,
        early=False, ignore_delta=False, vs_previous=False, ties=False, hf=False, no_none=False):
    """The rule with one knob turned (each knob is one cataloged mistake)."""
    losses = [float(v) for v in history[key]]
    delta = 0.0 if ignore_delta else min_delta
    best, best_epoch, wait, stop = losses[0], 0, 0, None
    for e in range(1, len(losses)):
        v = losses[e]
        if hf:  # Hugging Face: counter vs the moving best; best moves on any strict improvement
            improved = v < best and abs(v - best) > delta
            if v < best:
                best, best_epoch = v, e
        elif vs_previous:
            improved = v < losses[e - 1] - delta
        elif ties:
            improved = v <= best - delta
        else:
            improved = v < best - delta
        if improved:
            wait = 0
            if not hf:
                best, best_epoch = v, e
        else:
            wait += 1
        if (wait > patience) if late else (wait + 1 >= patience if early else wait >= patience):
            if not improved:
                stop = e
                break
    if restore_last:
        best_epoch = stop if stop is not None else len(losses) - 1
    if no_none and stop is None:
        stop = len(losses) - 1
    return stop, best_epoch


def _history(val, test, train=None):
    n = len(val)
    train = train if train is not None else [round(1.2 - 0.1 * i, 4) for i in range(n)]
    return {"train_loss": train, "val_loss": val, "test_loss": test}


@register
class EarlyStopping(Exercise):
    """Early stopping on the validation loss: when to stop, which checkpoint to restore."""
    id = "05.early_stopping"
    entry = "early_stopping"
    forbid = (
        Rule("transformers", "write the rule yourself instead of Hugging Face's "
             "EarlyStoppingCallback"),
    )
    mistakes = (
        Mistake("selects on the test loss", "the test set is for the final report only: choose "
                "when to stop and what to restore from history['val_loss'].", knob(_es, key="test_loss")),
        Mistake("selects on the training loss", "the training loss keeps falling while the model "
                "overfits; early stopping watches history['val_loss'].", knob(_es, key="train_loss")),
        Mistake("restores the last checkpoint, not the best", "when the rule fires the last "
                "`patience` evaluations were no better: restore the best evaluation (and, if the "
                "rule never fires, still the best one).", knob(_es, restore_last=True)),
        Mistake("patience off by one (stops one evaluation late)", "stop at the first evaluation "
                "where the count of evaluations without improvement REACHES patience (>=, not >).",
                knob(_es, late=True)),
        Mistake("patience off by one (stops one evaluation early)", "the best evaluation itself is "
                "not one 'without improvement': stop once `patience` evaluations AFTER the best "
                "failed to improve.", knob(_es, early=True)),
        Mistake("min_delta ignored", "an improvement must beat the best by MORE than min_delta: "
                "val_loss[e] < best - min_delta.", knob(_es, ignore_delta=True)),
        Mistake("compares with the previous evaluation, not the best", "a loss that falls back "
                "after a spike is still worse than the best: compare with the best so far.",
                knob(_es, vs_previous=True)),
        Mistake("a tie counts as an improvement (never stops on a plateau)", "use a strict <: "
                "with <= a flat validation loss resets the counter forever.", knob(_es, ties=True)),
        Mistake("best moves on every small improvement (Hugging Face's Trainer)", "that is the "
                "Trainer's convention (its best checkpoint moves on any improvement, the counter "
                "compares with it); this task's rule, Keras's, moves the best only on an "
                "improvement by more than min_delta.", knob(_es, hf=True)),
        Mistake("returns the last evaluation when the rule never fires", "if the counter never "
                "reaches patience, training was not stopped early: return None as the stop.",
                knob(_es, no_none=True)),
    )

    def reference(self, history, patience, min_delta=0.0):
        return es_ref.early_stopping(history, patience, min_delta)

    def cases(self, seed, hidden):
        def case(label, h, patience, min_delta=0.0):
            return Case(label, (h, patience), dict(min_delta=min_delta), rtol=0.0, atol=0.0)

        cases = [
            case("U-shaped validation loss, patience 2",
                 _history([1.0, 0.8, 0.7, 0.72, 0.75, 0.79, 0.85],
                          [1.05, 0.82, 0.71, 0.69, 0.74, 0.8, 0.86]), 2),
            case("a plateau of ties, patience 3",
                 _history([0.9, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6],
                          [0.95, 0.62, 0.61, 0.6, 0.59, 0.6, 0.6]), 3),
            case("small steps below min_delta = 0.05, patience 2",
                 _history([1.0, 0.99, 0.98, 0.97, 0.96], [1.0, 0.9, 0.8, 0.7, 0.6]), 2, 0.05),
            case("slow steady improvement, min_delta = 0.05, patience 3",
                 _history([1.0, 0.97, 0.94, 0.91, 0.88, 0.85, 0.82],
                          [1.0, 0.97, 0.98, 0.99, 1.0, 1.01, 1.02]), 3, 0.05),
            case("a spike after the first evaluation, patience 2",
                 _history([0.5, 0.8, 0.7, 0.6, 0.55, 0.52, 0.9],
                          [0.5, 0.45, 0.7, 0.6, 0.55, 0.5, 0.9]), 2),
        ]
        if hidden:
            g = generator(seed)
            for i in range(4):
                n = int(torch.randint(6, 16, (1,), generator=g))
                t = torch.arange(n, dtype=torch.float64)
                turn = float(torch.randint(2, n - 2, (1,), generator=g))
                curve = 0.5 + 0.02 * (t - turn) ** 2 / (1 + 0.1 * t)
                val = (curve + 0.03 * torch.randn(n, generator=g, dtype=torch.float64)).round(decimals=2)
                test = (curve + 0.03 * torch.randn(n, generator=g, dtype=torch.float64)).round(decimals=2)
                patience = int(torch.randint(1, 5, (1,), generator=g))
                delta = (0.0, 0.015, 0.025)[i % 3]  # never a multiple of 0.01: no float-rounding ties
                cases.append(case(f"noisy U-shape of {n} evaluations, patience {patience}, "
                                  f"min_delta {delta}", _history(val.tolist(), test.tolist()),
                                  patience, delta))
            cases += [
                case("one evaluation", _history([0.7], [0.6], [0.9]), 1),
                case("patience 1 stops at the first miss", _history([0.9, 0.8, 0.85, 0.7], [0.9, 0.8, 0.7, 0.6]), 1),
                case("monotone improvement never stops",
                     _history([1.0, 0.9, 0.8, 0.7, 0.6, 0.5], [1.0, 1.1, 1.2, 1.3, 1.4, 1.5]), 2),
                case("patience longer than the run", _history([0.5, 0.6, 0.7, 0.8], [0.5, 0.4, 0.3, 0.2]), 10),
            ]
        return cases

"""The metrics of the challenges: NumPy only (the grader's own process measures with them and
never imports torch). ``metric(truth_items, got_items) -> (figure, floor or None)``; an
output that cannot be measured raises :class:`ChallengeError` with one line."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from .core import Item


class ChallengeError(ValueError):
    """The learner's output cannot be measured (wrong shape, not normalised, ...): one line."""


def _array(items: list[Item], what: str, ndim: int) -> np.ndarray:
    arrays = [a for _, a, _ in items if a is not None]
    if len(arrays) != 1 or arrays[0].ndim != ndim:
        shapes = [tuple(a.shape) for a in arrays] or "no tensor"
        raise ChallengeError(f"expected {what}, got {shapes}")
    return np.asarray(arrays[0], dtype=np.float64)


def cross_entropy_bits(truth: list[Item], got: list[Item]) -> tuple[float, float]:
    """Mean cross-entropy H(p, q) in bits of the learner's next-symbol log-probabilities
    ``q`` (one row per context) against the true distributions ``p``; the floor is the mean
    entropy H(p) of the same rows (so figure - floor is the mean KL divergence, >= 0)."""
    p = _array(truth, "the truth", 2)
    logq = _array(got, f"a tensor of log-probabilities of shape {tuple(p.shape)}", 2)
    if logq.shape != p.shape:
        raise ChallengeError(f"expected log-probabilities of shape {tuple(p.shape)}, got "
                             f"{tuple(logq.shape)}")
    if np.isnan(logq).any() or np.isposinf(logq).any():
        raise ChallengeError("the log-probabilities hold nan or +inf")
    with np.errstate(all="ignore"):
        m = logq.max(axis=1, keepdims=True)
        lse = (m + np.log(np.exp(logq - m).sum(axis=1, keepdims=True)))[:, 0]
    bad = np.where(~(np.abs(lse) <= 1e-3))[0]
    if bad.size:
        r = int(bad[0])
        raise ChallengeError(f"row {r} is not a distribution: logsumexp = {lse[r]:.4g} "
                             f"(each row must be log-probabilities that sum to 1; "
                             f"{bad.size} rows are off)")
    support = p > 0
    if np.isneginf(logq[support]).any():
        return math.inf, _entropy_bits(p)
    ce = -(np.where(support, p * np.where(support, logq, 0.0), 0.0)).sum(axis=1).mean()
    return float(ce / math.log(2)), _entropy_bits(p)


def _entropy_bits(p: np.ndarray) -> float:
    with np.errstate(all="ignore"):
        h = -np.where(p > 0, p * np.log2(np.where(p > 0, p, 1.0)), 0.0).sum(axis=1)
    return float(h.mean())


def _arrays(items: list[Item]) -> list[np.ndarray]:
    return [np.asarray(a, dtype=np.float64) for _, a, _ in items if a is not None]


def relative_error(truth: list[Item], got: list[Item]) -> tuple[float, None]:
    """max |got - truth| / max |truth| over every array of the output (same structure as
    the truth: e.g. logits, or (logits, cache)); +inf for nan/inf where the truth is finite."""
    ts, gs = _arrays(truth), _arrays(got)
    if len(ts) != len(gs) or any(t.shape != g.shape for t, g in zip(ts, gs)):
        raise ChallengeError(f"expected arrays of shapes {[tuple(t.shape) for t in ts]}, got "
                             f"{[tuple(g.shape) for g in gs]}")
    worst = 0.0
    for t, g in zip(ts, gs):
        scale = max(float(np.abs(t).max(initial=0.0)), 1e-30)
        with np.errstate(all="ignore"):
            err = np.abs(g - t)
        if not np.isfinite(err).all():
            return math.inf, None
        worst = max(worst, float(err.max(initial=0.0)) / scale)
    return worst, None


def accuracy(truth: list[Item], got: list[Item]) -> tuple[float, None]:
    """Fraction of correct labels: the truth holds labels (N,); the output labels (N,) or
    scores (N, C) whose argmax is the label. Higher is better."""
    y = _array(truth, "the labels", 1)
    arrays = _arrays(got)
    if len(arrays) != 1 or arrays[0].ndim not in (1, 2) or arrays[0].shape[0] != y.shape[0]:
        raise ChallengeError(f"expected {y.shape[0]} labels (N,) or scores (N, C), got "
                             f"{[tuple(a.shape) for a in arrays] or 'no tensor'}")
    a = arrays[0]
    if not np.isfinite(a).all():
        raise ChallengeError("the output holds nan or inf")
    pred = a.argmax(axis=1) if a.ndim == 2 else a
    return float((pred == y).mean()), None


def abs_log_error(truth: list[Item], got: list[Item]) -> tuple[float, None]:
    """Mean |log(got / truth)| of positive predictions (e.g. losses); lower is better."""
    t = np.concatenate([a.ravel() for a in _arrays(truth)])
    arrays = _arrays(got)
    g = np.concatenate([a.ravel() for a in arrays]) if arrays else np.zeros(0)
    if g.shape != t.shape:
        raise ChallengeError(f"expected {t.size} numbers, got {g.size}")
    if not (np.isfinite(g).all() and (g > 0).all()):
        raise ChallengeError("every prediction must be a positive finite number")
    return float(np.abs(np.log(g / t)).mean()), None


def expected_calibration_error(truth: list[Item], got: list[Item]) -> tuple[float, None]:
    """ECE with 15 equal-width bins of the top probability: sum_b (n_b / N) |acc_b - conf_b|.
    The truth holds labels (N,); the output probabilities (N, C), rows summing to 1."""
    y = _array(truth, "the labels", 1).astype(np.int64)
    p = _array(got, f"probabilities of shape ({y.shape[0]}, C)", 2)
    if p.shape[0] != y.shape[0] or not np.isfinite(p).all() or (p < 0).any():
        raise ChallengeError(f"expected finite probabilities of shape ({y.shape[0]}, C), got "
                             f"{tuple(p.shape)}")
    if (np.abs(p.sum(axis=1) - 1) > 1e-3).any():
        raise ChallengeError("each row must be probabilities that sum to 1")
    conf, pred = p.max(axis=1), p.argmax(axis=1)
    bins = np.minimum((conf * 15).astype(np.int64), 14)
    ece = 0.0
    for b in range(15):
        m = bins == b
        if m.any():
            ece += m.mean() * abs(float((pred[m] == y[m]).mean()) - float(conf[m].mean()))
    return float(ece), None


METRICS: dict[str, Callable[[list[Item], list[Item]], tuple[float, float | None]]] = {
    "cross_entropy_bits": cross_entropy_bits,
    "relative_error": relative_error,
    "accuracy": accuracy,
    "abs_log_error": abs_log_error,
    "expected_calibration_error": expected_calibration_error,
}


def relative_error_float16(truth: list[Item], got: list[Item]) -> tuple[float, None]:
    """:func:`relative_error` of an output that must be float16 (every tensor of it)."""
    tags = [tag for _, a, tag in got if a is not None]
    if not tags or any(t != "torch.float16" for t in tags):
        raise ChallengeError(f"the output must be torch.float16 tensors, got {tags or 'no tensor'}")
    return relative_error(truth, got)


METRICS["relative_error_float16"] = relative_error_float16


def bits_vs_baseline(truth: list[Item], got: list[Item]) -> tuple[float, float]:
    """:func:`cross_entropy_bits` of the learner minus that of a baseline model measured on the
    same rows (negative = better than the baseline). The truth holds the true distributions
    ``p`` and the baseline's log-probabilities, both (N, V); the floor is H(p) minus the
    baseline's cross-entropy: the most any model can gain over it. A paired difference: the
    sampling noise of the rows, which moves both figures together, cancels."""
    pair = [item for item in truth if item[1] is not None]
    if len(pair) != 2:
        raise ChallengeError("the truth must hold the true distributions and the baseline's "
                             "log-probabilities")
    learner, floor = cross_entropy_bits(pair[:1], got)
    baseline, _ = cross_entropy_bits(pair[:1], pair[1:])
    return learner - baseline, floor - baseline


METRICS["bits_vs_baseline"] = bits_vs_baseline

"""parallel.ipynb: data parallelism (gradient averaging and accumulation) and
tensor-parallel column and row splits of a linear layer.

The data-parallel exercise runs the learner's function on every rank of a
:class:`~llmcourse.reference.parallel.SimulatedGroup` (ranks as threads of one process, with an
``all_reduce`` that sums in place like gloo's), so it is checked without sockets; the notebook
then runs the same function in real processes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ...reference import parallel as parallel_ref
from .. import calls, register
from ..core import Case, Exercise, Mistake, Rule
from ..kit import F32, F64, generator, randn

# The notebooks train with the course's trainer and GPT: those two reference modules may
# be imported; every other part of the reference stays off limits.
TRAINER = ("training", "gpt")


# ---------------------------------------------------------------------------------------
# 07.average_gradients (ranks simulated as threads)

def _avg_sum(model, world_size, all_reduce):
    for p in model.parameters():
        if p.grad is not None:
            all_reduce(p.grad)


def _avg_copy(model, world_size, all_reduce):
    for p in model.parameters():
        if p.grad is not None:
            g = p.grad.clone()
            all_reduce(g)
            g /= world_size


def _avg_op_avg(model, world_size, all_reduce):
    for p in model.parameters():
        if p.grad is not None:
            all_reduce(p.grad, op=torch.distributed.ReduceOp.AVG)


@register
class AverageGradients(Exercise):
    """Data parallelism: all-reduce and average the gradients."""
    id = "07.average_gradients"
    entry = "average_gradients"
    allow_reference = TRAINER
    forbid = (Rule("torch.nn.parallel", "average the gradients yourself with all_reduce instead "
                   "of DistributedDataParallel"),)
    mistakes = (
        Mistake("summed, not averaged", "all_reduce SUMS over ranks; divide by world_size to get "
                "the full batch's mean-loss gradient.", _avg_sum),
        Mistake("all-reduced a copy", "all_reduce works in place on the tensor you pass: pass "
                "p.grad itself (and divide it in place), not a clone or the weights.", _avg_copy),
        Mistake("ReduceOp.AVG", "gloo has no AVG reduction: all_reduce with the default SUM, then "
                "divide by world_size.", _avg_op_avg),
    )

    def reference(self, model, world_size, all_reduce):
        return parallel_ref.average_gradients(model, world_size, all_reduce)

    call = calls.simulated_ranks

    def cases(self, seed, hidden):
        g = generator(seed)

        def case(label, world_size, shapes, dtype=F32, frozen=()):
            params = [randn(g, *s, dtype=dtype) for s in shapes]
            grads = [[None if i in frozen else randn(g, *s, dtype=dtype) for i, s in enumerate(shapes)]
                     for _ in range(world_size)]
            return Case(label, (), dict(params=params, grads=grads))

        cases = [case("2 ranks, a weight and a bias", 2, [(3, 4), (3,)]),
                 case("4 ranks, one frozen parameter (grad None)", 4, [(5,), (2, 2), (6,)], frozen=(1,))]
        if hidden:
            cases += [case("3 ranks, float64", 3, [(4, 3), (4,), (2, 3, 2)], dtype=F64),
                      case("8 ranks, one parameter", 8, [(7,)]),
                      case("1 rank (nothing to average)", 1, [(2, 5)])]
        return cases


# ---------------------------------------------------------------------------------------
# 07.accumulate_gradients

def _acc_no_clear(model, x, y, micro_batch_size):
    B = len(x)
    for i in range(0, B, micro_batch_size):
        xb, yb = x[i:i + micro_batch_size], y[i:i + micro_batch_size]
        (F.cross_entropy(model(xb), yb) * (len(xb) / B)).backward()


def _acc_summed(model, x, y, micro_batch_size):
    for p in model.parameters():
        p.grad = None
    for i in range(0, len(x), micro_batch_size):
        F.cross_entropy(model(x[i:i + micro_batch_size]), y[i:i + micro_batch_size]).backward()


def _acc_equal_weights(model, x, y, micro_batch_size):
    for p in model.parameters():
        p.grad = None
    k = math.ceil(len(x) / micro_batch_size)
    for i in range(0, len(x), micro_batch_size):
        (F.cross_entropy(model(x[i:i + micro_batch_size]), y[i:i + micro_batch_size]) / k).backward()


def _acc_zero_inside(model, x, y, micro_batch_size):
    B = len(x)
    for i in range(0, B, micro_batch_size):
        for p in model.parameters():
            p.grad = None
        xb, yb = x[i:i + micro_batch_size], y[i:i + micro_batch_size]
        (F.cross_entropy(model(xb), yb) * (len(xb) / B)).backward()


@register
class AccumulateGradients(Exercise):
    """Gradient accumulation equals the full batch."""
    id = "07.accumulate_gradients"
    entry = "accumulate_gradients"
    allow_reference = TRAINER
    mistakes = (
        Mistake("old gradients not cleared", "backward() ADDS to .grad: clear the gradients "
                "(p.grad = None or zero_grad) before the first micro-batch.", _acc_no_clear),
        Mistake("micro-batch losses summed", "each micro-batch's loss is a mean over its own "
                "examples; weight it by len(micro-batch) / len(batch).", _acc_summed),
        Mistake("equal weights for unequal micro-batches", "dividing every micro-batch loss by "
                "the number of micro-batches is right only if they are all the same size; the "
                "last one may be smaller: weight by len(micro-batch) / len(batch).",
                _acc_equal_weights),
        Mistake("gradients cleared inside the loop", "clear once, before the loop; clearing per "
                "micro-batch keeps only the last one's gradient.", _acc_zero_inside),
    )

    def reference(self, model, x, y, micro_batch_size):
        return parallel_ref.accumulate_gradients(model, x, y, micro_batch_size)

    call = calls.accumulate_gradients

    def cases(self, seed, hidden):
        g = generator(seed)

        def case(label, B, d, h, k, mbs, dtype=F32):
            return Case(label, (), dict(
                x=randn(g, B, d, dtype=dtype), y=torch.randint(0, k, (B,), generator=g),
                micro_batch_size=mbs, w1=randn(g, h, d, dtype=dtype, scale=d ** -0.5),
                b1=randn(g, h, dtype=dtype, scale=0.1), w2=randn(g, k, h, dtype=dtype, scale=h ** -0.5),
                b2=randn(g, k, dtype=dtype, scale=0.1)), rtol=1e-5, atol=1e-6)

        cases = [case("8 examples in 4 micro-batches of 2", 8, 3, 5, 4, 2),
                 case("10 examples in micro-batches of 4 (4, 4, 2)", 10, 4, 6, 3, 4)]
        if hidden:
            cases += [case("float64, 13 examples in micro-batches of 5", 13, 5, 7, 6, 5, dtype=F64),
                      case("one micro-batch = the full batch", 6, 2, 3, 2, 6),
                      case("micro-batches of 1", 5, 3, 4, 5, 1)]
        return cases


# ---------------------------------------------------------------------------------------
# 07.column_parallel_linear and 07.row_parallel_linear

def _col_dim0(x, weight_shards, bias_shards):
    return torch.cat([x @ w.T + b for w, b in zip(weight_shards, bias_shards)], dim=0)


def _col_no_bias(x, weight_shards, bias_shards):
    return torch.cat([x @ w.T for w in weight_shards], dim=-1)


def _col_summed(x, weight_shards, bias_shards):
    return sum(x @ w.T + b for w, b in zip(weight_shards, bias_shards))


def _linear_cases(g, hidden, style):
    def case(label, lead, n_in, n_out, ranks, dtype=F32):
        lin_w = randn(g, n_out, n_in, dtype=dtype, scale=n_in ** -0.5)
        lin_b = randn(g, n_out, dtype=dtype, scale=0.5)
        x = randn(g, *lead, n_in, dtype=dtype)
        ws, bs = parallel_ref.shard_linear(lin_w, lin_b, ranks, style)
        if style == "column":
            return Case(label, (x, ws, bs))
        return Case(label, (list(x.chunk(ranks, dim=-1)), ws, bs))

    cases = [case("batch (4, 8) -> 6 on 2 ranks", (4,), 8, 6, 2),
             case("(2, 3, 12) -> 8 on 4 ranks", (2, 3), 12, 8, 4)]
    if hidden:
        cases += [case("float64, (5, 9) -> 6 on 3 ranks", (5,), 9, 6, 3, dtype=F64),
                  case("1 rank", (3,), 4, 5, 1),
                  case("uneven shards: 10 features on 3 ranks", (2, 2), 10, 10, 3)]
    return cases


@register
class ColumnParallelLinear(Exercise):
    """Column-parallel linear layer."""
    id = "07.column_parallel_linear"
    entry = "column_parallel_linear"
    allow_reference = TRAINER
    forbid = (Rule("torch.nn.functional.linear", "write x @ W_i.T + b_i yourself"),)
    mistakes = (
        Mistake("gathered along the batch axis", "each rank owns some OUTPUT features: "
                "concatenate the pieces along the last axis (dim=-1).", _col_dim0),
        Mistake("bias forgotten", "rank i adds its own slice of the bias, b_i.", _col_no_bias),
        Mistake("pieces summed", "column shards produce different output features: concatenate "
                "them (all-gather); summing is for row shards.", _col_summed),
    )

    def reference(self, x, weight_shards, bias_shards):
        return parallel_ref.column_parallel_linear(x, weight_shards, bias_shards)

    def cases(self, seed, hidden):
        return _linear_cases(generator(seed), hidden, "column")


def _row_bias_each(x_shards, weight_shards, bias):
    return sum(x @ w.T + bias for x, w in zip(x_shards, weight_shards))


def _row_mean(x_shards, weight_shards, bias):
    return sum(x @ w.T for x, w in zip(x_shards, weight_shards)) / len(x_shards) + bias


def _row_cat(x_shards, weight_shards, bias):
    return torch.cat([x @ w.T for x, w in zip(x_shards, weight_shards)], dim=-1)


@register
class RowParallelLinear(Exercise):
    """Row-parallel linear layer."""
    id = "07.row_parallel_linear"
    entry = "row_parallel_linear"
    allow_reference = TRAINER
    forbid = (Rule("torch.nn.functional.linear", "write x_i @ W_i.T yourself"),
              Rule(".cat", "a row-parallel layer never re-assembles W or x: each rank multiplies "
                   "its own slice and the all-reduce sums the partial products"),
              Rule(".concat", "each rank multiplies its own slice; the all-reduce sums"),
              Rule(".hstack", "each rank multiplies its own slice; the all-reduce sums"))
    mistakes = (
        Mistake("bias added on every rank", "the partial products are summed over ranks, so a "
                "bias added on each rank is counted world_size times: add it once, after the sum.",
                _row_bias_each),
        Mistake("partial products averaged", "x W^T = sum_i x_i W_i^T: a sum over ranks, not a "
                "mean.", _row_mean),
        Mistake("partial products concatenated", "row shards all produce the SAME output features "
                "(partial sums): add them, then add the bias.", _row_cat),
    )

    def reference(self, x_shards, weight_shards, bias):
        return parallel_ref.row_parallel_linear(x_shards, weight_shards, bias)

    def cases(self, seed, hidden):
        return _linear_cases(generator(seed), hidden, "row")

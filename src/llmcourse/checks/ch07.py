"""Chapter 07 exercises: counting parameters and FLOPs, power-law fits, Chinchilla, data and
tensor parallelism, int8 quantization and magnitude pruning.

Integer answers (parameter and FLOP counts) must be exact. The data-parallel exercise runs
the learner's function on every rank of a :class:`~llmcourse.reference.parallel.SimulatedGroup`
(ranks as threads of one process, with an ``all_reduce`` that sums in place like gloo's), so
it is checked without sockets; the notebook then runs the same function in real processes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..reference import compression as CMP
from ..reference import parallel as P
from ..reference import scaling as S
from . import register
from .core import GLOBAL_RULES, Case, Exercise, Mistake, Rule

F32, F64 = torch.float32, torch.float64
EXACT = dict(rtol=0.0, atol=0.5)  # integer counts: exact


class Ch07Exercise(Exercise):
    """The notebooks train with the course's trainer and GPT: those two reference modules may
    be imported; every other part of the reference stays off limits."""

    @property
    def rules(self):
        keep = tuple(r for r in GLOBAL_RULES if r.target != "llmcourse.reference")
        return tuple(dict.fromkeys(self.forbid + (
            Rule("llmcourse.reference", "write it yourself instead of calling the course's "
                 "reference (only its training and gpt modules are allowed here)",
                 allow=("training", "gpt")),) + keep))


def _randn(g, *shape, dtype=F32, scale=1.0) -> torch.Tensor:
    return (torch.randn(*shape, generator=g, dtype=F64) * scale).to(dtype)


# ---------------------------------------------------------------------------------------
# 07.param_count

def _pc_untied(vocab_size, block_size, n_layer, n_head, n_embd, non_embedding=False):
    return S.gpt_param_count(vocab_size, block_size, n_layer, n_embd, non_embedding) + vocab_size * n_embd


def _pc_no_bias(vocab_size, block_size, n_layer, n_head, n_embd, non_embedding=False):
    return S.gpt_param_count(vocab_size, block_size, n_layer, n_embd, non_embedding) - 9 * n_layer * n_embd


def _pc_no_ln(vocab_size, block_size, n_layer, n_head, n_embd, non_embedding=False):
    return S.gpt_param_count(vocab_size, block_size, n_layer, n_embd, non_embedding) - (4 * n_layer + 2) * n_embd


def _pc_no_wpe(vocab_size, block_size, n_layer, n_head, n_embd, non_embedding=False):
    n = S.gpt_param_count(vocab_size, block_size, n_layer, n_embd, non_embedding)
    return n if non_embedding else n - block_size * n_embd


def _pc_flag_ignored(vocab_size, block_size, n_layer, n_head, n_embd, non_embedding=False):
    return S.gpt_param_count(vocab_size, block_size, n_layer, n_embd, False)


def _pc_12LC2(vocab_size, block_size, n_layer, n_head, n_embd, non_embedding=False):
    n = 12 * n_layer * n_embd ** 2
    return n if non_embedding else n + (vocab_size + block_size) * n_embd


@register
class ParamCount(Ch07Exercise):
    """Exact parameter count of the GPT."""
    id = "07.param_count"
    entry = "gpt_param_count"
    forbid = (
        Rule(".numel", "count from the formula: building a model and calling numel() is the "
             "measurement your formula is checked against"),
        Rule(".parameters", "count from the formula instead of iterating over a model's parameters"),
        Rule(".named_parameters", "count from the formula instead of iterating over a model's "
             "parameters"),
        Rule(".state_dict", "count from the formula instead of reading a model's state_dict"),
    )
    mistakes = (
        Mistake("output layer counted separately", "the GPT ties lm_head.weight to wte.weight: "
                "one tensor, counted once.", _pc_untied),
        Mistake("biases forgotten", "every nn.Linear in a block has a bias: 3C + C + 4C + C = 9C "
                "per layer.", _pc_no_bias),
        Mistake("LayerNorms forgotten", "ln_1, ln_2 (2C each: weight and bias) in every block "
                "and ln_f (2C) at the end.", _pc_no_ln),
        Mistake("position embeddings forgotten", "wpe is a (block_size, C) table: it counts in N "
                "(and is left out of the non-embedding count).", _pc_no_wpe),
        Mistake("non_embedding ignored", "with non_embedding=True leave out wte and wpe "
                "(V*C + T*C).", _pc_flag_ignored),
        Mistake("12 L C^2 approximation", "12 L C^2 is Kaplan's approximation; the exact count "
                "adds the biases and LayerNorms (13 L C + 2 C).", _pc_12LC2),
    )

    def reference(self, vocab_size, block_size, n_layer, n_head, n_embd, non_embedding=False):
        return S.gpt_param_count(vocab_size, block_size, n_layer, n_embd, non_embedding)

    def cases(self, seed, hidden):
        g = torch.Generator().manual_seed(seed)

        def case(label, V, T, L, H, C, ne=False):
            return Case(label, (), dict(vocab_size=V, block_size=T, n_layer=L, n_head=H, n_embd=C,
                                        non_embedding=ne), **EXACT)

        cases = [
            case("the course's tiny GPT", 256, 128, 4, 4, 128),
            case("GPT-2 small (124M)", 50257, 1024, 12, 12, 768),
            case("tiny GPT, non-embedding", 256, 128, 4, 4, 128, True),
        ]
        if hidden:
            r = lambda lo, hi: int(torch.randint(lo, hi, (1,), generator=g))  # noqa: E731
            C = 16 * r(1, 9)
            cases += [
                case("GPT-2 medium, non-embedding", 50257, 1024, 24, 16, 1024, True),
                case("random small config", r(50, 300), r(8, 64), r(1, 5), 2, C),
                case("random, non-embedding", r(50, 300), r(8, 64), r(1, 5), 4, C, True),
                case("one layer, one head", 65, 32, 1, 1, 8),
            ]
        return cases


# ---------------------------------------------------------------------------------------
# 07.train_flops

def _fl(vocab_size, n_layer, n_embd, seq_len, fwd=2, attn=4, head=True):
    n = 12 * n_layer * n_embd ** 2 + (vocab_size * n_embd if head else 0)
    return fwd * n + attn * n_layer * seq_len * n_embd


@register
class TrainFlops(Ch07Exercise):
    """Training FLOPs per token: 6N plus attention."""
    id = "07.train_flops"
    entry = "train_flops_per_token"
    forbid = (
        Rule(".FlopCounterMode", "derive the count; FlopCounterMode is what checks it"),
    )
    mistakes = (
        Mistake("forward pass only", "training runs forward (2 N) and backward (4 N: gradients "
                "of activations and of weights): 3 x the forward pass.",
                lambda vocab_size, n_layer, n_embd, seq_len: _fl(vocab_size, n_layer, n_embd, seq_len, 2, 4)),
        Mistake("attention term forgotten", "Q K^T and softmax(.) V are matmuls without weights: "
                "4 L T C per token forward, 12 L T C with the backward pass.",
                lambda vocab_size, n_layer, n_embd, seq_len: _fl(vocab_size, n_layer, n_embd, seq_len, 6, 0)),
        Mistake("output layer forgotten", "the (tied) head is a V x C matmul for every token: "
                "it costs 6 V C per token in training even though its weights are the embedding.",
                lambda vocab_size, n_layer, n_embd, seq_len: _fl(vocab_size, n_layer, n_embd, seq_len, 6, 12, False)),
        Mistake("multiply-adds, not FLOPs", "a multiply-add is 2 FLOPs: the forward pass of an "
                "m x n weight costs 2 m n per token.",
                lambda vocab_size, n_layer, n_embd, seq_len: _fl(vocab_size, n_layer, n_embd, seq_len, 3, 6)),
        Mistake("causal half of attention", "this GPT computes the full T x T score matrix and "
                "masks it; the FLOPs of the masked half are still spent (4 L T C forward).",
                lambda vocab_size, n_layer, n_embd, seq_len: _fl(vocab_size, n_layer, n_embd, seq_len, 6, 6)),
    )

    def reference(self, vocab_size, n_layer, n_embd, seq_len):
        return S.train_flops_per_token(vocab_size, n_layer, n_embd, seq_len)

    def cases(self, seed, hidden):
        g = torch.Generator().manual_seed(seed)

        def case(label, V, L, C, T):
            return Case(label, (), dict(vocab_size=V, n_layer=L, n_embd=C, seq_len=T), **EXACT)

        cases = [case("the course's tiny GPT, T = 128", 256, 4, 128, 128),
                 case("GPT-2 small, T = 1024", 50257, 12, 768, 1024)]
        if hidden:
            r = lambda lo, hi: int(torch.randint(lo, hi, (1,), generator=g))  # noqa: E731
            cases += [case("random config", r(50, 500), r(1, 6), 8 * r(1, 20), r(4, 300)),
                      case("GPT-3 175B, T = 2048", 50257, 96, 12288, 2048),
                      case("T = 1", 100, 2, 16, 1)]
        return cases


# ---------------------------------------------------------------------------------------
# 07.chinchilla_optimal

def _ch_swapped(C, A, B, alpha, beta):
    G = (alpha * A / (beta * B)) ** (1 / (alpha + beta))
    s = C / 6
    return G * s ** (alpha / (alpha + beta)), s ** (beta / (alpha + beta)) / G


def _ch_no6(C, A, B, alpha, beta):
    return S.chinchilla_optimal(C * 6, A, B, alpha, beta)


def _ch_G_inverted(C, A, B, alpha, beta):
    G = (beta * B / (alpha * A)) ** (1 / (alpha + beta))
    s = C / 6
    return G * s ** (beta / (alpha + beta)), s ** (alpha / (alpha + beta)) / G


def _ch_D_from_C(C, A, B, alpha, beta):
    n, _ = S.chinchilla_optimal(C, A, B, alpha, beta)
    return n, C / n


@register
class ChinchillaOptimal(Ch07Exercise):
    """Chinchilla compute-optimal N and D."""
    id = "07.chinchilla_optimal"
    entry = "chinchilla_optimal"
    mistakes = (
        Mistake("exponents swapped", "N* grows as (C/6)^(beta/(alpha+beta)) and D* as "
                "(C/6)^(alpha/(alpha+beta)): the exponent of N comes from the OTHER term.", _ch_swapped),
        Mistake("C used instead of C/6", "C = 6 N D, so N D = C / 6.", _ch_no6),
        Mistake("G inverted", "G = (alpha A / (beta B))^(1/(alpha+beta)) multiplies N* and "
                "divides D*.", _ch_G_inverted),
        Mistake("D* = C / N*", "C = 6 N D gives D* = C / (6 N*).", _ch_D_from_C),
    )

    def reference(self, C, A, B, alpha, beta):
        return S.chinchilla_optimal(C, A, B, alpha, beta)

    def cases(self, seed, hidden):
        g = torch.Generator().manual_seed(seed)
        ch = S.CHINCHILLA
        pub = dict(A=ch.A, B=ch.B, alpha=ch.alpha, beta=ch.beta)
        cases = [Case("Gopher's budget C = 5.76e23, Chinchilla fit", (5.76e23,), pub, rtol=1e-9, atol=0.0),
                 Case("C = 1e18", (1e18,), pub, rtol=1e-9, atol=0.0)]
        if hidden:
            b = S.BESIROGLU
            u = torch.rand(4, generator=g, dtype=F64)
            cases += [
                Case("Besiroglu et al. refit, C = 1e21", (1e21,),
                     dict(A=b.A, B=b.B, alpha=b.alpha, beta=b.beta), rtol=1e-9, atol=0.0),
                Case("a tensor of budgets", (10 ** (15 + 10 * u),), pub, rtol=1e-9, atol=0.0),
                Case("random constants", (float(10 ** (19 + 5 * u[0])),),
                     dict(A=float(100 + 900 * u[1]), B=float(100 + 2000 * u[2]),
                          alpha=float(0.2 + 0.3 * u[3]), beta=0.3), rtol=1e-9, atol=0.0),
            ]
        return cases


# ---------------------------------------------------------------------------------------
# 07.fit_power_law

def _fit_loglog(N, L):
    X = torch.stack([torch.ones_like(N), N.log()], 1).to(F64)
    c = torch.linalg.lstsq(X, L.to(F64).log()[:, None]).solution[:, 0]
    return 0.0, float(c[0].exp()), float(-c[1])


def _fit_negative_alpha(N, L):
    E, A, alpha = S.fit_power_law(N, L)
    return E, A, -alpha


def _fit_A_not_rescaled(N, L):
    E, A, alpha = S.fit_power_law(N, L)
    return E, A / float(N.max()) ** alpha, alpha


@register
class FitPowerLaw(Ch07Exercise):
    """Fit L(N) = E + A / N^alpha."""
    id = "07.fit_power_law"
    entry = "fit_power_law"
    mistakes = (
        Mistake("straight line in log-log space", "log L = log A - alpha log N has no floor: "
                "with E > 0 the points are not on a line; fit E too.", _fit_loglog),
        Mistake("exponent sign", "alpha is positive: L = E + A * N**(-alpha).", _fit_negative_alpha),
        Mistake("A not rescaled", "if you fit in N / N_max, then A = A_scaled * N_max**alpha.",
                _fit_A_not_rescaled),
    )

    def reference(self, N, L):
        return S.fit_power_law(N, L)

    def cases(self, seed, hidden):
        g = torch.Generator().manual_seed(seed)

        def case(label, N, E, A, alpha, noise=0.0, rtol=1e-5, atol=1e-6):
            L = S.power_law(N, E, A, alpha)
            if noise:
                L = L * (1 + noise * torch.randn(len(N), generator=g, dtype=F64))
            return Case(label, (N, L), rtol=rtol, atol=atol)

        cases = [case("6 sizes, exact power law", torch.tensor([1e4, 3e4, 1e5, 3e5, 1e6, 3e6], dtype=F64),
                      1.7, 40.0, 0.3),
                 case("5 sizes, small A", torch.tensor([2e3, 8e3, 3.2e4, 1.28e5, 5.12e5], dtype=F64),
                      0.5, 8.0, 0.5)]
        if hidden:
            N = torch.logspace(3, 7, 9, dtype=F64)
            u = torch.rand(3, generator=g, dtype=F64)
            cases += [case("9 sizes, random constants", N, float(0.2 + 2 * u[0]),
                           float(5 + 100 * u[1]), float(0.15 + 0.5 * u[2])),
                      case("unsorted sizes", torch.tensor([5e5, 1e4, 2e6, 5e4, 1e5], dtype=F64),
                           2.0, 30.0, 0.25),
                      case("0.2% noise", torch.logspace(4, 7, 8, dtype=F64), 1.0, 20.0, 0.35,
                           noise=0.002, rtol=3e-2, atol=1e-3)]
        return cases


# ---------------------------------------------------------------------------------------
# 07.average_gradients (ranks simulated as threads)

class _Params(nn.Module):
    def __init__(self, values):
        super().__init__()
        self.ps = nn.ParameterList([nn.Parameter(v.clone()) for v in values])


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
class AverageGradients(Ch07Exercise):
    """Data parallelism: all-reduce and average the gradients."""
    id = "07.average_gradients"
    entry = "average_gradients"
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
        return P.average_gradients(model, world_size, all_reduce)

    def call(self, fn, case: Case):
        params, grads = case.kwargs["params"], case.kwargs["grads"]
        world_size = len(grads)
        group = P.SimulatedGroup(world_size)
        models = []
        for r in range(world_size):
            m = _Params(params)
            for p, gr in zip(m.parameters(), grads[r]):
                p.grad = None if gr is None else gr.clone()
            models.append(m)
        group.run(fn, [(m, world_size, group.all_reduce) for m in models])
        return [[p.grad for p in m.parameters()] for m in models]

    def cases(self, seed, hidden):
        g = torch.Generator().manual_seed(seed)

        def case(label, world_size, shapes, dtype=F32, frozen=()):
            params = [_randn(g, *s, dtype=dtype) for s in shapes]
            grads = [[None if i in frozen else _randn(g, *s, dtype=dtype) for i, s in enumerate(shapes)]
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
class AccumulateGradients(Ch07Exercise):
    """Gradient accumulation equals the full batch."""
    id = "07.accumulate_gradients"
    entry = "accumulate_gradients"
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
        return P.accumulate_gradients(model, x, y, micro_batch_size)

    def call(self, fn, case: Case):
        kw = case.kwargs
        w1, b1, w2, b2 = kw["w1"], kw["b1"], kw["w2"], kw["b2"]
        model = nn.Sequential(nn.Linear(w1.shape[1], w1.shape[0]), nn.Tanh(),
                              nn.Linear(w2.shape[1], w2.shape[0])).to(w1.dtype)
        with torch.no_grad():
            for p, v in zip(model.parameters(), (w1, b1, w2, b2)):
                p.copy_(v)
                p.grad = torch.full_like(v, 0.37)  # stale gradients from an earlier step
        fn(model, kw["x"], kw["y"], kw["micro_batch_size"])
        return [p.grad for p in model.parameters()]

    def cases(self, seed, hidden):
        g = torch.Generator().manual_seed(seed)

        def case(label, B, d, h, k, mbs, dtype=F32):
            return Case(label, (), dict(
                x=_randn(g, B, d, dtype=dtype), y=torch.randint(0, k, (B,), generator=g),
                micro_batch_size=mbs, w1=_randn(g, h, d, dtype=dtype, scale=d ** -0.5),
                b1=_randn(g, h, dtype=dtype, scale=0.1), w2=_randn(g, k, h, dtype=dtype, scale=h ** -0.5),
                b2=_randn(g, k, dtype=dtype, scale=0.1)), rtol=1e-5, atol=1e-6)

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
        lin_w = _randn(g, n_out, n_in, dtype=dtype, scale=n_in ** -0.5)
        lin_b = _randn(g, n_out, dtype=dtype, scale=0.5)
        x = _randn(g, *lead, n_in, dtype=dtype)
        ws, bs = P.shard_linear(lin_w, lin_b, ranks, style)
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
class ColumnParallelLinear(Ch07Exercise):
    """Column-parallel linear layer."""
    id = "07.column_parallel_linear"
    entry = "column_parallel_linear"
    forbid = (Rule("torch.nn.functional.linear", "write x @ W_i.T + b_i yourself"),)
    mistakes = (
        Mistake("gathered along the batch axis", "each rank owns some OUTPUT features: "
                "concatenate the pieces along the last axis (dim=-1).", _col_dim0),
        Mistake("bias forgotten", "rank i adds its own slice of the bias, b_i.", _col_no_bias),
        Mistake("pieces summed", "column shards produce different output features: concatenate "
                "them (all-gather); summing is for row shards.", _col_summed),
    )

    def reference(self, x, weight_shards, bias_shards):
        return P.column_parallel_linear(x, weight_shards, bias_shards)

    def cases(self, seed, hidden):
        return _linear_cases(torch.Generator().manual_seed(seed), hidden, "column")


def _row_bias_each(x_shards, weight_shards, bias):
    return sum(x @ w.T + bias for x, w in zip(x_shards, weight_shards))


def _row_mean(x_shards, weight_shards, bias):
    return sum(x @ w.T for x, w in zip(x_shards, weight_shards)) / len(x_shards) + bias


def _row_cat(x_shards, weight_shards, bias):
    return torch.cat([x @ w.T for x, w in zip(x_shards, weight_shards)], dim=-1)


@register
class RowParallelLinear(Ch07Exercise):
    """Row-parallel linear layer."""
    id = "07.row_parallel_linear"
    entry = "row_parallel_linear"
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
        return P.row_parallel_linear(x_shards, weight_shards, bias)

    def cases(self, seed, hidden):
        return _linear_cases(torch.Generator().manual_seed(seed), hidden, "row")


# ---------------------------------------------------------------------------------------
# 07.absmax_quantize, 07.zeropoint_quantize

NO_BUILTIN_QUANT = (
    Rule("torch.ao", "quantize with round and clamp yourself instead of torch.ao.quantization"),
    Rule("torch.quantization", "quantize with round and clamp yourself"),
    Rule(".quantize_per_tensor", "quantize with round and clamp yourself"),
    Rule(".quantize_per_channel", "quantize with round and clamp yourself"),
)


def _amax_of(x, dim):
    return x.abs().amax() if dim is None else x.abs().amax(dim=dim, keepdim=True)


def _absmax_trunc(x, dim=None):
    scale = _amax_of(x, dim) / 127
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    return (x / scale).to(torch.int8), scale


def _absmax_no_dim(x, dim=None):
    return CMP.absmax_quantize(x, None)


def _absmax_inverse(x, dim=None):
    q, scale = CMP.absmax_quantize(x, dim)
    return q, 1 / scale


def _quant_cases(seed, hidden):
    g = torch.Generator().manual_seed(seed)
    w = _randn(g, 6, 10, dtype=F64, scale=0.05)
    w[2] = 0.0  # a row of zeros (scale 1 there)
    relu = _randn(g, 3, 16, dtype=F64).relu() + 0.25  # all positive: 0 is outside [min, max]
    cases = [Case("weight (6, 10), one scale", (w,)),
             Case("weight (6, 10), a scale per row (dim=1), a zero row", (w,), {"dim": 1}),
             Case("positive activations (3, 16), per row", (relu,), {"dim": -1}),
             Case("small float32 vector", (torch.tensor([0.5, -1.25, 3.0, 0.0, 2.2]),))]
    if hidden:
        x3 = _randn(g, 2, 5, 7, dtype=F64, scale=3.0)
        cases += [Case("3-D, a scale per slice along dim 0", (x3,), {"dim": 0}),
                  Case("outlier column", (torch.cat([_randn(g, 8, 5, dtype=F64),
                                                      torch.full((8, 1), 60.0, dtype=F64)], 1),), {"dim": 1}),
                  Case("all negative, per column", (-(_randn(g, 4, 6, dtype=F64).abs() + 0.1),), {"dim": 0}),
                  Case("all zeros", (torch.zeros(3, 4, dtype=F64),))]
    return cases


@register
class AbsmaxQuantize(Ch07Exercise):
    """int8 absmax (symmetric) quantization."""
    id = "07.absmax_quantize"
    entry = "absmax_quantize"
    forbid = NO_BUILTIN_QUANT
    mistakes = (
        Mistake("truncation instead of rounding", ".to(torch.int8) truncates towards zero; "
                "round first (torch.round).", _absmax_trunc),
        Mistake("ignores `dim`", "with dim given, take max|x| along that axis (keepdim=True): "
                "one scale per slice.", _absmax_no_dim),
        Mistake("inverse scale returned", "return the step `scale = max|x| / 127`, so that "
                "x ~ q * scale (not 127 / max|x|).", _absmax_inverse),
    )

    def reference(self, x, dim=None):
        return CMP.absmax_quantize(x, dim)

    def cases(self, seed, hidden):
        return _quant_cases(seed, hidden)


def _zp_range(x, dim):
    if dim is None:
        return x.amin(), x.amax()
    return x.amin(dim=dim, keepdim=True), x.amax(dim=dim, keepdim=True)


def _zp_no_zero(x, dim=None):
    lo, hi = _zp_range(x, dim)
    scale = (hi - lo) / 255
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    z = (-128 - torch.round(lo / scale)).to(torch.int32)
    return (torch.round(x / scale) + z).clamp(-128, 127).to(torch.int8), scale, z


def _zp_trunc(x, dim=None):
    _, scale, z = CMP.zeropoint_quantize(x, dim)
    return ((x / scale).trunc() + z).clamp(-128, 127).to(torch.int8), scale, z


def _zp_float_z(x, dim=None):
    lo, hi = _zp_range(x, dim)
    lo, hi = lo.clamp(max=0), hi.clamp(min=0)
    scale = (hi - lo) / 255
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    z = -128 - lo / scale
    return torch.round(x / scale + z).clamp(-128, 127).to(torch.int8), scale, z


def _zp_no_dim(x, dim=None):
    return CMP.zeropoint_quantize(x, None)


@register
class ZeropointQuantize(Ch07Exercise):
    """int8 zero-point (asymmetric) quantization."""
    id = "07.zeropoint_quantize"
    entry = "zeropoint_quantize"
    forbid = NO_BUILTIN_QUANT
    mistakes = (
        Mistake("range does not include 0", "extend [min, max] to contain 0 (lo = min(min, 0), "
                "hi = max(max, 0)) so that 0 is exactly representable.", _zp_no_zero),
        Mistake("truncation instead of rounding", "round x / scale (torch.round), do not "
                "truncate.", _zp_trunc),
        Mistake("zero point not rounded", "the zero point is an integer: "
                "z = -128 - round(lo / scale), stored as int32.", _zp_float_z),
        Mistake("ignores `dim`", "with dim given, take min and max along that axis "
                "(keepdim=True).", _zp_no_dim),
    )

    def reference(self, x, dim=None):
        return CMP.zeropoint_quantize(x, dim)

    def cases(self, seed, hidden):
        return _quant_cases(seed, hidden)


# ---------------------------------------------------------------------------------------
# 07.magnitude_prune

def _prune_k(w, k, key):
    flat = w.flatten().clone()
    if k > 0:
        flat[key(flat).argsort(stable=True)[:k]] = 0
    return flat.view_as(w)


def _prune_largest(w, sparsity):
    return _prune_k(w, math.floor(sparsity * w.numel()), lambda f: -f.abs())


def _prune_signed(w, sparsity):
    return _prune_k(w, math.floor(sparsity * w.numel()), lambda f: f)


def _prune_density(w, sparsity):
    return _prune_k(w, w.numel() - math.floor(sparsity * w.numel()), lambda f: f.abs())


def _prune_rows(w, sparsity):
    if w.ndim < 2:
        return CMP.magnitude_prune(w, sparsity)
    return torch.stack([CMP.magnitude_prune(r, sparsity) for r in w])


@register
class MagnitudePrune(Ch07Exercise):
    """Magnitude pruning."""
    id = "07.magnitude_prune"
    entry = "magnitude_prune"
    forbid = (Rule("torch.nn.utils.prune", "zero the smallest weights yourself instead of "
                   "torch.nn.utils.prune"),)
    mistakes = (
        Mistake("pruned the largest weights", "sort by |w| ascending: the SMALLEST magnitudes "
                "go first.", _prune_largest),
        Mistake("signed values instead of magnitudes", "rank by |w|: -3 is a large weight, not "
                "a small one.", _prune_signed),
        Mistake("sparsity read as density", "sparsity is the fraction set to ZERO: prune "
                "floor(sparsity * numel) entries.", _prune_density),
        Mistake("pruned row by row", "rank all entries of the tensor together (one threshold "
                "for the whole tensor), not each row separately.", _prune_rows),
    )

    def reference(self, w, sparsity):
        return CMP.magnitude_prune(w, sparsity)

    def cases(self, seed, hidden):
        g = torch.Generator().manual_seed(seed)
        w = _randn(g, 4, 10)
        w[0] *= 0.1  # one row of small weights: global and per-row pruning differ
        cases = [Case("(4, 10) at 50 %", (w, 0.5)),
                 Case("vector of 8 at 25 %", (_randn(g, 8), 0.25)),
                 Case("(6, 5) at 60 %", (_randn(g, 6, 5, dtype=F64) * torch.linspace(0.1, 2, 5, dtype=F64), 0.6))]
        if hidden:
            cases += [Case("sparsity 0: unchanged", (_randn(g, 3, 3), 0.0)),
                      Case("sparsity 1: all zero", (_randn(g, 2, 5), 1.0)),
                      Case("3-D float64 at 90 %", (_randn(g, 2, 4, 5, dtype=F64), 0.9)),
                      Case("(7, 3) at 33 %: floor(6.93) = 6 entries", (_randn(g, 7, 3), 0.33))]
        return cases

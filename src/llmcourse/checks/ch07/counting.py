"""counting.ipynb: the GPT's exact parameter count, training FLOPs (6ND and the exact
count), and the Chinchilla compute-optimal allocation. Integer answers must be exact.
"""

from __future__ import annotations

import torch

from ...reference import scaling as scaling_ref
from .. import register
from ..core import Case, Exercise, Mistake, Rule
from ..kit import F64, generator

# The notebooks train with the course's trainer and GPT: those two reference modules may
# be imported; every other part of the reference stays off limits.
TRAINER = ("training", "gpt")


EXACT = dict(rtol=0.0, atol=0.5)  # integer counts: exact


# ---------------------------------------------------------------------------------------
# 07.param_count

def _pc_untied(vocab_size, block_size, n_layer, n_head, n_embd, non_embedding=False):
    return scaling_ref.gpt_param_count(vocab_size, block_size, n_layer, n_embd, non_embedding) + vocab_size * n_embd


def _pc_no_bias(vocab_size, block_size, n_layer, n_head, n_embd, non_embedding=False):
    return scaling_ref.gpt_param_count(vocab_size, block_size, n_layer, n_embd, non_embedding) - 9 * n_layer * n_embd


def _pc_no_ln(vocab_size, block_size, n_layer, n_head, n_embd, non_embedding=False):
    return scaling_ref.gpt_param_count(vocab_size, block_size, n_layer, n_embd, non_embedding) - (4 * n_layer + 2) * n_embd


def _pc_no_wpe(vocab_size, block_size, n_layer, n_head, n_embd, non_embedding=False):
    n = scaling_ref.gpt_param_count(vocab_size, block_size, n_layer, n_embd, non_embedding)
    return n if non_embedding else n - block_size * n_embd


def _pc_flag_ignored(vocab_size, block_size, n_layer, n_head, n_embd, non_embedding=False):
    return scaling_ref.gpt_param_count(vocab_size, block_size, n_layer, n_embd, False)


def _pc_12LC2(vocab_size, block_size, n_layer, n_head, n_embd, non_embedding=False):
    n = 12 * n_layer * n_embd ** 2
    return n if non_embedding else n + (vocab_size + block_size) * n_embd


@register
class ParamCount(Exercise):
    """Exact parameter count of the GPT."""
    id = "07.param_count"
    entry = "gpt_param_count"
    allow_reference = TRAINER
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
        return scaling_ref.gpt_param_count(vocab_size, block_size, n_layer, n_embd, non_embedding)

    def cases(self, seed, hidden):
        g = generator(seed)

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
class TrainFlops(Exercise):
    """Training FLOPs per token: 6N plus attention."""
    id = "07.train_flops"
    entry = "train_flops_per_token"
    allow_reference = TRAINER
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
        return scaling_ref.train_flops_per_token(vocab_size, n_layer, n_embd, seq_len)

    def cases(self, seed, hidden):
        g = generator(seed)

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
    return scaling_ref.chinchilla_optimal(C * 6, A, B, alpha, beta)


def _ch_G_inverted(C, A, B, alpha, beta):
    G = (beta * B / (alpha * A)) ** (1 / (alpha + beta))
    s = C / 6
    return G * s ** (beta / (alpha + beta)), s ** (alpha / (alpha + beta)) / G


def _ch_D_from_C(C, A, B, alpha, beta):
    n, _ = scaling_ref.chinchilla_optimal(C, A, B, alpha, beta)
    return n, C / n


@register
class ChinchillaOptimal(Exercise):
    """Chinchilla compute-optimal N and D."""
    id = "07.chinchilla_optimal"
    entry = "chinchilla_optimal"
    allow_reference = TRAINER
    mistakes = (
        Mistake("exponents swapped", "N* grows as (C/6)^(beta/(alpha+beta)) and D* as "
                "(C/6)^(alpha/(alpha+beta)): the exponent of N comes from the OTHER term.", _ch_swapped),
        Mistake("C used instead of C/6", "C = 6 N D, so N D = C / 6.", _ch_no6),
        Mistake("G inverted", "G = (alpha A / (beta B))^(1/(alpha+beta)) multiplies N* and "
                "divides D*.", _ch_G_inverted),
        Mistake("D* = C / N*", "C = 6 N D gives D* = C / (6 N*).", _ch_D_from_C),
    )

    def reference(self, C, A, B, alpha, beta):
        return scaling_ref.chinchilla_optimal(C, A, B, alpha, beta)

    def cases(self, seed, hidden):
        g = generator(seed)
        ch = scaling_ref.CHINCHILLA
        pub = dict(A=ch.A, B=ch.B, alpha=ch.alpha, beta=ch.beta)
        cases = [Case("Gopher's budget C = 5.76e23, Chinchilla fit", (5.76e23,), pub, rtol=1e-9, atol=0.0),
                 Case("C = 1e18", (1e18,), pub, rtol=1e-9, atol=0.0)]
        if hidden:
            b = scaling_ref.BESIROGLU
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

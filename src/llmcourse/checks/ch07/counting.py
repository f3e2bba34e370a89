"""counting.ipynb: the GPT's exact parameter count, training FLOPs (6ND and the exact
count), the Chinchilla compute-optimal allocation, and ALBERT's parameter count (factorised
embedding, cross-layer sharing). Integer answers must be exact.
"""

from __future__ import annotations

import torch

from ...reference import scaling as scaling_ref
from .. import register
from ..core import Case, Exercise, Mistake, Rule
from ..kit import F64, generator, knob

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


# ---------------------------------------------------------------------------------------
# 07.albert_param_count

def _albert(config, *, shared=True, inner=True, projection=True, proj_bias=True, factorised=True,
            emb_ln=True, pos_type=True, pooler=True):
    """ALBERT's count with one knob turned (each knob is one cataloged mistake)."""
    V, E, H, I, L = (config[k] for k in ("vocab_size", "embedding_size", "hidden_size",
                                         "intermediate_size", "num_hidden_layers"))
    P, T = config["max_position_embeddings"], config["type_vocab_size"]
    G, inner_n = config["num_hidden_groups"], config["inner_group_num"]
    width = E if factorised else H
    n = V * width + (P + T) * width * pos_type + 2 * width * emb_ln
    if factorised and projection:
        n += E * H + H * proj_bias
    stored = (G * (inner_n if inner else 1)) if shared else L
    n += stored * (4 * H * H + 4 * H + 4 * H + 2 * H * I + I + H)
    return int(n + (H * H + H) * pooler)


def albert_config(V=30000, E=128, H=768, L=12, heads=12, I=3072, P=512, T=2, G=1, inner=1):
    """An ALBERT config as a plain dict with Hugging Face's AlbertConfig keys."""
    return dict(vocab_size=V, embedding_size=E, hidden_size=H, num_hidden_layers=L,
                num_attention_heads=heads, intermediate_size=I, max_position_embeddings=P,
                type_vocab_size=T, num_hidden_groups=G, inner_group_num=inner)


@register
class AlbertParamCount(Exercise):
    """ALBERT's parameter count: factorised embedding and cross-layer sharing."""
    id = "07.albert_param_count"
    entry = "albert_param_count"
    allow_reference = TRAINER
    forbid = (
        Rule("transformers", "count from the formula: Hugging Face's AlbertModel is what your "
             "count is checked against"),
        Rule(".numel", "count from the formula instead of building a model"),
        Rule(".parameters", "count from the formula instead of iterating over a model's parameters"),
    )
    mistakes = (
        Mistake("shared layers counted L times", "ALBERT stores num_hidden_groups x "
                "inner_group_num layers and runs them num_hidden_layers times: a shared layer "
                "is stored once.", knob(_albert, shared=False)),
        Mistake("inner_group_num ignored", "each of the num_hidden_groups groups holds "
                "inner_group_num distinct layers.", knob(_albert, inner=False)),
        Mistake("E -> H projection forgotten", "the embeddings have width E: "
                "embedding_hidden_mapping_in (E x H weight and H bias) lifts them to H.",
                knob(_albert, projection=False)),
        Mistake("bias of the E -> H projection forgotten", "embedding_hidden_mapping_in is an "
                "nn.Linear(E, H) with a bias: E H + H.", knob(_albert, proj_bias=False)),
        Mistake("V x H embedding (no factorisation)", "the point of the factorisation: the "
                "tables are V x E (and P x E, T x E), then one E x H projection, instead of V x H.",
                knob(_albert, factorised=False)),
        Mistake("embedding LayerNorm forgotten", "the embeddings' LayerNorm has a weight and a "
                "bias of width E: 2 E.", knob(_albert, emb_ln=False)),
        Mistake("position and token-type embeddings forgotten", "besides the V x E token table "
                "ALBERT (like BERT) learns a P x E position table and a T x E token-type table.",
                knob(_albert, pos_type=False)),
        Mistake("pooler forgotten", "AlbertModel ends with a pooler, nn.Linear(H, H) on the "
                "[CLS] vector: H^2 + H.", knob(_albert, pooler=False)),
    )

    def reference(self, config):
        return scaling_ref.albert_param_count(config)

    def cases(self, seed, hidden):
        def case(label, cfg):
            return Case(label, (cfg,), **EXACT)

        cases = [
            case("ALBERT-base (E = 128, H = 768, 12 layers, one shared layer)", albert_config()),
            case("4 groups of 2 layers shared by 12 (V = 500, E = 32, H = 64)",
                 albert_config(V=500, E=32, H=64, L=12, heads=4, I=256, P=128, T=2, G=4, inner=2)),
            case("E = H, 3 groups of 1 (V = 300, H = 48, 6 layers)",
                 albert_config(V=300, E=48, H=48, L=6, heads=4, I=96, P=64, T=3, G=3)),
        ]
        if hidden:
            g = generator(seed)
            r = lambda lo, hi: int(torch.randint(lo, hi, (1,), generator=g))  # noqa: E731
            H = 16 * r(1, 9)
            L = r(2, 9)
            cases += [
                case("ALBERT-large", albert_config(H=1024, L=24, heads=16, I=4096)),
                case("ALBERT-xxlarge", albert_config(H=4096, L=12, heads=64, I=16384)),
                case("random small config", albert_config(V=r(50, 400), E=8 * r(1, 9), H=H, L=L,
                                                          heads=2, I=H * r(1, 5), P=r(8, 80),
                                                          T=r(1, 4), G=1, inner=r(1, 3))),
                case("no sharing: one group per layer", albert_config(V=120, E=16, H=32, L=4, heads=2,
                                                                      I=64, P=32, T=2, G=4)),
            ]
        return cases

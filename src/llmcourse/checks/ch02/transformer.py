"""transformer.ipynb: the encoder layer, the decoder layer with cross-attention, and a GPT
(all :class:`~llmcourse.checks.kit.ModuleExercise`: ``nn.Module`` classes with named parameters).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...reference import attention as attention_ref
from ...reference import gpt as gpt_ref
from ...reference import transformer as transformer_ref
from .. import calls, register
from ..core import Mistake, Rule
from ..kit import F32, F64, ModuleExercise, generator, randn
from .multihead import _heads_view, _unheads_view
from .sdpa import NO_BUILTIN_ATTENTION, _lengths, _random_mask, _sdpa


NO_BUILTIN_LAYERS = NO_BUILTIN_ATTENTION + tuple(
    Rule(f"torch.nn.{name}", f"wire the layer yourself instead of nn.{name}")
    for name in ("Transformer", "TransformerEncoder", "TransformerEncoderLayer",
                 "TransformerDecoder", "TransformerDecoderLayer"))


# ---------------------------------------------------------------------------------------
# 02.encoder_layer, 02.decoder_layer

def _wrong_encoder(pre_ln=False, attn_residual=True, ffn_residual=True, norm_inside=False,
                   swap_norms=False, use_mask=True):
    class WrongEncoderLayer(transformer_ref.EncoderLayer):
        def forward(self, x, mask=None):
            n1, n2 = (self.norm2, self.norm1) if swap_norms else (self.norm1, self.norm2)
            mask = mask if use_mask else None
            sublayers = ((n1, lambda h: self.self_attn(h, h, mask), attn_residual),
                         (n2, self.ffn, ffn_residual))
            for norm, f, residual in sublayers:
                if pre_ln:
                    x = x + f(norm(x))
                elif norm_inside:
                    x = x + norm(f(x))
                else:
                    x = norm(x + f(x) if residual else f(x))
            return x
    return WrongEncoderLayer


def _layer_case(ex, g, label, B, T, d=16, h=2, d_ff=32, S=None, dtype=F32, **forward):
    args = (randn(g, B, T, d, dtype=dtype),) + (() if S is None else (randn(g, B, S, d, dtype=dtype),))
    # float32: outputs are O(1) after two or three LayerNorms; correct implementations that
    # order the operations differently agree to ~4e-6, so atol=1e-5 (float64: the default).
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == F32 else {}
    return ex.case(g, label, {"d_model": d, "n_heads": h, "d_ff": d_ff}, args, dtype, **tol,
                   **forward)


@register
class EncoderLayerExercise(ModuleExercise):
    """Transformer encoder layer (post-LN)."""
    id = "02.encoder_layer"
    entry = "EncoderLayer"
    uses = ("02.mha",)
    init = ("d_model", "n_heads", "d_ff")
    reference = transformer_ref.EncoderLayer
    forbid = NO_BUILTIN_LAYERS
    mistakes = (
        Mistake("pre-LN where post-LN is asked", "the original Transformer normalises AFTER the "
                "residual add: x = norm1(x + attn(x)), then x = norm2(x + ffn(x)).",
                _wrong_encoder(pre_ln=True)),
        Mistake("no residual around attention", "add the input back: norm1(x + attn(x)).",
                _wrong_encoder(attn_residual=False)),
        Mistake("no residual around the feed-forward", "add the input back: norm2(x + ffn(x)).",
                _wrong_encoder(ffn_residual=False)),
        Mistake("normalised the sublayer, not the sum", "post-LN is norm(x + sublayer(x)), not "
                "x + norm(sublayer(x)).", _wrong_encoder(norm_inside=True)),
        Mistake("norm1 and norm2 swapped", "norm1 follows attention, norm2 the feed-forward.",
                _wrong_encoder(swap_norms=True)),
        Mistake("mask ignored", "pass the mask to self-attention.", _wrong_encoder(use_mask=False)),
    )

    def cases(self, seed, hidden):
        g = generator(seed)
        cases = [
            _layer_case(self, g, "(2, 5, 16), 2 heads, no mask", 2, 5),
            _layer_case(self, g, "key padding mask (2, 1, 6)", 2, 6, d=12, h=3, d_ff=20,
                        mask=attention_ref.padding_mask(_lengths(g, 2, 6), 6)[:, None, :]),
        ]
        if hidden:
            cases += [
                _layer_case(self, g, "float64, causal mask, 4 heads", 3, 4, d=8, h=4, d_ff=16,
                            dtype=F64, mask=attention_ref.causal_mask(4)),
                _layer_case(self, g, "one token", 1, 1, d=8, h=2, d_ff=8),
            ]
        return cases


def _wrong_decoder(pre_ln=False, causal=True, cross=True, swap_cross=False, use_memory_mask=True,
                   swap_masks=False):
    class WrongDecoderLayer(transformer_ref.DecoderLayer):
        def forward(self, x, memory, tgt_mask=None, memory_mask=None):
            tm, mm = tgt_mask if causal else None, memory_mask if use_memory_mask else None
            if swap_masks:
                tm, mm = mm, tm
            steps = [(self.norm1, lambda h: self.self_attn(h, h, tm))]
            if cross:
                steps.append((self.norm2, lambda h: self.cross_attn(memory, h, mm) if swap_cross
                              else self.cross_attn(h, memory, mm)))
            steps.append((self.norm3, self.ffn))
            for norm, f in steps:
                x = x + f(norm(x)) if pre_ln else norm(x + f(x))
            return x
    return WrongDecoderLayer


@register
class DecoderLayerExercise(ModuleExercise):
    """Transformer decoder layer with cross-attention (post-LN)."""
    id = "02.decoder_layer"
    entry = "DecoderLayer"
    uses = ("02.mha",)
    init = ("d_model", "n_heads", "d_ff")
    reference = transformer_ref.DecoderLayer
    forbid = NO_BUILTIN_LAYERS
    mistakes = (
        Mistake("pre-LN where post-LN is asked", "normalise AFTER each residual add: "
                "x = norm(x + sublayer(x)).", _wrong_decoder(pre_ln=True)),
        Mistake("tgt_mask ignored: the decoder sees the future", "pass tgt_mask (the causal mask) "
                "to the masked self-attention.", _wrong_decoder(causal=False)),
        Mistake("no cross-attention", "between self-attention and the feed-forward, attend from "
                "x to the encoder's memory: norm2(x + cross_attn(x, memory, memory_mask)).",
                _wrong_decoder(cross=False)),
        Mistake("cross-attention queries from memory", "queries come from the decoder (x), keys "
                "and values from the encoder's memory.", _wrong_decoder(swap_cross=True)),
        Mistake("memory_mask ignored", "pass memory_mask to the cross-attention.",
                _wrong_decoder(use_memory_mask=False)),
        Mistake("masks swapped", "tgt_mask (T, T) goes to self-attention, memory_mask (T, S) to "
                "cross-attention.", _wrong_decoder(swap_masks=True)),
    )

    def cases(self, seed, hidden):
        g = generator(seed)
        cases = [
            _layer_case(self, g, "T=4, S=6, causal tgt_mask", 2, 4, S=6, tgt_mask=attention_ref.causal_mask(4)),
            _layer_case(self, g, "causal + memory padding (2, 1, 5)", 2, 3, d=12, h=3, d_ff=24, S=5,
                        tgt_mask=attention_ref.causal_mask(3),
                        memory_mask=attention_ref.padding_mask(_lengths(g, 2, 5), 5)[:, None, :]),
        ]
        if hidden:
            cases += [
                _layer_case(self, g, "float64, T = S = 5", 2, 5, d=8, h=2, d_ff=16, S=5, dtype=F64,
                            tgt_mask=attention_ref.causal_mask(5),
                            memory_mask=_random_mask(g, 2, 5, 5)),
                _layer_case(self, g, "no masks, 4 heads", 1, 3, d=16, h=4, d_ff=16, S=2),
            ]
        return cases


# ---------------------------------------------------------------------------------------
# 02.gpt

def _wrong_gpt(pre_ln=True, causal=True, positions=True, final_ln=True,
               act=lambda h: F.gelu(h, approximate="tanh"), split=attention_ref.split_heads,
               merge=attention_ref.merge_heads, scale=None):
    class WrongGPT(gpt_ref.GPT):
        def forward(self, idx):
            T = idx.shape[-1]
            x = self.transformer.wte(idx)
            if positions:
                x = x + self.transformer.wpe(torch.arange(T))
            mask = attention_ref.causal_mask(T) if causal else None
            for blk in self.transformer.h:
                def attn(h, a=blk.attn):
                    q, k, v = (split(t, a.n_head) for t in a.c_attn(h).split(h.shape[-1], -1))
                    return a.c_proj(merge(_sdpa(q, k, v, mask, scale=scale)))

                def mlp(h, m=blk.mlp):
                    return m.c_proj(act(m.c_fc(h)))
                for norm, f in ((blk.ln_1, attn), (blk.ln_2, mlp)):
                    x = x + f(norm(x)) if pre_ln else norm(x + f(x))
            return self.lm_head(self.transformer.ln_f(x) if final_ln else x)
    return WrongGPT


GPT_INIT = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd")


@register
class GPTExercise(ModuleExercise):
    """A GPT-2 language model."""
    id = "02.gpt"
    entry = "GPT"
    init = GPT_INIT
    optional = ("lm_head.weight",)  # tied to transformer.wte.weight; x @ wte.weight.T is fine
    reference = gpt_ref.GPT
    forbid = NO_BUILTIN_LAYERS + (
        Rule("transformers", "build the model yourself instead of Hugging Face's GPT-2"),
    )
    mistakes = (
        Mistake("post-LN blocks where GPT-2 is pre-LN", "GPT-2 normalises the INPUT of each "
                "sublayer: x = x + attn(ln_1(x)); x = x + mlp(ln_2(x)).", _wrong_gpt(pre_ln=False)),
        Mistake("no causal mask: tokens see the future", "mask attention so position t only sees "
                "positions <= t.", _wrong_gpt(causal=False)),
        Mistake("position embeddings not added", "x = wte(idx) + wpe(positions 0..T-1).",
                _wrong_gpt(positions=False)),
        Mistake("no final LayerNorm", "apply transformer.ln_f before lm_head.",
                _wrong_gpt(final_ln=False)),
        Mistake("exact GELU instead of the tanh approximation", "GPT-2 uses "
                "F.gelu(x, approximate='tanh') (Hugging Face's 'gelu_new').", _wrong_gpt(act=F.gelu)),
        Mistake("ReLU instead of GELU", "GPT-2's MLP uses GELU (tanh approximation).",
                _wrong_gpt(act=F.relu)),
        Mistake("heads split along the wrong axis", "view (B, T, C) as (B, T, n_head, C/n_head), "
                "then transpose(1, 2).", _wrong_gpt(split=_heads_view, merge=_unheads_view)),
        Mistake("no 1/sqrt(d_head) scale", "divide the scores by sqrt(n_embd / n_head).",
                _wrong_gpt(scale=1.0)),
    )

    build = calls.gpt_build

    def cases(self, seed, hidden):
        g = generator(seed)

        def case(label, B, T, vocab=23, block=16, layers=2, heads=2, d=16, dtype=F32):
            cfg = dict(zip(GPT_INIT, (vocab, block, layers, heads, d)))
            idx = torch.randint(0, vocab, (B, T), generator=g)
            # float32: logits are O(1) after 2-3 blocks of matmuls and LayerNorms, where
            # correct implementations differ by ~1e-6: atol=1e-5. float64: the default.
            tol = dict(rtol=1e-5, atol=1e-5) if dtype == F32 else {}
            return self.case(g, label, cfg, (idx,), dtype, **tol)

        cases = [
            case("2 layers, 2 heads, (B, T) = (2, 8)", 2, 8),
            case("1 layer, 4 heads, one sequence", 1, 5, layers=1, heads=4, d=8, vocab=11),
        ]
        if hidden:
            cases += [
                case("float64, 3 layers, full block", 2, 12, block=12, layers=3, heads=4, d=16,
                     dtype=F64),
                case("a single token", 3, 1),
            ]
        return cases

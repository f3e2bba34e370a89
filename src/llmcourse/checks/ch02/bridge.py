"""bridge.ipynb: the course's GPT as Hugging Face's ``GPT2LMHeadModel`` (the weight mapping).

The learner maps a course GPT's ``state_dict`` to the one ``GPT2LMHeadModel`` loads: the
names are already HF's, and HF's four ``Conv1D`` weights per block are stored (in, out).
Cases are state dicts of small random GPTs (every parameter random, so a weight left in the
wrong layout shows), with square and non-square shapes.
"""

from __future__ import annotations

import torch

from ...reference import bridge as bridge_ref
from ...reference import gpt as gpt_ref
from .. import register
from ..core import Case, Exercise, Mistake
from ..kit import F32, F64, PARAM, generator, random_params

CONV1D = gpt_ref.HF_TRANSPOSED  # attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj (.weight)


def _mapping(transpose, how="t", drop=()):
    """A state-dict mapping: ``transpose(name, p)`` says which tensors change layout."""
    def to_hf_gpt2_state(state):
        out = {}
        for name, p in state.items():
            if any(name.endswith(d) for d in drop):
                continue
            if transpose(name, p):
                p = p.t() if how == "t" else p.reshape(p.shape[1], p.shape[0])
            out[name] = p.contiguous()
        return out
    return to_hf_gpt2_state


@register
class ToHfGpt2(Exercise):
    """The course GPT's weights in Hugging Face GPT-2's layout."""
    id = "02.to_hf_gpt2"
    entry = "to_hf_gpt2_state"
    allow_reference = ("gpt", "bridge.hf_gpt2_config", "bridge.byte_tokenizer")
    reference_why = ("map the weights yourself (llmcourse.reference: only gpt, "
                     "bridge.hf_gpt2_config and bridge.byte_tokenizer are allowed here)")
    mistakes = (
        Mistake("Conv1D weights not transposed", "HF's c_attn, c_proj (attention and MLP) and "
                "c_fc store their weight (in, out): return p.t() for those four.",
                _mapping(lambda n, p: False)),
        Mistake("every matrix transposed", "only the four Conv1D weights change layout; the "
                "embeddings wte, wpe and lm_head are (vocab or positions, n_embd) in both.",
                _mapping(lambda n, p: p.dim() == 2)),
        Mistake("square weights left as they were", "attn.c_proj is (n_embd, n_embd): its shape "
                "does not tell, transpose it by name like the others.",
                _mapping(lambda n, p: n.endswith(CONV1D) and p.shape[0] != p.shape[1])),
        Mistake("MLP weights not transposed", "mlp.c_fc and mlp.c_proj are Conv1D too.",
                _mapping(lambda n, p: n.endswith(CONV1D[:2]))),
        Mistake("reshaped instead of transposed", "reshape/view keeps the memory order and only "
                "relabels the shape; a layout change is a transpose, p.t().",
                _mapping(lambda n, p: n.endswith(CONV1D), how="reshape")),
        Mistake("lm_head.weight left out", "GPT2LMHeadModel's state_dict has lm_head.weight "
                "(tied to transformer.wte.weight): keep it.",
                _mapping(lambda n, p: n.endswith(CONV1D), drop=("lm_head.weight",))),
    )

    def reference(self, state):
        return bridge_ref.to_hf_gpt2_state(state)

    def cases(self, seed, hidden):
        g = generator(seed)

        def state(label, n_layer, n_head, n_embd, vocab=11, block=7, dtype=F32):
            cfg = gpt_ref.GPTConfig(vocab_size=vocab, block_size=block, n_layer=n_layer,
                                    n_head=n_head, n_embd=n_embd)
            with torch.device("meta"):
                shapes = gpt_ref.GPT(cfg)
            params = random_params(shapes, g, dtype)
            return Case(label, ({k[len(PARAM):]: v for k, v in params.items()},))

        cases = [state("one layer, n_embd 8", 1, 2, 8), state("two layers, n_embd 12", 2, 3, 12)]
        if hidden:
            cases += [state("three layers, float64", 3, 2, 6, vocab=5, block=4, dtype=F64),
                      state("wide vocabulary", 1, 1, 4, vocab=40, block=9)]
        return cases

"""challenge.ipynb: GPT-2 from an empty cell, given only the config and the weight names
(an outcome-graded challenge). The truth is Hugging Face's ``GPT2LMHeadModel`` with the
same random weights, on configs the learner has not seen."""

from __future__ import annotations

import random

import torch

from ...reference import gpt2_weights as ref
from .. import register
from ..challenge import Attempt, Band, Challenge
from ..core import Case, Rule
from ..kit import F64, generator
from .transformer import NO_BUILTIN_LAYERS


def _config(rng: random.Random, n_layer: int, T: int, eps: float) -> dict:
    n_head = rng.choice((1, 2, 3, 4, 6))
    n_embd = n_head * rng.choice((4, 6, 8, 12))
    return {"vocab_size": rng.randrange(40, 200), "n_positions": T + rng.randrange(0, 8),
            "n_embd": n_embd, "n_layer": n_layer, "n_head": n_head,
            "n_inner": n_embd * rng.choice((2, 3, 4)) + rng.randrange(0, 5),
            "activation_function": "gelu_new",
            "layer_norm_epsilon": eps}


def _hf(config: dict):
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(**config, bos_token_id=0, eos_token_id=0, attn_implementation="eager")
    return GPT2LMHeadModel(cfg).to(F64).eval()


def _weights(config: dict, g: torch.Generator) -> dict[str, torch.Tensor]:
    """Hugging Face's state dict of a GPT-2 of ``config``, every tensor redrawn from ``g`` at a
    scale where every part of the model matters (not the tiny 0.02 of HF's initialisation)."""
    out = {}
    for name, t in _hf(config).state_dict().items():
        if name == "lm_head.weight":  # tied: the same matrix as the token embedding
            continue
        if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name.endswith("ln_f.weight"):
            v = 1 + 0.2 * torch.randn(t.shape, generator=g, dtype=F64)
        elif name.endswith(".bias"):
            v = 0.2 * torch.randn(t.shape, generator=g, dtype=F64)
        elif name.endswith("wte.weight") or name.endswith("wpe.weight"):
            v = torch.randn(t.shape, generator=g, dtype=F64)
        else:  # Conv1D (in, out): unit-variance outputs for unit-variance inputs
            v = torch.randn(t.shape, generator=g, dtype=F64) / t.shape[0] ** 0.5
        out[name] = v
    out["lm_head.weight"] = out["transformer.wte.weight"].clone()
    return out


def _embeddings_only(config, weights, input_ids):
    return ref.gpt2_logits(config, weights, input_ids, blocks=False, final_norm=False)


def _no_causal_mask(config, weights, input_ids):
    return ref.gpt2_logits(config, weights, input_ids, causal=False)


def _no_final_norm(config, weights, input_ids):
    return ref.gpt2_logits(config, weights, input_ids, final_norm=False)


def _fixed_eps(config, weights, input_ids):
    return ref.gpt2_logits(config, weights, input_ids, eps=1e-5)


def _exact_gelu(config, weights, input_ids):
    return ref.gpt2_logits(config, weights, input_ids, exact_gelu=True)


@register
class GPT2FromWeights(Challenge):
    """GPT-2's logits from a config dict and a state dict, against Hugging Face's."""
    id = "02.gpt2"
    entry = "gpt2_logits"
    metric = "relative_error"
    unit = "relative error"
    bands = (Band(1e-5, 1.0, "exact"), Band(1e-3, 0.5, "close"))
    budget_s = 30
    forbid = (Rule("transformers", "build the model yourself instead of Hugging Face's GPT-2"),
              ) + NO_BUILTIN_LAYERS
    attempts = (Attempt("embeddings only (wte + wpe -> lm_head)", _embeddings_only, 0.0),
                Attempt("no causal mask", _no_causal_mask, 0.0),
                Attempt("no final LayerNorm ln_f", _no_final_norm, 0.0),
                Attempt("LayerNorm eps fixed at 1e-5, not the config's", _fixed_eps, 0.5),
                Attempt("exact GELU instead of the tanh approximation", _exact_gelu, 0.5))

    def cases(self, seed: int, hidden: bool) -> list[Case]:
        rng, g = random.Random(seed), generator(seed)
        out = []
        for label, n_layer, B, T, eps in (
                ("one layer, one position", 1, 2, 1, 1e-5),
                ("two layers, an odd length", 2, 3, rng.randrange(5, 16, 2), rng.choice((1e-6, 1e-4))),
                ("four layers, every position", 4, 2, 32, 1e-3)):
            config = _config(rng, n_layer, T, eps)
            if T == 32:
                config["n_positions"] = T
            ids = torch.randint(0, config["vocab_size"], (B, T), generator=g)
            out.append(Case(label, (config, _weights(config, g), ids)))
        return out

    def truth(self, case: Case):
        config, weights, ids = case.args
        model = _hf(config)
        model.load_state_dict(weights)
        with torch.no_grad():
            return model(input_ids=ids).logits

    def reference(self, config, weights, input_ids):
        return ref.gpt2_logits(config, weights, input_ids)

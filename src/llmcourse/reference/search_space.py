"""Chapter 03: the architecture search's space (not its graded parts, which are in
:mod:`llmcourse.reference.search`): the knobs and their options, the vanilla GPT block as a
point of the space, and how an architecture dict becomes a
:class:`~llmcourse.reference.modern.ModernConfig`. The search notebook imports this module.
"""

from __future__ import annotations

import random

from .modern import ModernConfig, ModernLM

SPACE: dict[str, tuple] = {
    "activation": ("relu", "gelu", "sq_relu", "swiglu"),
    "norm": ("layer", "rms"),
    "positions": ("learned", "rope"),
    "dconv": (False, True),
    "heads": ("mha", "gqa", "mqa"),
    "n_embd": (32, 48, 64),
    "n_layer": (1, 2, 3),
}
N_HEAD = 4
KV_HEADS = {"mha": N_HEAD, "gqa": 2, "mqa": 1}
# GPT-2's block (chapter 02) in this space: GELU, LayerNorm, learned positions, full heads.
VANILLA = {"activation": "gelu", "norm": "layer", "positions": "learned", "dconv": False,
           "heads": "mha", "n_embd": 48, "n_layer": 2}


def arch_config(arch: dict, vocab_size: int = 256, block_size: int = 64) -> ModernConfig:
    """The :class:`~llmcourse.reference.modern.ModernConfig` of an architecture dict."""
    return ModernConfig(vocab_size=vocab_size, block_size=block_size, n_layer=arch["n_layer"],
                        n_head=N_HEAD, n_kv_head=KV_HEADS[arch["heads"]], n_embd=arch["n_embd"],
                        activation=arch["activation"], norm=arch["norm"],
                        positions=arch["positions"], dconv=arch["dconv"], tie_weights=True)


def n_params(arch: dict, vocab_size: int = 256, block_size: int = 64) -> int:
    """Stored parameters of the architecture's model (the output layer is tied)."""
    return sum(p.numel() for p in ModernLM(arch_config(arch, vocab_size, block_size)).parameters())


def random_arch(space: dict, rng: random.Random) -> dict:
    """One option per knob, uniformly, knobs in ``space``'s order."""
    return {k: v[rng.randrange(len(v))] for k, v in space.items()}


def describe(arch: dict) -> str:
    return (f"{arch['n_layer']}x{arch['n_embd']} {arch['activation']}, {arch['norm']}, "
            f"{arch['positions']}, {arch['heads']}" + (", dconv" if arch["dconv"] else ""))

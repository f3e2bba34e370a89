"""classification.ipynb: last-token pooling, a classification head on a GPT, a LoRA layer.

Masks are bool, True = a real token. The LoRA check builds the learner's
``LoRALinear(in_features, out_features, r, alpha)`` and reports, besides its output on the
case's input, what the task asks of the layer as a whole: the merged layer's weight and
output, the number of trainable parameters, and whether ``lora_B`` starts at zero and
``lora_A`` does not.
"""

from __future__ import annotations

import torch
from torch import nn

from ...reference import finetuning as finetuning_ref
from ...reference import lora as lora_ref
from .. import calls, register
from ..core import Case, Exercise, Mistake, Rule
from ..kit import F32, F64, ModuleExercise, generator, randn


def _right_padded(lengths: list[int], T: int) -> torch.Tensor:
    return torch.arange(T) < torch.tensor(lengths)[:, None]


def _left_padded(lengths: list[int], T: int) -> torch.Tensor:
    return torch.arange(T) >= T - torch.tensor(lengths)[:, None]


# ---------------------------------------------------------------------------------------
# 05.last_token_pool

def _rows(hidden, index):
    return hidden[torch.arange(hidden.shape[0]), index]


def _pool_last_position(hidden, attention_mask):
    return hidden[:, -1]


def _pool_first_real(hidden, attention_mask):
    return _rows(hidden, attention_mask.long().argmax(dim=-1))


def _pool_mean(hidden, attention_mask):
    m = attention_mask[..., None].to(hidden.dtype)
    return (hidden * m).sum(dim=1) / m.sum(dim=1)


def _pool_lengths(hidden, attention_mask):
    return _rows(hidden, attention_mask.sum(dim=-1) - 1)


POOL_MISTAKES = (
    Mistake("last position, padding ignored", "hidden[:, -1] is a padding position for every "
            "right-padded sequence; take each row's last position where the mask is True.",
            _pool_last_position),
    Mistake("first real token instead of the last", "mask.argmax(-1) finds the FIRST True; a GPT "
            "has read the whole text only at the LAST real token.", _pool_first_real),
    Mistake("mean over the real tokens", "this task pools the last real token (GPT-style), not "
            "the average of the real tokens (BERT-style mean pooling).", _pool_mean),
    Mistake("lengths - 1: assumes right padding", "mask.sum(-1) - 1 is the last real position "
            "only when the padding is on the right; with left padding (or holes) take the "
            "rightmost True, e.g. max over where(mask, arange(T), -1).", _pool_lengths),
)


def _pool_cases(g, hidden_cases: bool, dtype_hidden=F64):
    """(label, hidden, mask) triples shared by the pooling and head exercises."""
    out = [
        ("right padding, lengths [5, 2, 1], C = 4", randn(g, 3, 5, 4), _right_padded([5, 2, 1], 5)),
        ("left padding, lengths [6, 3, 1, 4]", randn(g, 4, 6, 3), _left_padded([6, 3, 1, 4], 6)),
        ("no padding (2, 4, 5)", randn(g, 2, 4, 5), torch.ones(2, 4, dtype=torch.bool)),
    ]
    if hidden_cases:
        holes = torch.tensor([[True, False, True, True, False, False, False],
                              [False, True, True, False, True, False, True],
                              [True, True, True, True, True, True, True]])
        out += [
            ("float64, right padding (4, 9, 6)", randn(g, 4, 9, 6, dtype=dtype_hidden),
             _right_padded([3, 9, 1, 7], 9)),
            ("a single token (1, 1, 3)", randn(g, 1, 1, 3), torch.ones(1, 1, dtype=torch.bool)),
            ("masks with holes: the rightmost True counts", randn(g, 3, 7, 2), holes),
            ("left padding, float64", randn(g, 2, 8, 5, dtype=dtype_hidden), _left_padded([2, 7], 8)),
        ]
    return out


@register
class LastTokenPool(Exercise):
    """Last-token pooling with padding."""
    id = "05.last_token_pool"
    entry = "last_token_pool"
    mistakes = POOL_MISTAKES

    def reference(self, hidden, attention_mask):
        return finetuning_ref.last_token_pool(hidden, attention_mask)

    def cases(self, seed, hidden):
        g = generator(seed)
        return [Case(label, (h, m)) for label, h, m in _pool_cases(g, hidden)]


# ---------------------------------------------------------------------------------------
# 05.ClassificationHead

def _wrong_head(pool=None, probabilities=False):
    class WrongClassificationHead(finetuning_ref.ClassificationHead):
        def forward(self, hidden, attention_mask):
            pooled = (pool or finetuning_ref.last_token_pool)(hidden, attention_mask)
            logits = self.score(pooled)
            return logits.softmax(-1) if probabilities else logits
    return WrongClassificationHead


@register
class ClassificationHeadExercise(ModuleExercise):
    """Classification head on a GPT (last-token pooling + score)."""
    id = "05.ClassificationHead"
    entry = "ClassificationHead"
    uses = ("05.last_token_pool",)
    init = ("n_embd", "n_classes")
    reference = finetuning_ref.ClassificationHead
    forbid = (
        Rule("transformers", "build the head yourself instead of Hugging Face's"),
    )
    mistakes = tuple(Mistake(m.name, m.explain, _wrong_head(pool=m.impl)) for m in POOL_MISTAKES) + (
        Mistake("softmax probabilities instead of logits", "return the raw scores (logits); the "
                "cross-entropy loss applies the (log-)softmax itself.", _wrong_head(probabilities=True)),
    )

    def cases(self, seed, hidden):
        g = generator(seed)
        out = []
        for i, (label, h, m) in enumerate(_pool_cases(g, hidden)):
            k = (2, 3, 5, 2, 4, 3, 2)[i]
            out.append(self.case(g, f"{label}, {k} classes", {"n_embd": h.shape[-1], "n_classes": k},
                                 (h,), h.dtype, attention_mask=m))
        return out


# ---------------------------------------------------------------------------------------
# 05.LoRALinear

def _wrong_lora(scale=None, merge_scaled=True, freeze_base=True, init=None):
    class WrongLoRALinear(lora_ref.LoRALinear):
        def __init__(self, in_features, out_features, r, alpha):
            super().__init__(in_features, out_features, r, alpha)
            if scale is not None:
                self.scaling = {"alpha": alpha, "r/alpha": r / alpha, "1": 1.0}[scale]
            if not freeze_base:
                self.weight.requires_grad_(True)
                self.bias.requires_grad_(True)
            with torch.no_grad():
                if init in ("B random", "A zero, B random"):
                    nn.init.kaiming_uniform_(self.lora_B, a=5 ** 0.5)
                if init in ("A zero, B random", "both zero"):
                    self.lora_A.zero_()

        @torch.no_grad()
        def merge(self):
            out = super().merge()
            if not merge_scaled:
                out.weight.copy_(self.weight + self.lora_B @ self.lora_A)
            return out
    return WrongLoRALinear


@register
class LoRALinearExercise(ModuleExercise):
    """A LoRA linear layer: forward, merge, trainable parameters."""
    id = "05.LoRALinear"
    entry = "LoRALinear"
    init = ("in_features", "out_features", "r", "alpha")
    reference = lora_ref.LoRALinear
    forbid = (
        Rule("peft", "write the adapter yourself instead of Hugging Face peft"),
    )
    mistakes = (
        Mistake("scaled by alpha instead of alpha / r", "the update is (alpha / r) * B A: dividing "
                "by r keeps its size the same when you change the rank.", _wrong_lora(scale="alpha")),
        Mistake("no alpha / r scaling", "multiply the low-rank path by alpha / r.",
                _wrong_lora(scale="1")),
        Mistake("merged weight without the scaling", "merge() must add (alpha / r) * B @ A, the "
                "same update forward() applies.", _wrong_lora(merge_scaled=False)),
        Mistake("frozen weights left trainable", "weight and bias are the pre-trained layer: "
                "create them with requires_grad=False; only lora_A and lora_B train.",
                _wrong_lora(freeze_base=False)),
        Mistake("lora_B not initialised to zero", "B = 0 at the start makes the adapted layer "
                "equal the pre-trained one before training; initialise A randomly, B with zeros.",
                _wrong_lora(init="B random")),
        Mistake("both A and B initialised to zero", "with A = B = 0 the gradients of both are 0 "
                "and the adapter never learns; initialise A randomly.", _wrong_lora(init="both zero")),
    )

    call = calls.lora_linear

    def cases(self, seed, hidden):
        g = generator(seed)

        def case(label, n_in, n_out, r, alpha, *lead, dtype=F32):
            init = {"in_features": n_in, "out_features": n_out, "r": r, "alpha": alpha}
            # float32: the two paths (x A^T B^T vs x (W + s B A)^T) round differently: atol 1e-5
            tol = dict(rtol=1e-5, atol=1e-5) if dtype == F32 else {}
            return self.case(g, label, init, (randn(g, *lead, n_in, dtype=dtype),), dtype, **tol)

        cases = [
            case("in 6, out 4, r 2, alpha 8; x (3, 6)", 6, 4, 2, 8.0, 3),
            case("in 5, out 7, r 3, alpha 6; x (2, 4, 5)", 5, 7, 3, 6.0, 2, 4),
        ]
        if hidden:
            cases += [
                case("float64, in 16, out 16, r 4, alpha 16; x (2, 3, 16)", 16, 16, 4, 16.0, 2, 3,
                     dtype=F64),
                case("r 1, alpha 2; x (5, 3)", 3, 9, 1, 2.0, 5),
                case("float64, r 8 > in 4; x (1, 4)", 4, 10, 8, 4.0, 1, dtype=F64),
            ]
        return cases

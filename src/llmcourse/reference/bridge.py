"""The bridge to the ecosystem: the course's models as Hugging Face ``transformers`` models.

- :func:`to_hf_gpt2`: the course's :class:`~llmcourse.reference.gpt.GPT` as a
  ``GPT2LMHeadModel`` (config from :func:`hf_gpt2_config`). The parameter names are already
  HF's; HF stores the four ``Conv1D`` weights (attention ``c_attn``, ``c_proj``, MLP ``c_fc``,
  ``c_proj``) as (in, out) where ``nn.Linear`` stores (out, in), so those are transposed.
  The way back is :func:`llmcourse.reference.gpt.from_hf`.
- chapter 03's :class:`~llmcourse.reference.modern.ModernLM` as a ``LlamaForCausalLM`` and
  back: :func:`llmcourse.reference.modern.to_hf_llama` / ``from_hf_llama`` (re-exported here).
- :func:`byte_tokenizer`: a ``PreTrainedTokenizerFast`` whose ids are the UTF-8 bytes, the
  vocabulary of the course's byte-level models, built locally (nothing is downloaded), so
  that ``transformers.pipeline("text-generation", model=..., tokenizer=...)`` runs offline.
"""

from __future__ import annotations

import torch

from .bpe import bytes_to_unicode
from .gpt import GPT, HF_TRANSPOSED, GPTConfig, from_hf  # noqa: F401  (from_hf: HF -> course)
from .modern import from_hf_llama, to_hf_llama  # noqa: F401


def hf_gpt2_config(config: GPTConfig):
    """The ``transformers.GPT2Config`` of a course GPT: same sizes, GPT-2's tanh GELU
    (``gelu_new``), no dropout, tied output layer, eager attention."""
    from transformers import GPT2Config

    # GPT-2's <|endoftext|> is 50256; the course's byte models end a line with byte 10.
    eot = 50256 if config.vocab_size > 50256 else 10 if config.vocab_size == 256 else None
    return GPT2Config(bos_token_id=eot, eos_token_id=eot, vocab_size=config.vocab_size, n_positions=config.block_size,
                      n_embd=config.n_embd, n_layer=config.n_layer, n_head=config.n_head,
                      layer_norm_epsilon=config.layer_norm_eps, activation_function="gelu_new",
                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                      tie_word_embeddings=True, attn_implementation="eager")


def to_hf_gpt2_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A course GPT's ``state_dict`` as HF GPT-2's: the names are already HF's; only the
    Conv1D weights change, from (out, in) to (in, out)."""
    return {name: (p.t() if name.endswith(HF_TRANSPOSED) else p).contiguous()
            for name, p in state.items()}


@torch.no_grad()
def to_hf_gpt2(model: GPT):
    """A ``GPT2LMHeadModel`` (eval mode, ``model``'s dtype) with the weights of ``model``:
    its logits equal the course GPT's."""
    from transformers import GPT2LMHeadModel

    dtype = next(model.parameters()).dtype
    hf = GPT2LMHeadModel(hf_gpt2_config(model.config)).to(dtype)
    missing, unexpected = hf.load_state_dict(to_hf_gpt2_state(model.state_dict()), strict=False)
    missing = [m for m in missing if m != "lm_head.weight"]  # tied to wte
    if missing or unexpected:
        raise ValueError(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
    hf.tie_weights()
    return hf.eval()


def byte_tokenizer():
    """A ``transformers`` fast tokenizer for the course's byte vocabulary: token ``b`` is the
    byte ``b`` (stored, as GPT-2 stores bytes, as the character ``bytes_to_unicode()[b]``),
    no merges. Byte 10 (newline) doubles as the end-of-text and padding token."""
    import tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = bytes_to_unicode()
    tok = tokenizers.Tokenizer(tokenizers.models.BPE(
        vocab={chars[b]: b for b in range(256)}, merges=[]))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=chars[10], pad_token=chars[10],
                                   clean_up_tokenization_spaces=False)

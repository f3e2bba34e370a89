"""The bridge to Hugging Face (chapter 02's bridge.ipynb): the course's GPT exported to
``GPT2LMHeadModel`` gives HF's logits and generation, both ways; the byte tokenizer is the
course's byte encoding; ``pipeline("text-generation")`` runs offline and writes what the
course's ``generate`` writes; chapter 03's ModernLM <-> ``LlamaForCausalLM``."""

from __future__ import annotations

import pytest
import torch

from llmcourse.checks.kit import PARAM, generator, random_params
from llmcourse.reference import bridge, gpt as gpt_ref, modern, training

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()


def _random_gpt(dtype=torch.float64, **sizes) -> gpt_ref.GPT:
    """A course GPT with every parameter random (biases and norms included)."""
    cfg = gpt_ref.GPTConfig(**{"vocab_size": 256, "block_size": 24, "n_layer": 2, "n_head": 2,
                               "n_embd": 16, "layer_norm_eps": 1e-3, **sizes})
    model = gpt_ref.GPT(cfg).to(dtype)
    params = random_params(model, generator(3), dtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(params[PARAM + name])
    return model.eval()


def test_course_gpt_to_hf_gives_the_same_logits_and_tokens():
    torch.set_num_threads(1)
    model = _random_gpt()
    hf = bridge.to_hf_gpt2(model)
    assert isinstance(hf, transformers.GPT2LMHeadModel) and not hf.training
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()  # tied
    assert hf.config.layer_norm_epsilon == 1e-3 and hf.config.activation_function == "gelu_new"
    idx = torch.randint(0, 256, (3, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(idx)
        torch.testing.assert_close(hf(idx).logits, want, rtol=1e-12, atol=1e-12)
        prompt = idx[:2, :5]
        theirs = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=10,
                             do_sample=False, pad_token_id=0)
    assert torch.equal(theirs, model.generate(prompt, 10))
    # and back: HF -> course is the inverse mapping
    back = gpt_ref.from_hf(hf)
    assert all(torch.equal(p, back.state_dict()[k]) for k, p in model.state_dict().items())


def test_wrong_mappings_change_the_logits():
    """The exercise's claim: a square c_proj left untransposed loads without an error, and
    the logits say it is wrong."""
    model = _random_gpt()
    state = bridge.to_hf_gpt2_state(model.state_dict())
    state["transformer.h.0.attn.c_proj.weight"] = model.state_dict()["transformer.h.0.attn.c_proj.weight"]
    hf = transformers.GPT2LMHeadModel(bridge.hf_gpt2_config(model.config)).double().eval()
    hf.load_state_dict(state)
    idx = torch.randint(0, 256, (2, 8), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (hf(idx).logits - model(idx)).abs().max() > 1e-3


def test_byte_tokenizer_is_the_course_byte_encoding():
    tok = bridge.byte_tokenizer()
    for text in ["Once upon a time", "我爱自然语言处理 😀👍🏽", "  tabs\tand\nnewlines  ", ""]:
        ids = tok(text).input_ids
        assert ids == training.encode(text).tolist()
        assert tok.decode(ids) == text
    assert len(tok) == 256 and tok.eos_token_id == tok.pad_token_id == 10


def test_pipeline_generates_offline_like_the_course_generate():
    model = _random_gpt(torch.float32)
    gen = transformers.pipeline("text-generation", model=bridge.to_hf_gpt2(model),
                                tokenizer=bridge.byte_tokenizer(), device="cpu")
    prompt = "Once upon a time"
    out = gen(prompt, max_new_tokens=8, do_sample=False)[0]["generated_text"]
    ids = model.generate(training.encode(prompt)[None], 8)[0]
    # generation stops at byte 10 (the end-of-text token) if the model writes one
    stop = (ids[len(prompt):] == 10).nonzero()
    ids = ids if not len(stop) else ids[:len(prompt) + int(stop[0]) + 1]
    assert out == training.decode(ids)


def test_modern_lm_to_llama_and_back():
    cfg = modern.ModernConfig(vocab_size=97, block_size=16, n_layer=2, n_head=4, n_kv_head=2,
                              n_embd=32)
    torch.manual_seed(0)
    ours = modern.ModernLM(cfg).double().eval()
    hf = bridge.to_hf_llama(ours)
    assert isinstance(hf, transformers.LlamaForCausalLM)
    idx = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(4))
    random_hf = transformers.LlamaForCausalLM(modern.hf_llama_config(cfg)).double().eval()
    back = bridge.from_hf_llama(random_hf)
    # float64, but HF's rotary embedding makes cos/sin in float32 (inv_freq is a float32
    # buffer): ~6e-8 apart, so 1e-6 here; a wrong weight moves logits by ~1e-1.
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, ours(idx), rtol=0, atol=1e-6)
        torch.testing.assert_close(back(idx), random_hf(idx).logits, rtol=0, atol=1e-6)

"""Chapter 05 references against independent authorities: Hugging Face's
GPT2ForSequenceClassification (random weights, built from a config, nothing downloaded) for
the classifier and its last-non-pad pooling, HF's GPT2LMHeadModel loss with labels = -100
for the masked loss, HF's chat-template renderer ({% generation %} assistant masks) for the
chat template, and closed forms / nn.Linear for LoRA (peft is not installed: its semantics
are B = 0 at init, scaling alpha / r, merged weight W + (alpha / r) B A)."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from llmcourse.data.synthetic import document_log_prob, documents, domain_of
from llmcourse.reference import finetuning as finetuning_ref
from llmcourse.reference import gpt as gpt_ref
from llmcourse.reference import lora as lora_ref

torch.set_num_threads(1)
F64 = torch.float64
FAST = settings(max_examples=25, deadline=None, derandomize=True)

transformers = pytest.importorskip("transformers")


def hf_pair(n_classes=3, seed=0):
    """HF GPT2ForSequenceClassification with random weights and our GPTClassifier with the
    same weights."""
    cfg = transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=2, n_head=2,
                                  num_labels=n_classes, pad_token_id=0, resid_pdrop=0.0,
                                  embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(seed)
    hf = transformers.GPT2ForSequenceClassification(cfg).eval()
    ours = finetuning_ref.GPTClassifier(gpt_ref.GPT(gpt_ref.config_from_hf(cfg)), n_classes)
    sd = {f"transformer.{k}": v for k, v in hf.transformer.state_dict().items()}
    sd["lm_head.weight"] = sd["transformer.wte.weight"]
    gpt_ref.load_hf_gpt2_state(ours.gpt, sd)
    with torch.no_grad():
        ours.head.score.weight.copy_(hf.score.weight)
    return hf, ours.eval()


# ---------------------------------------------------------------------------------------
# Pooling and the classifier

def test_classifier_matches_hf_gpt2_for_sequence_classification():
    hf, ours = hf_pair()
    g = torch.Generator().manual_seed(1)
    lengths = torch.tensor([9, 4, 1, 12])
    ids = torch.randint(1, 50, (4, 12), generator=g)
    mask = torch.arange(12) < lengths[:, None]
    ids = ids.masked_fill(~mask, 0)  # right padding with pad_token_id
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask.long()).logits
        mine = ours(ids, mask)
    torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)


def test_right_padding_needs_no_attention_mask_in_a_causal_model():
    hf, ours = hf_pair(2, seed=3)
    ids = torch.randint(1, 50, (1, 7), generator=torch.Generator().manual_seed(2))
    padded = torch.cat([ids, torch.zeros(1, 5, dtype=torch.long)], dim=1)
    mask = torch.arange(12) < 7
    with torch.no_grad():
        torch.testing.assert_close(ours(padded, mask[None]), ours(ids, torch.ones(1, 7, dtype=torch.bool)))


@FAST
@given(B=st.integers(1, 4), T=st.integers(1, 9), C=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_last_token_pool_is_the_rightmost_true_like_hf(B, T, C, seed):
    """HF: last_non_pad = (arange(T) * non_pad_mask).argmax(-1); for any mask with a True
    in every row (left, right padding or holes) it is the rightmost True."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, C, generator=g, dtype=F64)
    mask = torch.rand(B, T, generator=g) < 0.5
    mask[torch.arange(B), torch.randint(0, T, (B,), generator=g)] = True
    hf_index = (torch.arange(T) * mask.int()).argmax(-1)
    expected = torch.stack([hidden[b, max(t for t in range(T) if mask[b, t])] for b in range(B)])
    torch.testing.assert_close(finetuning_ref.last_token_pool(hidden, mask), expected, rtol=0, atol=0)
    torch.testing.assert_close(finetuning_ref.last_token_pool(hidden, mask), hidden[torch.arange(B), hf_index],
                               rtol=0, atol=0)


def test_set_trainable_probe_and_full():
    _, ours = hf_pair(2)
    n_probe = finetuning_ref.set_trainable(ours, "probe")
    assert n_probe == 16 * 2
    n_full = finetuning_ref.set_trainable(ours, "full")
    assert n_full == sum(p.numel() for p in ours.parameters())
    with pytest.raises(ValueError):
        finetuning_ref.set_trainable(ours, "lora")


# ---------------------------------------------------------------------------------------
# The review data

def test_review_dataset_labels_follow_the_stars_and_hide_the_rating():
    texts, labels = finetuning_ref.review_dataset(3000, 0)
    assert len(texts) == len(labels) > 300
    assert set(labels) == {0, 1} and 0.35 < sum(labels) / len(labels) < 0.65
    assert all(t.startswith("Review: ") and "Rating" not in t and t.endswith(".") for t in texts)
    assert all(len(t.encode()) <= 128 for t in texts)
    assert finetuning_ref.review_dataset(3000, 0) == (texts, labels)  # deterministic
    reviews = [d for d in documents(3000, 0) if domain_of(d) == "review"]
    for doc in reviews[:50]:
        text, stars = finetuning_ref.split_review(doc)
        assert doc == f"{text} Rating: {stars} {'star' if stars == 1 else 'stars'}.\n"
        # the stars are the grammar's: any other rating makes the document impossible
        for other in range(1, 6):
            fake = f"{text} Rating: {other} {'star' if other == 1 else 'stars'}.\n"
            assert (document_log_prob(fake) > -math.inf) == (other == stars)
    assert [finetuning_ref.sentiment_label(s) for s in range(1, 6)] == [0, 0, None, 1, 1]
    with pytest.raises(ValueError):
        finetuning_ref.split_review("Math: 1 + 1 = 2.\n")


def test_pad_batch_right_pads_with_a_byte_the_text_never_uses():
    ids, mask = finetuning_ref.pad_batch([torch.tensor([5, 6, 7]), torch.tensor([9])])
    assert ids.tolist() == [[5, 6, 7], [9, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert mask.dtype == torch.bool and ids.dtype == torch.long
    assert "\x00" not in "".join(documents(500, 0))


# ---------------------------------------------------------------------------------------
# LoRA

@FAST
@given(n_in=st.integers(1, 12), n_out=st.integers(1, 12), r=st.integers(1, 6),
       alpha=st.sampled_from([1.0, 2.0, 8.0, 16.0]), seed=st.integers(0, 2**16))
def test_lora_forward_and_merge_equal_the_closed_form(n_in, n_out, r, alpha, seed):
    torch.manual_seed(seed)
    base = nn.Linear(n_in, n_out).double()
    layer = lora_ref.LoRALinear.from_linear(base, r, alpha)
    x = torch.randn(3, 2, n_in, dtype=F64)
    # peft semantics at init: B = 0, so the adapted layer IS the frozen one
    assert torch.equal(layer.lora_B, torch.zeros(n_out, r, dtype=F64))
    assert (layer.lora_A != 0).any() and layer.scaling == alpha / r
    torch.testing.assert_close(layer(x), base(x), rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        layer.lora_B.normal_()
    W = base.weight + (alpha / r) * layer.lora_B @ layer.lora_A  # closed form
    expected = F.linear(x, W, base.bias)
    torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-10)
    merged = layer.merge()
    assert type(merged) is nn.Linear
    torch.testing.assert_close(merged.weight, W, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(merged(x), layer(x), rtol=1e-10, atol=1e-10)
    assert torch.linalg.matrix_rank(layer.delta_weight()) <= min(r, n_in, n_out)


def test_lora_trains_only_a_and_b():
    torch.manual_seed(0)
    layer = lora_ref.LoRALinear.from_linear(nn.Linear(6, 4), 2, 4.0)
    assert lora_ref.count_parameters(layer) == 2 * (6 + 4) == lora_ref.lora_parameter_count([(4, 6)], 2)
    assert lora_ref.count_parameters(layer, trainable_only=False) == 6 * 4 + 4 + 2 * 10
    layer(torch.randn(5, 6)).pow(2).sum().backward()
    assert layer.weight.grad is None and layer.bias.grad is None
    assert layer.lora_B.grad.abs().sum() > 0  # B gets a gradient even though it is 0
    assert torch.equal(layer.lora_A.grad, torch.zeros(2, 6))  # ... A does not, until B moves


def test_add_lora_and_merge_on_the_gpt():
    torch.manual_seed(0)
    cfg = gpt_ref.GPTConfig(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=16)
    gpt = gpt_ref.GPT(cfg).eval()
    idx = torch.randint(0, 40, (2, 10))
    with torch.no_grad():
        before = gpt(idx)
    names = lora_ref.add_lora(gpt, r=4, alpha=8.0)
    assert sorted(names) == sorted(f"transformer.h.{i}.{m}" for i in range(2)
                                   for m in ("attn.c_attn", "attn.c_proj", "mlp.c_proj"))
    per_block = 4 * (16 + 48) + 4 * (16 + 16) + 4 * (64 + 16)
    assert lora_ref.count_parameters(gpt) == 2 * per_block
    with torch.no_grad():
        torch.testing.assert_close(gpt(idx), before, rtol=0, atol=0)  # B = 0: nothing changed
        for m in gpt.modules():
            if isinstance(m, lora_ref.LoRALinear):
                m.lora_B.normal_(std=0.1)
        adapted = gpt(idx)
    assert not torch.allclose(adapted, before, atol=1e-3)
    lora_ref.merge_lora(gpt)
    assert not any(isinstance(m, lora_ref.LoRALinear) for m in gpt.modules())
    with torch.no_grad():
        torch.testing.assert_close(gpt(idx), adapted, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------
# Chat template and the masked loss

CONVERSATIONS = [
    [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "5"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye"},
     {"role": "assistant", "content": "Bye!"}],
    [{"role": "user", "content": "Say nothing."}, {"role": "assistant", "content": ""}],
    [{"role": "user", "content": "Say café"}, {"role": "assistant", "content": "café, naïve"}],
]


@pytest.mark.parametrize("conv", CONVERSATIONS)
@pytest.mark.parametrize("gen", [False, True])
def test_chat_tokens_match_hf_rendering_and_assistant_mask(conv, gen):
    from transformers.utils.chat_template_utils import render_jinja_template

    (text,), (spans,) = render_jinja_template([conv], chat_template=finetuning_ref.CHAT_TEMPLATE_JINJA,
                                              return_assistant_tokens_mask=True,
                                              add_generation_prompt=gen)
    ids, mask = finetuning_ref.chat_tokens(conv, add_generation_prompt=gen)
    assert text == finetuning_ref.chat_text(conv, gen)
    assert ids.tolist() == list(text.encode("utf-8"))
    expected = torch.zeros(len(ids), dtype=torch.bool)
    for start, end in spans:  # HF's spans count characters; the ids are bytes
        b0, b1 = len(text[:start].encode()), len(text[:end].encode())
        expected[b0:b1] = True
    assert torch.equal(mask, expected)


def test_chat_mask_covers_exactly_the_replies_and_their_end_markers():
    conv = CONVERSATIONS[1]
    ids, mask = finetuning_ref.chat_tokens(conv)
    counted = bytes(ids[mask].tolist()).decode()
    assert counted == "Hello<|end|>Bye!<|end|>"
    with pytest.raises(ValueError):
        finetuning_ref.chat_tokens([{"role": "robot", "content": "x"}])


def test_masked_lm_loss_equals_hf_gpt2_loss_with_ignored_labels():
    cfg = transformers.GPT2Config(vocab_size=256, n_positions=128, n_embd=16, n_layer=2, n_head=2,
                                  bos_token_id=0, eos_token_id=0,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    ours = gpt_ref.from_hf(hf)
    examples = [finetuning_ref.chat_tokens(c) for c in CONVERSATIONS[:2]]
    ids, _ = finetuning_ref.pad_batch([e[0] for e in examples])
    mask = finetuning_ref.pad_batch([e[1].long() for e in examples])[0].bool()
    labels = ids.masked_fill(~mask, -100)  # HF: -100 = not counted; it shifts internally
    with torch.no_grad():
        theirs = hf(input_ids=ids, labels=labels).loss
        mine = finetuning_ref.masked_lm_loss(ours(ids)[:, :-1], ids[:, 1:], mask[:, 1:])
        x, y, m = finetuning_ref.sft_batch([finetuning_ref.sft_example(c) for c in CONVERSATIONS[:2]])
        via_examples = finetuning_ref.masked_lm_loss(ours(x), y, m)
    torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(via_examples, theirs, rtol=1e-5, atol=1e-6)


@FAST
@given(B=st.integers(1, 4), T=st.integers(1, 8), V=st.integers(2, 9), seed=st.integers(0, 2**16))
def test_masked_lm_loss_is_cross_entropy_with_ignore_index(B, T, V, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g, dtype=F64)
    targets = torch.randint(0, V, (B, T), generator=g)
    mask = torch.rand(B, T, generator=g) < 0.5
    mask[0, 0] = True
    expected = F.cross_entropy(logits.reshape(-1, V), targets.masked_fill(~mask, -100).reshape(-1),
                               ignore_index=-100)
    torch.testing.assert_close(finetuning_ref.masked_lm_loss(logits, targets, mask), expected)


def test_instruction_data_answers_are_right_and_fit_the_block():
    convs = finetuning_ref.instruction_data(200, 0)
    assert finetuning_ref.instruction_data(200, 0) == convs
    kinds = {"animal": 0, "review": 0}
    docs = documents(4000, 0)
    for c in convs:
        prompt, answer = c[0]["content"], c[1]["content"]
        assert len(finetuning_ref.chat_text(c).encode()) <= 129
        assert len(finetuning_ref.chat_text(c[:1], add_generation_prompt=True).encode()) + 16 <= 128
        if prompt.startswith("Which animal? "):
            story = prompt.removeprefix("Which animal? ")
            assert re.fullmatch(r"Once upon a time, there was a( \w+)* (\w+) named [A-Z]\w+\.", story)
            assert answer in ("cat", "dog", "bird", "fox", "rabbit", "bear", "duck", "frog",
                              "mouse", "pig") and f" {answer} named " in story
            assert any(d.startswith(story + " ") for d in docs)
            kinds["animal"] += 1
        else:
            review = "Review: " + prompt.removeprefix("Positive or negative? ")
            doc = next(d for d in docs if d.startswith(review + " Rating"))
            assert finetuning_ref.LABEL_NAMES[finetuning_ref.sentiment_label(finetuning_ref.split_review(doc)[1])] == answer
            kinds["review"] += 1
    assert kinds == {"animal": 100, "review": 100}

"""The shared training loop (llmcourse.reference.training) and the shipped tiny GPT,
checked against PyTorch's own schedulers, losses and closed forms."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from llmcourse.data import corpus
from llmcourse.pretrained import PATH, TINY_GPT, tiny_gpt
from llmcourse.reference.gpt import GPT, GPTConfig
from llmcourse.reference.training import (TrainConfig, cosine_lr, decode, encode, evaluate_lm,
                                          get_batch, lm_loss, train_lm)


def test_bytes_round_trip_any_text():
    for text in ["", "hello\n", "注意力 is all you need 🤖", "tab\tand\x00nul"]:
        ids = encode(text)
        assert ids.dtype == torch.long and ids.ndim == 1 and all(0 <= i < 256 for i in ids.tolist())
        assert decode(ids) == text


def test_get_batch_targets_are_inputs_shifted_by_one():
    tokens = torch.arange(1000)
    x, y = get_batch(tokens, 8, 16, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (8, 16)
    assert torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(y[:, -1], x[:, -1] + 1)
    assert int(y.max()) <= 999
    with pytest.raises(ValueError, match="block_size"):
        get_batch(torch.arange(10), 2, 10)


def test_cosine_lr_matches_torch_schedulers():
    max_lr, min_lr, warm, total = 1.0, 0.1, 10, 110
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=max_lr)
    cos = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total - warm, eta_min=min_lr)
    for step in range(warm, total):
        assert math.isclose(cosine_lr(step, max_lr, warm, total, min_lr), opt.param_groups[0]["lr"],
                            rel_tol=1e-9, abs_tol=1e-12), step
        opt.step()
        cos.step()
    assert [cosine_lr(s, max_lr, warm, total, min_lr) for s in range(warm)] == \
        [max_lr * (s + 1) / warm for s in range(warm)]
    assert cosine_lr(total, max_lr, warm, total, min_lr) == min_lr
    assert cosine_lr(10 * total, max_lr, warm, total, min_lr) == min_lr


def test_evaluate_lm_scores_every_window_once():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=256, block_size=16, n_layer=1, n_head=2, n_embd=16))
    tokens = encode(corpus(2_000, 1))
    n = (len(tokens) - 1) // 16
    w = tokens[: n * 16 + 1]
    with torch.no_grad():
        x = w[:-1].view(n, 16)
        y = w[1:].view(n, 16)
        manual = F.cross_entropy(model(x).reshape(-1, 256), y.reshape(-1)).item()
    assert math.isclose(evaluate_lm(model, tokens, 16, batch_size=5), manual, rel_tol=1e-5)


def test_train_lm_in_chunks_equals_one_run_and_learns():
    def run(chunks):
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=256, block_size=16, n_layer=1, n_head=2, n_embd=16))
        cfg = TrainConfig(steps=30, batch_size=4, block_size=16, warmup_steps=5)
        tokens = encode(corpus(20_000, 0))
        opt, hist, start = None, None, 0
        for stop in chunks:
            from llmcourse.reference.training import make_optimizer
            opt = opt or make_optimizer(model, cfg)
            hist = train_lm(model, tokens, cfg, opt, start, stop, hist)
            start = stop
        return model, hist

    m1, h1 = run([30])
    m2, h2 = run([7, 20, 30])
    assert h1.loss == h2.loss
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    assert h1.loss[-1] < h1.loss[0] - 1.0  # from ~ln 256 = 5.5 nats down


def test_lm_loss_is_mean_next_token_cross_entropy():
    logits, targets = torch.randn(2, 5, 7), torch.randint(0, 7, (2, 5))
    manual = -torch.log_softmax(logits, -1).gather(-1, targets[..., None]).mean()
    torch.testing.assert_close(lm_loss(logits, targets), manual)


@pytest.mark.skipif(not PATH.exists(), reason="tiny_gpt.pt not built")
def test_shipped_tiny_gpt_loads_and_scores_as_recorded():
    model = tiny_gpt()
    assert not model.training and model.config == TINY_GPT
    assert model.lm_head.weight is model.transformer.wte.weight
    assert PATH.stat().st_size < 4_000_000
    info = model.info
    valid = encode(corpus(200_000, info["valid_seed"]))
    # a prefix of the recorded validation stream: close to the recorded loss
    loss = evaluate_lm(model, valid, info["block_size"], max_windows=200)
    assert abs(loss - info["valid_loss"]) < 0.05, (loss, info)
    assert info["valid_loss"] < 1.0  # far below a byte-uniform 5.55 nats
    with pytest.raises(FileNotFoundError, match="llmcourse.pretrained"):
        tiny_gpt(PATH.with_name("missing.pt"))

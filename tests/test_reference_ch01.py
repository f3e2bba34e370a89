"""Chapter 01 references against independent authorities: hand-computed values, brute-force
loops, Hugging Face `tokenizers` and PyTorch built-ins."""

import functools
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from llmcourse.checks.ch01.bpe import _naive_train
from llmcourse.data import corpus, python_stdlib
from llmcourse.reference import bpe, mlp_lm, ngram

# -- n-grams -------------------------------------------------------------------------------

HAND = torch.tensor([0, 1, 2, 0, 1, 1, 0])  # bigrams: 01 x2, 12, 20, 11, 10


def test_counts_by_hand_and_against_a_counter():
    assert ngram.ngram_counts(HAND, 2, 3).tolist() == [[0, 2, 0], [1, 1, 1], [1, 0, 0]]
    assert ngram.ngram_counts(HAND, 1, 3).tolist() == [3, 3, 1]
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 4, (200,), generator=g)
    counts = ngram.ngram_counts(tokens, 3, 4)
    expected = Counter(tuple(tokens[i:i + 3].tolist()) for i in range(198))
    assert counts.dtype == torch.int64 and counts.sum() == 198
    assert all(counts[k].item() == v for k, v in expected.items())
    assert ngram.ngram_counts(torch.tensor([1]), 2, 3).tolist() == [[0] * 3] * 3


def test_add_k_closed_form():
    probs = ngram.add_k_probs(ngram.ngram_counts(HAND, 2, 3), k=1.0)
    assert probs.dtype == torch.float64
    expected = torch.tensor([[1 / 5, 3 / 5, 1 / 5], [2 / 6, 2 / 6, 2 / 6], [2 / 4, 1 / 4, 1 / 4]],
                            dtype=torch.float64)
    torch.testing.assert_close(probs, expected)
    torch.testing.assert_close(ngram.add_k_probs(torch.zeros(4, 4), 0.3), torch.full((4, 4), 0.25,
                                                                                      dtype=torch.float64))


def test_kneser_ney_by_hand():
    """D = 0.5. Continuation counts N1+(. w) = 2, 2, 1 of 5, so with the uniform share
    D * 3 / 5 / 3 = 0.1: P(w) = 0.4, 0.4, 0.2. Then P(w | h) for each context by hand."""
    probs = ngram.kneser_ney_probs(ngram.ngram_counts(HAND, 2, 3), discount=0.5)
    expected = torch.tensor([
        [0.25 * 0.4, 1.5 / 2 + 0.25 * 0.4, 0.25 * 0.2],  # h=0: c=2, one type
        [1 / 6 + 0.2, 1 / 6 + 0.2, 1 / 6 + 0.1],  # h=1: c=3, three types, lambda = 0.5
        [0.5 + 0.2, 0.2, 0.1],  # h=2: c=1, one type, lambda = 0.5
    ], dtype=torch.float64)
    torch.testing.assert_close(probs, expected)
    unigram = ngram.kneser_ney_probs(ngram.ngram_counts(HAND, 1, 3), discount=0.5)
    torch.testing.assert_close(unigram, torch.tensor([2.5 / 7 + 0.5 * 3 / 7 / 3] * 2 + [0.5 / 7 + 0.5 / 7],
                                                     dtype=torch.float64))


def _kn_loops(tokens, n, v, d, h, w):
    """Textbook recursion with Python dicts, one probability at a time."""
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    k = len(h) + 1
    if k == n:
        table = Counter(grams)
    else:  # continuation counts: distinct words before each k-gram (within the n-grams)
        table = Counter(g[1:] for g in {g[n - k - 1:] for g in grams})
    lower = _kn_loops(tokens, n, v, d, h[1:], w) if h else 1 / v
    total = sum(table[h + (u,)] for u in range(v))
    if total == 0:
        return lower
    types = sum(table[h + (u,)] > 0 for u in range(v))
    return max(table[h + (w,)] - d, 0) / total + d * types / total * lower


def test_kneser_ney_trigram_matches_the_textbook_recursion():
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 3, (25,), generator=g)
    probs = ngram.kneser_ney_probs(ngram.ngram_counts(tokens, 3, 3), discount=0.75)
    torch.testing.assert_close(probs.sum(-1), torch.ones(3, 3, dtype=torch.float64))
    t = tokens.tolist()
    for a in range(3):
        for b in range(3):
            for c in range(3):
                assert probs[a, b, c].item() == pytest.approx(_kn_loops(t, 3, 3, 0.75, (a, b), c))


def test_perplexity_matches_torch_cross_entropy():
    g = torch.Generator().manual_seed(2)
    probs = ngram.kneser_ney_probs(ngram.ngram_counts(torch.randint(0, 5, (60,), generator=g), 3, 5))
    tokens = torch.randint(0, 5, (30,), generator=g)
    windows = tokens.unfold(0, 3, 1)
    rows = torch.log(probs[windows[:, 0], windows[:, 1]])  # (28, V) log P(. | context)
    expected = torch.exp(F.nll_loss(rows, windows[:, 2]))
    torch.testing.assert_close(ngram.perplexity(probs, tokens), expected)
    uniform = torch.full((6, 6), 1 / 6, dtype=torch.float64)
    assert ngram.perplexity(uniform, tokens).item() == pytest.approx(6.0)
    zero = torch.tensor([[1.0, 0.0], [0.5, 0.5]], dtype=torch.float64)
    assert ngram.perplexity(zero, torch.tensor([0, 1])).item() == float("inf")


def test_sampling_inverse_cdf():
    chain = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    u = torch.rand(7, dtype=torch.float64)
    assert ngram.sample_ngram(chain, torch.tensor([0]), u).tolist() == [1, 2, 0, 1, 2, 0, 1]
    dyadic = torch.tensor([0.25, 0.0, 0.25, 0.5], dtype=torch.float64)
    at_edges = torch.tensor([0.0, 0.2499, 0.25, 0.5, 0.75, 0.999999], dtype=torch.float64)
    assert ngram.sample_ngram(dyadic, torch.tensor([], dtype=torch.long), at_edges).tolist() == [0, 0, 2, 3, 3, 3]
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    draws = ngram.generate(probs, torch.tensor([], dtype=torch.long), 20_000, torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=4).double() / 20_000
    assert (freq - probs).abs().max() < 4 * (0.25 / 20_000) ** 0.5
    again = ngram.generate(probs, torch.tensor([], dtype=torch.long), 50, torch.Generator().manual_seed(7))
    assert torch.equal(again, ngram.generate(probs, torch.tensor([], dtype=torch.long), 50,
                                             torch.Generator().manual_seed(7)))


# -- BPE -----------------------------------------------------------------------------------

MIXED = ("The cat sat. 我爱自然语言处理，也爱机器学习。 Emoji: 👍🏽😀🦜👍🏽😀! café déjà vu\n"
         "def f(x_1):\n    return x_1 + 42  # done\n\n")
TRAIN_TEXT = corpus(4000, seed=0)[:4000] + MIXED * 5
MERGES = bpe.train(TRAIN_TEXT, 300)
CHINESE_EMOJI = st.characters(min_codepoint=0x4E00, max_codepoint=0x4FFF) | st.sampled_from(
    list("👍🏽😀🦜🎉❤️\u200d🔥") + list("我爱自然语言处理 .,!\n"))


def test_merge_and_train_by_hand():
    assert bpe.merge([1, 1, 1], (1, 1), 9) == [9, 1]
    assert bpe.merge([1, 2, 3, 1, 2], (1, 2), 256) == [256, 3, 256]
    assert bpe.train("aaabdaaabac", 3) == [(97, 97), (97, 98), (256, 257)]
    assert bpe.train("ab ab", 10) == [(97, 98), (32, 256)]  # then no pair is left


@pytest.mark.parametrize("text, n", [(TRAIN_TEXT, 120), (python_stdlib(6000), 80), ("aaaa aaa a" * 7, 10)])
def test_incremental_training_equals_full_recount(text, n):
    assert bpe.train(text, n) == _naive_train(text, n)


def test_pretokenizer_covers_every_character():
    chunks = bpe.pretokenize("Hello, world! It's 2024_x  \n\n  ok")
    assert chunks == ["Hello", ",", " world", "!", " It", "'s", " 2024", "_", "x", "  \n\n ", " ok"]


@functools.lru_cache(maxsize=1)
def _hf():
    """A Hugging Face tokenizer with our vocabulary and merges, bytes mapped GPT-2's way."""
    tokenizers = pytest.importorskip("tokenizers")
    vocab, hf_merges = bpe.to_huggingface(MERGES)
    assert len(vocab) == 256 + len(MERGES)  # every token's bytes are distinct
    tok = tokenizers.Tokenizer(tokenizers.models.BPE(vocab=vocab, merges=hf_merges))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Sequence([
        tokenizers.pre_tokenizers.Split(tokenizers.Regex(bpe.PATTERN), behavior="isolated"),
        tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = tokenizers.decoders.ByteLevel()
    return tok


def _hf_model_ids(text):
    """Hugging Face's BPE model on each of our chunks (its merge logic, our pre-tokenizer)."""
    chars = bpe.bytes_to_unicode()
    return [t.id for chunk in bpe.pretokenize(text)
            for t in _hf().model.tokenize("".join(chars[b] for b in chunk.encode("utf-8")))]


@pytest.mark.parametrize("text", [TRAIN_TEXT[:1500], MIXED, "  spaces   and\ttabs\t\n", "",
                                  corpus(3000, seed=9)])
def test_encode_matches_hugging_face_pipeline(text):
    ids = bpe.encode(text, MERGES)
    assert ids == _hf().encode(text).ids == _hf_model_ids(text)
    assert _hf().decode(ids) == text == bpe.decode(ids, MERGES)


@settings(max_examples=150, deadline=None)
@given(st.text() | st.text(CHINESE_EMOJI))
def test_encode_matches_hugging_face_model_and_round_trips(text):
    ids = bpe.encode(text, MERGES)
    assert ids == _hf_model_ids(text)
    assert bpe.decode(ids, MERGES) == text
    assert "".join(bpe.pretokenize(text)) == text


def test_merges_are_used_on_chinese_and_emoji():
    ids = bpe.encode("我爱自然语言处理👍🏽", MERGES)
    assert len(ids) < len("我爱自然语言处理👍🏽".encode("utf-8")) and max(ids) >= 256


def test_decode_replaces_partial_utf8():
    emoji = list("👍".encode("utf-8"))
    assert bpe.decode(emoji[:2] + [104, 105], []) == "\ufffdhi"
    assert bpe.decode(emoji, []) == "👍"


def test_benchmark_runs(capsys):
    from llmcourse.scripts.bpe_benchmark import benchmark_train

    assert benchmark_train(n_bytes=20_000, num_merges=50) >= 0
    assert "BPE training" in capsys.readouterr().out



# -- special tokens, streaming, GPT-2's files ----------------------------------------------

SPECIALS = ["<|endoftext|>", "<|endoftext|><|endoftext|>", "<|im_start|>"]  # two overlap
DOC = ("Hi  there<|endoftext|>  x<|endoftext|><|endoftext|>\n\n  def<|im_start|>  <|endof"
       + MIXED + TRAIN_TEXT[:1500] + "<|endoftext|>") * 2


def test_special_tokens_are_never_merged_in_training():
    docs = [TRAIN_TEXT[i:i + 40] for i in range(0, 4000, 40)]
    text = "<|endoftext|>".join(docs)  # the separator is the most frequent string
    merges = bpe.train(text, 150, special_tokens=["<|endoftext|>"])
    assert not any(b"<|" in tok or b"|>" in tok or b"endoftext" in tok for tok in bpe.vocab(merges))
    assert any(b"endoftext" in tok for tok in bpe.vocab(bpe.train(text, 150)))  # without: merged
    # nothing is learned across a separator: the same as the documents' chunks counted apart
    assert merges == _naive_train_chunks(Counter(c for d in docs for c in bpe.pretokenize(d)), 150)


def _naive_train_chunks(chunks, n):
    words = {c: list(c.encode("utf-8")) for c in chunks}
    merges = []
    while len(merges) < n:
        counts = Counter()
        for c, ids in words.items():
            for p in zip(ids, ids[1:]):
                counts[p] += chunks[c]
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))
        merges.append(best)
        words = {c: bpe.merge(ids, best, 255 + len(merges)) for c, ids in words.items()}
    return merges


def test_special_tokens_match_hugging_face_longest_first():
    """HF `tokenizers`' added tokens are matched leftmost-longest, never split."""
    tok = _hf()
    codec = bpe.Codec(MERGES, SPECIALS)
    hf = __import__("tokenizers").Tokenizer.from_str(tok.to_str())
    hf.add_special_tokens(SPECIALS)
    assert [hf.token_to_id(s) for s in SPECIALS] == [codec.special_tokens[s] for s in SPECIALS]
    ids = codec.encode(DOC)
    assert ids == hf.encode(DOC).ids
    assert codec.special_tokens["<|endoftext|><|endoftext|>"] in ids
    assert codec.decode(ids) == DOC
    assert bpe.encode("<|endoftext|>", MERGES, ["<|endoftext|>"]) == [256 + len(MERGES)]


def test_encode_iterable_equals_encode_for_any_split():
    import random

    codec = bpe.Codec(MERGES, SPECIALS)
    whole = codec.encode(DOC)
    rng = random.Random(0)
    for _ in range(100):
        cuts = sorted(rng.sample(range(len(DOC)), rng.randint(1, 300)))
        parts = [DOC[a:b] for a, b in zip([0] + cuts, cuts + [len(DOC)])]
        assert list(codec.encode_iterable(parts)) == whole
    assert list(codec.encode_iterable(iter(DOC))) == whole  # one character at a time
    assert list(codec.encode_iterable([])) == []


def test_encode_iterable_memory_is_bounded(tmp_path):
    import tracemalloc

    codec = bpe.Codec(MERGES, SPECIALS)
    path = tmp_path / "big.txt"
    block = DOC * 20  # ~200 kB
    path.write_text(block * 20, encoding="utf-8")  # ~4 MB
    tracemalloc.start()
    with open(path, encoding="utf-8") as f:
        n = sum(1 for _ in codec.encode_iterable(f))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert n == 20 * len(codec.encode(block))
    assert peak < 2_000_000, peak  # the file is 4 MB; its token list alone would be ~10 MB


def test_saved_files_load_in_gpt2_tokenizer(tmp_path):
    """Our vocab.json/merges.txt read by `transformers`' GPT2Tokenizer (GPT-2's encoder.py)."""
    transformers = pytest.importorskip("transformers")
    codec = bpe.Codec(MERGES, ["<|endoftext|>"])
    vocab_file, merges_file = codec.save(tmp_path)
    assert merges_file.read_text(encoding="utf-8").startswith("#version: 0.2\n")
    gpt2 = transformers.GPT2Tokenizer(str(vocab_file), str(merges_file))
    loaded = bpe.Codec.load(vocab_file, merges_file)
    text = "Hi there<|endoftext|>" + MIXED + TRAIN_TEXT[:2000]  # letters and digits only: same split
    assert codec.encode(text) == gpt2.encode(text) == loaded.encode(text)
    assert loaded.merges == codec.merges and loaded.special_tokens == codec.special_tokens
    # GPT-2's own numbering: the 256 bytes in bytes_to_unicode order (printable ones first)
    order = sorted(range(256), key=lambda b: (ord(bpe.bytes_to_unicode()[b]), b))
    ids = [order.index(b) for b in range(256)] + list(range(256, 256 + len(MERGES)))
    renumbered = bpe.Codec(MERGES, {"<|endoftext|>": 256 + len(MERGES)}, ids=ids)
    vocab_file, merges_file = renumbered.save(tmp_path / "gpt2-order")
    gpt2 = transformers.GPT2Tokenizer(str(vocab_file), str(merges_file))
    assert gpt2.convert_tokens_to_ids("!") == 0 and renumbered.encode("!") == [0]
    reloaded = bpe.Codec.load(vocab_file, merges_file)
    assert renumbered.encode(text) == gpt2.encode(text) == reloaded.encode(text)
    assert reloaded.decode(reloaded.encode(text)) == text


def _gpt2_files():
    """GPT-2's own encoder.json + vocab.bpe where tiktoken has cached them (no download)."""
    import hashlib
    import os
    import tempfile
    from pathlib import Path

    base = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"
    cache = Path(os.environ.get("TIKTOKEN_CACHE_DIR", os.environ.get("DATA_GYM_CACHE_DIR", "")) or
                 Path(tempfile.gettempdir()) / "data-gym-cache")
    files = [cache / hashlib.sha1((base + name).encode()).hexdigest()
             for name in ("encoder.json", "vocab.bpe")]
    return files if all(f.exists() for f in files) else None


def test_gpt2_files_encode_like_tiktoken():
    tiktoken = pytest.importorskip("tiktoken", reason="tiktoken not installed: GPT-2 comparison skipped")
    files = _gpt2_files()
    if files is None:
        pytest.skip("GPT-2's files not in tiktoken's local cache: comparison skipped (no download)")
    codec = bpe.Codec.load(*files, pattern=bpe.gpt2_regex())
    enc = tiktoken.get_encoding("gpt2")
    for text in [DOC, MIXED, python_stdlib(20_000, seed=3), "<|endoftext|>x<|endoftext|>"]:
        assert codec.encode(text) == enc.encode(text, allowed_special="all")


# -- MLP language model --------------------------------------------------------------------

@pytest.mark.parametrize("direct", [False, True])
def test_mlp_lm_shapes_and_parameter_count(direct):
    v, c, m, h = 11, 3, 5, 7
    model = mlp_lm.MLPLanguageModel(v, c, m, h, direct=direct)
    assert model(torch.randint(0, v, (4, c))).shape == (4, v)
    assert model(torch.randint(0, v, (2, 6, c))).shape == (2, 6, v)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == v * m + c * m * h + h + h * v + v + (c * m * v if direct else 0)
    assert n_params == mlp_lm.num_parameters(v, c, m, h, direct)


def test_mlp_lm_forward_matches_torch_layers():
    torch.manual_seed(0)
    model = mlp_lm.MLPLanguageModel(9, 4, 3, 6, direct=True).double()
    ctx = torch.randint(0, 9, (5, 4))
    x = torch.cat([F.embedding(ctx[:, i], model.embed.weight) for i in range(4)], dim=1)
    expected = F.linear(torch.tanh(F.linear(x, model.hidden.weight, model.hidden.bias)),
                        model.out.weight, model.out.bias) + F.linear(x, model.direct.weight)
    torch.testing.assert_close(model(ctx), expected)


def test_context_windows():
    x, y = mlp_lm.context_windows(torch.arange(6), 2)
    assert x.tolist() == [[0, 1], [1, 2], [2, 3], [3, 4]] and y.tolist() == [2, 3, 4, 5]

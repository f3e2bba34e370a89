"""Chapter 01 exercise specs: every catalogued mistake is named, and a learner's plain-Python
answers (lists, tuples, str) are judged like the reference's."""


import pytest

from llmcourse.checks import all_exercises, get, run

IDS = ["01.add_k", "01.bpe_decode", "01.bpe_encode", "01.bpe_merge", "01.bpe_split_special",
       "01.bpe_train", "01.kneser_ney", "01.mlp_lm_forward", "01.ngram_counts", "01.ngram_sample",
       "01.perplexity"]

# What a learner might write in the notebook: loops and lists, no course code.
LEARNER = '''
import re
from collections import Counter

import torch

PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?[^\\W\\d_]+| ?\\d+| ?(?:[^\\s\\w]|_)+|\\s+(?!\\S)|\\s+"""


def ngram_counts(tokens, n, vocab_size):
    counts = torch.zeros((vocab_size,) * n, dtype=torch.int64)
    seq = tokens.tolist()
    for gram, c in Counter(tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)).items():
        counts[gram] = c
    return counts


def bpe_merge(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == tuple(pair):
            out, i = out + [new_id], i + 2
        else:
            out, i = out + [ids[i]], i + 1
    return out


def bpe_train(text, num_merges):
    words = Counter(re.findall(PATTERN, text))
    seqs = {w: list(w.encode("utf-8")) for w in words}
    merges = []
    for r in range(num_merges):
        stats = Counter()
        for w, ids in seqs.items():
            for p in zip(ids, ids[1:]):
                stats[p] += words[w]
        if not stats:
            break
        best = min(stats, key=lambda p: (-stats[p], p))
        merges.append(list(best))  # lists, not tuples: still fine
        seqs = {w: bpe_merge(ids, best, 256 + r) for w, ids in seqs.items()}
    return merges


def bpe_encode(text, merges):
    rank = {tuple(p): r for r, p in enumerate(merges)}
    out = []
    for chunk in re.findall(PATTERN, text):
        ids = list(chunk.encode("utf-8"))
        while len(ids) > 1:
            pair = min(zip(ids, ids[1:]), key=lambda p: rank.get(p, float("inf")))
            if pair not in rank:
                break
            ids = bpe_merge(ids, pair, 256 + rank[pair])
        out.extend(ids)
    return tuple(out)


def bpe_decode(ids, merges):
    vocab = {i: bytes([i]) for i in range(256)}
    for r, (a, b) in enumerate(merges):
        vocab[256 + r] = vocab[a] + vocab[b]
    return b"".join(vocab[i] for i in ids).decode("utf-8", errors="replace")


def bpe_split_special(text, special_tokens):
    # no regex: scan, trying the longest special token first at each position
    specials = sorted(set(special_tokens), key=len, reverse=True)
    pieces, start, i = [], 0, 0
    while i < len(text):
        hit = next((s for s in specials if text.startswith(s, i)), None)
        if hit is None:
            i += 1
            continue
        if i > start:
            pieces.append(text[start:i])
        pieces.append(hit)
        i = start = i + len(hit)
    if start < len(text):
        pieces.append(text[start:])
    return tuple(pieces)
'''


def test_chapter_registers_its_exercises():
    assert [e.id for e in all_exercises("01") if getattr(e, "kind", "") != "challenge"] == IDS
    assert {get(i).entry for i in IDS} >= {"ngram_counts", "add_k_probs", "kneser_ney_probs",
                                           "perplexity", "sample_ngram", "bpe_train", "bpe_encode",
                                           "bpe_decode", "bpe_merge", "mlp_lm_forward",
                                           "bpe_split_special"}


@pytest.mark.parametrize("exercise_id", ["01.ngram_counts", "01.bpe_merge", "01.bpe_train",
                                         "01.bpe_encode", "01.bpe_decode", "01.bpe_split_special"])
def test_plain_python_answers_pass(learner, exercise_id):
    module = learner(LEARNER)
    ex = get(exercise_id)
    result = run(ex, getattr(module, ex.entry), hidden=True)
    assert result.status == "pass", str(result)


def test_a_wrong_decode_is_compared_as_text(learner):
    module = learner(LEARNER.replace('errors="replace"', 'errors="ignore"'))
    result = run(get("01.bpe_decode"), module.bpe_decode, hidden=True)
    assert result.status == "fail" and result.diagnosis.name == "invalid bytes dropped"


def test_tokenizer_libraries_are_forbidden(learner):
    module = learner('''
        def bpe_encode(text, merges):
            from tokenizers import Tokenizer
            return Tokenizer.from_str(merges).encode(text).ids
    ''', name="cheater_ch01")
    result = run(get("01.bpe_encode"), module.bpe_encode)
    assert result.status == "forbidden" and "tokenizers" in str(result)

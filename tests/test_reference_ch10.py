"""Chapter 10 (part A) references against independent authorities: Hugging Face's logits
warpers and GPT-2 beam search, datasketch's MinHash and MinHashLSH, brute-force enumeration of
a finite language, closed forms and brute force over all pairs."""

from __future__ import annotations

import math
import random
from collections import defaultdict

import numpy as np
import pytest
import torch

from llmcourse.data import synthetic as S
from llmcourse.data.next_token import next_byte_distribution, next_token_distribution, word_boundaries
from llmcourse.reference import calibration as cal
from llmcourse.reference import decoding as dec
from llmcourse.reference import dedup
from llmcourse.reference import memorisation as mem


# -- the true next-token distribution ------------------------------------------------------

def test_next_token_distribution_equals_enumeration_of_a_finite_language():
    L = S.Language.tiny()
    docs = [(S._TOKEN.findall(t), math.exp(lp)) for t, lp in S.enumerate_documents(L)]
    rng = random.Random(0)
    for _ in range(150):
        tokens, _ = rng.choice(docs)
        k = rng.randrange(1, len(tokens))
        mass = defaultdict(float)
        for t, p in docs:
            if t[:k] == tokens[:k]:
                mass[t[k]] += p
        total = sum(mass.values())
        got = next_token_distribution(S.render(tokens[:k]), L)
        assert set(got) == set(mass)
        for tok, p in mass.items():
            assert got[tok] == pytest.approx(p / total, rel=1e-12, abs=1e-15)


def test_next_byte_distribution_on_real_documents():
    for doc in S.documents(6, 11):
        for i in word_boundaries(doc):
            dist = next_byte_distribution(doc[:i])
            assert sum(dist.values()) == pytest.approx(1.0, abs=1e-12)
            assert dist.get(doc[i], 0.0) > 0.0
    # after "Math: " the first operand is uniform in 0..99: '0' once, every other digit 11 times
    d = next_byte_distribution("Math: ")
    assert d["0"] == pytest.approx(0.01) and d["7"] == pytest.approx(0.11)
    # "=" is followed by the one true result
    assert next_token_distribution("Math: 12 + 30 =") == {"42": 1.0}
    with pytest.raises(ValueError):
        next_token_distribution("Math: 12 + 30 = 41 .")


# -- decoding --------------------------------------------------------------------------------

@pytest.mark.parametrize("T,k,p,dtype", [(1.0, 0, 0.9, torch.float32), (0.7, 10, 0.8, torch.float32),
                                         (2.0, 5, 1.0, torch.float64), (1.3, 0, 0.3, torch.float64),
                                         (1.0, 2, 1.0, torch.float32), (3.0, 7, 0.05, torch.float32)])
def test_next_token_probs_equals_hf_warpers(T, k, p, dtype):
    from transformers.generation.logits_process import (TemperatureLogitsWarper, TopKLogitsWarper,
                                                        TopPLogitsWarper)
    g = torch.Generator().manual_seed(0)
    z = (torch.randn(6, 50, generator=g, dtype=torch.float64) * 3).to(dtype)
    z[0, :5] = torch.tensor([2.0, 1.0, 1.0, 1.0, 0.5], dtype=dtype)  # a tie at the k-th value
    s = TemperatureLogitsWarper(T)(None, z.clone())
    if k:
        s = TopKLogitsWarper(k)(None, s)
    if p < 1:
        s = TopPLogitsWarper(p)(None, s)
    torch.testing.assert_close(dec.next_token_probs(z, T, k, p), torch.softmax(s, -1), rtol=0, atol=1e-7)


def test_top_p_keeps_the_crossing_token():
    z = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    kept = dec.next_token_probs(z, top_p=0.7) > 0
    assert kept.tolist() == [True, True, False, False]


@pytest.mark.parametrize("num_beams,steps", [(3, 5), (4, 6), (1, 4)])
def test_beam_search_equals_hf_gpt2_generate(num_beams, steps):
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=24, n_positions=32, n_embd=16, n_layer=2, n_head=2,
                     bos_token_id=None, eos_token_id=None, pad_token_id=None)
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for w in model.parameters():
            w.normal_(0, 0.3)
    prompt = torch.tensor([3, 7, 1])

    def next_log_probs(seqs):
        return torch.log_softmax(model(seqs).logits[:, -1].float(), -1)

    with torch.no_grad():
        seqs, scores = dec.beam_search(next_log_probs, prompt, num_beams, steps)
        out = model.generate(prompt[None], num_beams=num_beams, do_sample=False, max_new_tokens=steps,
                             length_penalty=0.0, early_stopping=False, num_return_sequences=num_beams,
                             output_scores=True, return_dict_in_generate=True, pad_token_id=0)
    assert torch.equal(seqs, out.sequences)
    if num_beams > 1:
        torch.testing.assert_close(scores, out.sequences_scores, rtol=1e-5, atol=1e-5)
    else:  # one beam is greedy search
        assert torch.equal(seqs[0], model.generate(prompt[None], do_sample=False, max_new_tokens=steps,
                                                   pad_token_id=0)[0])


def test_distinct_n_closed_form():
    assert dec.distinct_n([[1, 2, 1, 2]], 2) == pytest.approx(2 / 3)
    assert dec.distinct_n([[1, 2], [1, 2]], 2) == 0.5  # the repeat across generations counts
    assert dec.distinct_n([[1], [2]], 2) == 0.0
    assert dec.distinct_n([[1, 2], [3]], 1) == 1.0


def test_math_verdicts():
    docs = ["Math: 12 + 30 = 42.\n", "Math: 12 + 30 = 41.\n", "Math: 12 + 30 == 42.\n",
            "Math: 7 * 12 = 84.\n", "Math: 5 - 2 = 3. 4 * 2 = 9.\n", S.documents(1, 0)[0]]
    assert dec.math_verdicts(docs).tolist() == [0, 1, 2, 2, 1, 0]


# -- calibration -------------------------------------------------------------------------------

def _ece_by_hand(conf, correct, M, scheme):
    n = len(conf)
    if scheme == "width":
        bins = [[i for i in range(n) if (m / M < conf[i] <= (m + 1) / M) or (m == 0 and conf[i] == 0)]
                for m in range(M)]
    else:
        order = sorted(range(n), key=lambda i: conf[i])
        bins = [list(c) for c in np.array_split(order, M)]
    return sum(len(b) / n * abs(sum(correct[i] for i in b) / len(b) - sum(conf[i] for i in b) / len(b))
               for b in bins if b)


@pytest.mark.parametrize("scheme", ["width", "mass"])
def test_ece_equals_a_loop_by_hand(scheme):
    g = torch.Generator().manual_seed(1)
    for n, M in [(50, 10), (97, 7), (13, 4)]:
        conf = torch.rand(n, generator=g, dtype=torch.float64)
        correct = torch.rand(n, generator=g, dtype=torch.float64) < conf
        ece, counts, acc, mean_conf = cal.reliability(conf, correct, M, scheme)
        assert float(ece) == pytest.approx(_ece_by_hand(conf.tolist(), correct.tolist(), M, scheme), abs=1e-12)
        assert int(counts.sum()) == n


def test_ece_closed_forms():
    # a classifier that always says 0.8 and is right 60% of the time: ECE = 0.2 for any binning
    conf = torch.full((10,), 0.8, dtype=torch.float64)
    correct = torch.tensor([1] * 6 + [0] * 4).bool()
    assert float(cal.reliability(conf, correct, 10)[0]) == pytest.approx(0.2)
    # edges: 0.5 is in bin 1 of 4 (0.25 < c <= 0.5), 1.0 in bin 3, 0.0 in bin 0
    idx = cal.bin_index(torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]), 4)
    assert idx.tolist() == [0, 0, 1, 2, 3]


def test_fit_temperature_minimises_the_nll():
    g = torch.Generator().manual_seed(2)
    z = torch.randn(4000, 10, generator=g, dtype=torch.float64) * 3
    y = torch.multinomial(torch.softmax(z / 2.0, -1), 1, generator=g).squeeze(-1)
    T = cal.fit_temperature(z, y)
    assert T == pytest.approx(2.0, rel=0.05)  # recovers the true temperature
    grid = np.exp(np.linspace(math.log(T) - 0.01, math.log(T) + 0.01, 201))
    best = grid[np.argmin([cal.mean_nll(z, y, t) for t in grid])]
    assert T == pytest.approx(best, rel=2e-4)
    assert cal.mean_nll(z, y, T) <= min(cal.mean_nll(z, y, T * 1.001), cal.mean_nll(z, y, T / 1.001))


# -- data quality ------------------------------------------------------------------------------

def test_exact_dedup():
    docs = ["A b", "a  B", "c", "a b\n", "C "]
    assert dedup.exact_dedup(docs).tolist() == [0, 2]


def test_minhash_equals_datasketch_legacy():
    datasketch = pytest.importorskip("datasketch")
    docs = S.documents(20, 5)
    a, b = dedup.permutations(128, seed=3)
    perms = (a.numpy().astype(np.uint64), b.numpy().astype(np.uint64))
    sigs = []
    for doc in docs:
        m = datasketch.MinHash(num_perm=128, scheme="legacy", permutations=perms)
        m.update_batch([s.encode("utf-8") for s in dedup.shingles(doc)])
        mine = dedup.minhash(dedup.shingle_hashes(doc), a, b)
        assert mine.tolist() == m.hashvalues.astype(np.int64).tolist()
        sigs.append((m, mine))
    for (m1, s1), (m2, s2) in zip(sigs, sigs[1:]):
        assert dedup.estimated_jaccard(s1, s2) == m1.jaccard(m2)


def test_minhash_estimates_the_exact_jaccard():
    rng = random.Random(0)
    words = [f"w{i}" for i in range(60)]
    a, b = dedup.permutations(512, seed=4)
    errors = []
    for _ in range(20):
        x = " ".join(rng.choice(words) for _ in range(80))
        y = " ".join(x.split()[:rng.randint(20, 80)] + [rng.choice(words) for _ in range(30)])
        exact = dedup.jaccard(dedup.shingles(x), dedup.shingles(y))
        est = dedup.estimated_jaccard(dedup.minhash(dedup.shingle_hashes(x), a, b),
                                      dedup.minhash(dedup.shingle_hashes(y), a, b))
        errors.append(abs(est - exact))
    assert max(errors) < 4 * math.sqrt(0.25 / 512)  # within 4 standard errors


def test_lsh_pairs_equal_datasketch_minhash_lsh():
    datasketch = pytest.importorskip("datasketch")
    base = S.documents(30, 9)
    docs = base + [d.replace("the", "a", 1) for d in base[:10]]
    a, b = dedup.permutations(32, seed=5)
    sigs = torch.stack([dedup.minhash(dedup.shingle_hashes(d), a, b) for d in docs])
    perms = (a.numpy().astype(np.uint64), b.numpy().astype(np.uint64))
    lsh = datasketch.MinHashLSH(num_perm=32, params=(8, 4))
    ms = []
    for i, s in enumerate(sigs):
        m = datasketch.MinHash(num_perm=32, scheme="legacy", permutations=perms,
                               hashvalues=s.numpy().astype(np.uint64))
        lsh.insert(i, m)
        ms.append(m)
    expected = sorted({(min(i, j), max(i, j)) for i, m in enumerate(ms) for j in lsh.query(m) if j != i})
    got = dedup.lsh_candidate_pairs(sigs, 8, 4)
    assert got.tolist() == [list(p) for p in expected] and len(expected) >= 10


def test_contamination_rule():
    train = ["Once upon a time, there was a cat named Tom. Then he found a red ball. The end.\n"]
    copy = "once upon a time there was a cat named tom then he found"  # 13 words, no punctuation
    assert dedup.contaminated([copy, "Math: 1 + 1 = 2.\n", "a cat named Tom."], train).tolist() == \
        [True, False, False]
    assert dedup.contaminated(["tom then he found"], train, n=4).tolist() == [True]


# -- memorisation ------------------------------------------------------------------------------

def test_exposure_closed_forms_and_brute_force():
    space = torch.arange(1024, dtype=torch.float64)[None].flip(-1)  # the canary's NLL 0 is the lowest
    assert mem.exposure(torch.tensor([0.0], dtype=torch.float64), space).item() == pytest.approx(10.0)
    assert mem.exposure(torch.tensor([1023.0], dtype=torch.float64), space).item() == pytest.approx(0.0)
    g = torch.Generator().manual_seed(0)
    s = torch.randint(0, 20, (3, 200), generator=g).double()
    c = s[:, 7]
    brute = [math.log2(200) - math.log2(1 + sum(v < c[i] for v in s[i].tolist())) for i in range(3)]
    assert mem.exposure(c, s).tolist() == pytest.approx(brute)


def test_roc_auc_brute_force_closed_form_and_sklearn():
    g = torch.Generator().manual_seed(0)
    for n in (10, 57, 300):
        y = torch.rand(n, generator=g) < 0.4
        y[0], y[1] = True, False
        s = (torch.randn(n, generator=g) * 2).round() / 2  # ties
        pos, neg = s[y].tolist(), s[~y].tolist()
        brute = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg) / (len(pos) * len(neg))
        assert mem.roc_auc(s, y) == pytest.approx(brute, abs=1e-12)
    # two normals a distance d apart: AUC = Phi(d / sqrt 2)
    n = 4000
    y = torch.arange(n) % 2 == 0
    s = torch.randn(n, generator=g, dtype=torch.float64) + 1.0 * y
    assert mem.roc_auc(s, y) == pytest.approx(0.5 * (1 + math.erf(1.0 / 2)), abs=0.02)
    try:
        from sklearn.metrics import roc_auc_score
    except ImportError:
        return
    assert mem.roc_auc(s, y) == pytest.approx(roc_auc_score(y.numpy(), s.numpy()), abs=1e-12)

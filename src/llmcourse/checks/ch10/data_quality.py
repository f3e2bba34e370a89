"""data_quality.ipynb: exact dedup, MinHash, LSH banding, 13-gram contamination, exposure of
canaries and the membership attack's ROC AUC.

Learners may return lists where the task allows it; ``call`` turns them into the reference's
tensors (pairs as an ``(P, 2)`` int64 tensor).
"""

from __future__ import annotations

import math
import random

import torch

from ...data.synthetic import documents
from ...reference import dedup as ref
from ...reference import memorisation as mem
from .. import calls, register
from ..core import Case, Exercise, Mistake, Rule
from ..kit import F32, F64, generator, knob

NO_LIBRARIES = (
    Rule("datasketch", "write MinHash and LSH yourself instead of calling datasketch"),
    Rule("sklearn", "compute the AUC yourself instead of calling scikit-learn"),
)


# ---------------------------------------------------------------------------------------
# 10.exact_dedup

def _dedup(docs, *, lower=True, spaces=True, last=False):
    def norm(d):
        d = d.lower() if lower else d
        return " ".join(d.split()) if spaces else d
    first: dict[str, int] = {}
    for i, d in enumerate(docs):
        if last:
            first[norm(d)] = i
        else:
            first.setdefault(norm(d), i)
    return torch.tensor(sorted(first.values()), dtype=torch.int64)


def _noisy_copy(doc, rng):
    kind = rng.randrange(3)
    if kind == 0:
        return doc.upper()
    if kind == 1:
        return "  " + doc.replace(" ", "   ", 2).rstrip("\n") + " \n"
    return doc.replace(" ", "\t", 1).title()


@register
class ExactDedup(Exercise):
    """Exact deduplication of normalised documents by hashing."""
    id = "10.exact_dedup"
    entry = "exact_dedup"
    mistakes = (
        Mistake("no normalisation", "compare the NORMALISED texts: lower case, whitespace runs "
                "collapsed to one space, stripped.", knob(_dedup, lower=False, spaces=False)),
        Mistake("whitespace not normalised", "collapse every run of whitespace (spaces, tabs, "
                "newlines) to one space and strip the ends: \" \".join(doc.lower().split()).",
                knob(_dedup, spaces=False)),
        Mistake("case not normalised", "lower-case the text before hashing it.", knob(_dedup, lower=False)),
        Mistake("kept the last copy", "keep the FIRST document of each group of duplicates.",
                knob(_dedup, last=True)),
    )

    def reference(self, docs):
        return ref.exact_dedup(docs)

    call = calls.int64_list

    def cases(self, seed, hidden):
        rng = random.Random(seed)
        docs = documents(12, seed)
        mixed = docs[:6] + [docs[1], docs[4].upper(), docs[2].replace(" ", "  ")] + docs[6:9]
        cases = [
            Case("exact copies", (docs[:4] + [docs[0], docs[2]] + docs[4:6],)),
            Case("copies that differ in case", ([docs[0], docs[1].upper(), docs[1], docs[0].lower(),
                                                 docs[0].replace(" ", "  ")],)),
            Case("copies that differ in whitespace", ([docs[3], docs[3].replace(" ", "  "),
                                                     " " + docs[3], docs[4], docs[4].upper()],)),
            Case("a mix", (mixed,)),
        ]
        if hidden:
            many = documents(30, seed + 1)
            many = many + [_noisy_copy(rng.choice(many), rng) for _ in range(15)]
            rng.shuffle(many)
            cases += [
                Case("45 documents with noisy copies", (many,)),
                Case("tabs and newlines", (["a b\tc\n", "A  B C", "a b c d", "a\nb c"],)),
                Case("no duplicates", (documents(5, seed + 2),)),
                Case("empty list", ([],)),
            ]
        return cases


# ---------------------------------------------------------------------------------------
# 10.minhash

def _minhash(hashes, a, b, *, shared=False, use_max=False, mod=True):
    if shared:
        a, b = a[:1].expand_as(a), b[:1].expand_as(b)
    if hashes.numel() == 0:
        return torch.full_like(a, ref.MAX_HASH)
    x = hashes[None, :] * a[:, None] + b[:, None]
    x = (x % ref.MERSENNE if mod else x) & ref.MAX_HASH
    return x.amax(1) if use_max else x.amin(1)


def _hash_set(g, n):
    return torch.randint(0, 1 << 32, (n,), generator=g, dtype=torch.int64).unique()


@register
class MinHash(Exercise):
    """A MinHash signature (datasketch's legacy scheme)."""
    id = "10.minhash"
    entry = "minhash_signature"
    forbid = NO_LIBRARIES
    mistakes = (
        Mistake("one shared permutation", "each of the k entries uses its OWN permutation "
                "(a[i], b[i]): with one shared permutation all k entries are equal and the "
                "signature estimates Jaccard no better than a single coin.", knob(_minhash, shared=True)),
        Mistake("max instead of min", "MinHash keeps the MINIMUM permuted hash over the set.",
                knob(_minhash, use_max=True)),
        Mistake("no modulo the prime", "reduce (a h + b) modulo P = 2^61 - 1 BEFORE keeping the "
                "low 32 bits.", knob(_minhash, mod=False)),
    )

    def reference(self, hashes, a, b):
        return ref.minhash(hashes, a, b)

    def cases(self, seed, hidden):
        g = generator(seed)

        def case(label, n, k):
            a, b = ref.permutations(k, int(torch.randint(0, 10**6, (1,), generator=g)))
            return Case(label, (_hash_set(g, n), a, b))

        cases = [case("20 shingles, 16 permutations", 20, 16),
                 case("one shingle, 8 permutations", 1, 8),
                 case("200 shingles, 64 permutations", 200, 64)]
        if hidden:
            a, b = ref.permutations(10, seed)
            cases += [case("5 shingles, 128 permutations", 5, 128),
                      case("1000 shingles, 32 permutations", 1000, 32),
                      Case("the empty set", (torch.zeros(0, dtype=torch.int64), a, b))]
        return cases


# ---------------------------------------------------------------------------------------
# 10.lsh_candidates

def _lsh(signatures, bands, rows, *, interleaved=False, all_bands=False, both=False):
    N = signatures.shape[0]
    cols = [list(range(band, bands * rows, bands)) if interleaved
            else list(range(band * rows, (band + 1) * rows)) for band in range(bands)]
    sig = signatures.tolist()
    pairs = []
    for i in range(N):
        for j in range(N):
            if i == j or (j < i and not both):
                continue
            hits = [all(sig[i][c] == sig[j][c] for c in cs) for cs in cols]
            if (all(hits) if all_bands else any(hits)):
                pairs.append((i, j))
    return torch.tensor(pairs, dtype=torch.int64).reshape(-1, 2)


def _signatures(g, N, k, alphabet):
    """Signatures over a small alphabet (so bands collide), with a few near-copies."""
    sig = torch.randint(0, alphabet, (N, k), generator=g)
    for i in range(1, N, 3):
        mask = torch.rand(k, generator=g) < 0.3
        sig[i] = torch.where(mask, sig[i - 1], sig[i])
    return sig


@register
class LshCandidates(Exercise):
    """Candidate pairs from LSH banding."""
    id = "10.lsh_candidates"
    entry = "lsh_candidate_pairs"
    forbid = NO_LIBRARIES
    mistakes = (
        Mistake("bands interleaved", "band b is the CONTIGUOUS slice signatures[:, b*rows:(b+1)*rows] "
                "(as datasketch's MinHashLSH), not every bands-th column.", knob(_lsh, interleaved=True)),
        Mistake("all bands must agree", "a pair is a candidate when ANY one band is equal (OR over "
                "bands); requiring every band (AND) misses almost all near duplicates.",
                knob(_lsh, all_bands=True)),
        Mistake("pairs listed in both orders", "return each pair once, as (i, j) with i < j, "
                "sorted.", knob(_lsh, both=True)),
    )

    def reference(self, signatures, bands, rows):
        return ref.lsh_candidate_pairs(signatures, bands, rows)

    call = calls.int64_pairs

    def cases(self, seed, hidden):
        g = generator(seed)
        cases = [
            Case("12 signatures, 4 bands of 2 rows", (_signatures(g, 12, 8, 3), 4, 2)),
            Case("10 signatures, 3 bands of 3 rows, k = 9", (_signatures(g, 10, 9, 2), 3, 3)),
            Case("2 bands of 4 rows on 16 entries (the rest unused)", (_signatures(g, 15, 16, 2), 2, 4)),
        ]
        if hidden:
            cases += [
                Case("30 signatures, 8 bands of 2 rows", (_signatures(g, 30, 16, 4), 8, 2)),
                Case("no candidate at all", (torch.arange(24).reshape(4, 6) * 10, 3, 2)),
                Case("one band of 5 rows", (_signatures(g, 14, 5, 2), 1, 5)),
            ]
        return cases


# ---------------------------------------------------------------------------------------
# 10.contamination

def _contaminated(eval_docs, train_docs, n=13, *, across=False, punct=False, case=False, chars=False):
    def toks(d):
        if chars:
            return list(d.lower())
        if punct:
            return d.lower().split()
        return ref._WORD.findall(d) if case else ref.words(d)
    train = set()
    if across:
        train = ref.ngrams([t for d in train_docs for t in toks(d)], n)
    else:
        for d in train_docs:
            train |= ref.ngrams(toks(d), n)
    return torch.tensor([bool(ref.ngrams(toks(d), n) & train) for d in eval_docs], dtype=torch.bool)


_FAKE = ("alpha beta gamma delta omega sigma kappa zeta theta lambda rho tau phi chi psi eta iota mu nu xi "
         "pi upsilon").split()


def _text(rng, n_words):
    return " ".join(rng.choice(_FAKE) for _ in range(n_words))


@register
class Contamination(Exercise):
    """The GPT-3 13-gram contamination rule."""
    id = "10.contamination"
    entry = "contaminated"
    mistakes = (
        Mistake("n-grams across training documents", "collect the n-grams of EACH training document; "
                "joining the corpus creates n-grams that span two documents and exist in neither.",
                knob(_contaminated, across=True)),
        Mistake("punctuation kept in the words", "words are the lower-cased runs of letters and "
                "digits (re.findall(r'[a-z0-9]+', doc.lower())): 'time,' and 'time' are one word.",
                knob(_contaminated, punct=True)),
        Mistake("case-sensitive words", "lower-case the text first: 'Once' and 'once' are one word.",
                knob(_contaminated, case=True)),
        Mistake("character n-grams", "the rule counts WORD n-grams (13 words), not 13 characters.",
                knob(_contaminated, chars=True)),
    )

    def reference(self, eval_docs, train_docs, n=13):
        return ref.contaminated(eval_docs, train_docs, n)

    call = calls.bool_list

    def cases(self, seed, hidden):
        rng = random.Random(seed)
        train = [_text(rng, rng.randint(20, 40)) + "." for _ in range(6)]
        a, b = train[0].rstrip(".").split(), train[1].rstrip(".").split()
        spans = " ".join(a[-7:] + b[:6])  # 13 words only found across documents 0 and 1
        fresh = [_text(rng, 25) for _ in range(3)]
        copied = " ".join(train[2].split()[3:19])
        cases = [
            Case("a copied passage and fresh text", ([fresh[0], "intro " + copied + " outro", fresh[1]], train)),
            Case("13 words spanning two training documents", ([spans, fresh[2]], train)),
            Case("a copy with other punctuation", ([copied.replace(" ", ", ", 5), fresh[0]], train)),
            Case("a copy in upper case", ([copied.upper(), fresh[1]], train)),
            Case("short n = 4, a 20-character overlap inside words", (["alphabeta gammadelta", "omega sigma"],
                                                                       ["zalphabeta gammadeltaz"]), {"n": 4}),
        ]
        if hidden:
            real = documents(40, seed)
            ev = documents(10, seed + 1) + real[3:6]
            cases += [
                Case("language documents, three of them copied", (ev, real)),
                Case("an evaluation document shorter than n", ([" ".join(a[:5])], train)),
                Case("n = 8", ([" ".join(b[2:11]), fresh[2]], train), {"n": 8}),
            ]
        return cases


# ---------------------------------------------------------------------------------------
# 10.exposure

def _exposure(canary_nll, space_nll, *, zero_based=False, natural=False, ties=False, reverse=False):
    if reverse:
        ahead = (space_nll > canary_nll[:, None]).sum(-1)
    elif ties:
        ahead = (space_nll <= canary_nll[:, None]).sum(-1)
    else:
        ahead = (space_nll < canary_nll[:, None]).sum(-1)
    rank = ahead.double() + (0 if zero_based else 1)
    log = torch.log if natural else torch.log2
    return (math.log(space_nll.shape[-1]) if natural else math.log2(space_nll.shape[-1])) - log(rank)


def _space(g, C, R, dtype=F32, planted=(0.0, 0.5, 0.9), integer=False):
    space = torch.rand(C, R, generator=g, dtype=F64) * 10 + 20
    if integer:
        space = space.round()
    canary = torch.empty(C, dtype=F64)
    for c in range(C):
        j = int(torch.randint(0, R, (1,), generator=g))
        q = planted[c % len(planted)]
        canary[c] = space[c].sort().values[int(q * (R - 1))]
        space[c, j] = canary[c]
    return canary.to(dtype), space.to(dtype)


@register
class Exposure(Exercise):
    """Exposure of canaries (Carlini et al. 2019)."""
    id = "10.exposure"
    entry = "exposure"
    mistakes = (
        Mistake("rank counted from 0", "rank 1 is the best: rank = 1 + the number of candidates "
                "with a LOWER NLL; from 0 the most exposed canary gets log2(0).",
                knob(_exposure, zero_based=True)),
        Mistake("natural log instead of log2", "exposure is measured in bits: log2 |R| - log2 rank.",
                knob(_exposure, natural=True)),
        Mistake("ties and the canary itself counted ahead", "count only candidates with a strictly "
                "LOWER NLL (<): the canary itself, and ties, do not push it down.", knob(_exposure, ties=True)),
        Mistake("ranked by the highest NLL first", "rank by NLL from the LOWEST (the model's "
                "favourite) up: a memorised canary has a low NLL.", knob(_exposure, reverse=True)),
    )

    def reference(self, canary_nll, space_nll):
        return mem.exposure(canary_nll, space_nll)

    def cases(self, seed, hidden):
        g = generator(seed)
        cases = [
            Case("3 canaries, 1000 candidates each", _space(g, 3, 1000)),
            Case("a canary the model prefers to all others", _space(g, 2, 64, planted=(0.0,))),
            Case("integer NLLs with ties", _space(g, 3, 50, integer=True, planted=(0.2, 0.5, 0.7))),
        ]
        if hidden:
            cases += [
                Case("float64, 5 canaries, 4096 candidates", _space(g, 5, 4096, F64)),
                Case("one canary, a space of 10", _space(g, 1, 10, planted=(0.6,))),
                Case("the worst candidate", _space(g, 2, 100, planted=(1.0,))),
            ]
        return cases


# ---------------------------------------------------------------------------------------
# 10.roc_auc

def _auc(scores, labels, *, reverse=False, tie=0.5):
    pos, neg = scores[labels.bool()].double(), scores[~labels.bool()].double()
    d = pos[:, None] - neg[None, :]
    wins = (d > 0).double() + tie * (d == 0).double()
    auc = wins.mean().item()
    return 1.0 - auc if reverse else auc


def _members(g, n, shift=0.5, dtype=F32, rounded=False):
    labels = torch.rand(n, generator=g) < 0.5
    labels[0], labels[1] = True, False
    s = torch.randn(n, generator=g, dtype=F64) + shift * labels.double()
    s = s.round() if rounded else s
    return s.to(dtype), labels


@register
class RocAuc(Exercise):
    """ROC AUC by ranks, ties counting one half."""
    id = "10.roc_auc"
    entry = "roc_auc"
    forbid = NO_LIBRARIES
    mistakes = (
        Mistake("orientation reversed", "a HIGHER score means 'member': the AUC is the probability "
                "that a member outscores a non-member (you returned 1 - AUC).", knob(_auc, reverse=True)),
        Mistake("ties counted as wins", "a tie between a member and a non-member counts one half.",
                knob(_auc, tie=1.0)),
        Mistake("ties counted as losses", "a tie between a member and a non-member counts one half "
                "(average the ranks of tied scores).", knob(_auc, tie=0.0)),
    )

    def reference(self, scores, labels):
        return mem.roc_auc(scores, labels)

    call = calls.scalar

    def cases(self, seed, hidden):
        g = generator(seed)
        cases = [
            Case("100 examples, members score higher", _members(g, 100)),
            Case("rounded scores: many ties", _members(g, 60, rounded=True)),
            Case("perfect separation", (torch.tensor([0.9, 0.8, 0.2, 0.1]), torch.tensor([1, 1, 0, 0]).bool())),
        ]
        if hidden:
            cases += [
                Case("float64, 500 examples, weak signal", _members(g, 500, 0.1, F64)),
                Case("every score equal: 0.5", (torch.zeros(6), torch.tensor([1, 0, 1, 0, 0, 1]).bool())),
                Case("labels as 0/1 integers, ties", (_members(g, 40, rounded=True)[0],
                                                      _members(g, 40)[1].long())),
            ]
        return cases

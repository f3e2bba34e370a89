"""Chapter 10: data quality (数据质量): exact and near deduplication, test-set contamination.

Conventions (the book states them the same way):

* ``normalise(doc)``: lower case, runs of whitespace collapsed to one space, stripped at both
  ends. Exact deduplication keeps the FIRST document of each normalised text (compared by
  its SHA-256), and returns the kept indices in order.
* Shingles: the set of word ``k``-grams of a document (words = ``normalise(doc).split()``),
  each hashed to 32 bits like ``datasketch``'s ``sha1_hash32``: the first 4 bytes of the SHA-1
  of the UTF-8 text, little-endian.
* MinHash with ``k`` permutations ``h -> ((a_i h + b_i) mod P) & (2^32 - 1)``, ``P = 2^61 - 1``
  (``datasketch``'s "legacy" scheme): the signature holds, per permutation, the minimum over the
  shingles; an empty set gives ``2^32 - 1`` everywhere. The fraction of equal entries of two
  signatures estimates their Jaccard similarity. With ``a_i, b_i < 2^31`` every product fits
  int64, and the signature equals datasketch's bit for bit (verified in the tests).
* LSH banding: ``bands`` contiguous slices of ``rows`` entries; two documents are a candidate
  pair when ANY band is equal. Pairs are ``(i, j)``, ``i < j``, sorted.
* Contamination (the GPT-3 paper's rule, Brown et al. 2020, appendix C): words are the
  lower-cased runs of letters and digits (punctuation dropped); an evaluation document is
  contaminated when any of its word ``n``-grams (``n = 13``) occurs in a training document.
  N-grams never span two training documents; an evaluation document shorter than ``n`` words
  is never flagged.
"""

from __future__ import annotations

import hashlib
import re
import struct

import torch

MERSENNE = (1 << 61) - 1
MAX_HASH = (1 << 32) - 1
_WORD = re.compile(r"[a-z0-9]+")


def normalise(doc: str) -> str:
    return " ".join(doc.lower().split())


def exact_dedup(docs: list[str]) -> torch.Tensor:
    """int64 indices of the documents kept (the first of each normalised text), in order."""
    seen, keep = set(), []
    for i, doc in enumerate(docs):
        h = hashlib.sha256(normalise(doc).encode("utf-8")).digest()
        if h not in seen:
            seen.add(h)
            keep.append(i)
    return torch.tensor(keep, dtype=torch.int64)


def sha1_hash32(data: bytes) -> int:
    """datasketch's default 32-bit hash."""
    return struct.unpack("<I", hashlib.sha1(data).digest()[:4])[0]


def shingles(doc: str, k: int = 3) -> set[str]:
    words = normalise(doc).split()
    return {" ".join(words[i:i + k]) for i in range(len(words) - k + 1)}


def shingle_hashes(doc: str, k: int = 3) -> torch.Tensor:
    """int64 ``(n,)`` sorted 32-bit hashes of the document's word k-gram shingles."""
    return torch.tensor(sorted({sha1_hash32(s.encode("utf-8")) for s in shingles(doc, k)}),
                        dtype=torch.int64)


def permutations(num_perm: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """``(a, b)`` int64 ``(num_perm,)``: ``a`` in [1, 2^31), ``b`` in [0, 2^31), seeded."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(1, 1 << 31, (num_perm,), generator=g, dtype=torch.int64)
    b = torch.randint(0, 1 << 31, (num_perm,), generator=g, dtype=torch.int64)
    return a, b


def minhash(hashes: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """int64 ``(k,)`` MinHash signature of a set given by its 32-bit ``hashes`` ``(n,)``."""
    if hashes.numel() == 0:
        return torch.full_like(a, MAX_HASH)
    perm = ((hashes[None, :] * a[:, None] + b[:, None]) % MERSENNE) & MAX_HASH  # (k, n)
    return perm.amin(dim=1)


def jaccard(x: set, y: set) -> float:
    return len(x & y) / len(x | y) if (x or y) else 1.0


def estimated_jaccard(sig_x: torch.Tensor, sig_y: torch.Tensor) -> float:
    return (sig_x == sig_y).double().mean().item()


def lsh_candidate_pairs(signatures: torch.Tensor, bands: int, rows: int) -> torch.Tensor:
    """int64 ``(P, 2)``: every pair ``i < j`` of rows of ``signatures`` ``(N, k)`` (``k >=
    bands * rows``) equal on at least one band, sorted."""
    pairs = set()
    for band in range(bands):
        buckets: dict[tuple, list[int]] = {}
        for i, row in enumerate(signatures[:, band * rows:(band + 1) * rows].tolist()):
            buckets.setdefault(tuple(row), []).append(i)
        for ids in buckets.values():
            pairs.update((x, y) for n, x in enumerate(ids) for y in ids[n + 1:])
    return torch.tensor(sorted(pairs), dtype=torch.int64).reshape(-1, 2)


def candidate_probability(s: float, bands: int, rows: int) -> float:
    """Probability that two documents of Jaccard similarity ``s`` become candidates."""
    return 1.0 - (1.0 - s ** rows) ** bands


def words(doc: str) -> list[str]:
    return _WORD.findall(doc.lower())


def ngrams(tokens: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


def contaminated(eval_docs: list[str], train_docs: list[str], n: int = 13) -> torch.Tensor:
    """bool ``(len(eval_docs),)``: does an evaluation document share a word n-gram with any
    training document?"""
    train = set()
    for doc in train_docs:
        train |= ngrams(words(doc), n)
    return torch.tensor([bool(ngrams(words(doc), n) & train) for doc in eval_docs], dtype=torch.bool)

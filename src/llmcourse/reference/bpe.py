"""Chapter 01: byte-level byte-pair encoding (BPE), as in GPT-2.

Text is split into chunks by :data:`PATTERN` (words with their leading space, numbers,
punctuation runs, whitespace), each chunk becomes its UTF-8 bytes (token ids 0..255), and
merges never cross a chunk boundary. Merge ``r`` (0-based) replaces the adjacent pair
``merges[r] = (a, b)`` by the new id ``256 + r``.

- Training repeatedly merges the most frequent adjacent pair over all chunks (each chunk
  weighted by how often it occurs); ties go to the smallest pair ``(a, b)``.
- Encoding applies, inside each chunk, the lowest-ranked merge present until none applies.
- Decoding concatenates the bytes of the tokens and decodes UTF-8 with ``errors="replace"``
  (a token sequence may end inside a multi-byte character).

Any string without lone surrogates round-trips: ``decode(encode(s, m), m) == s``.
"""

from __future__ import annotations

import heapq
import re
from collections import Counter, defaultdict
from functools import lru_cache

# GPT-2's pre-tokenizer written for Python's `re` (no \p{L}): letters are [^\W\d_],
# numbers \d, and everything else that is not whitespace (underscore included) is
# punctuation, so every character of every string belongs to exactly one chunk.
PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+"""
_CHUNKS = re.compile(PATTERN)

Pair = tuple[int, int]


def pretokenize(text: str) -> list[str]:
    """Split ``text`` into chunks; ``"".join(pretokenize(text)) == text``."""
    return _CHUNKS.findall(text)


def merge(ids: list[int], pair: Pair, new_id: int) -> list[int]:
    """Replace each occurrence of ``pair`` in ``ids``, left to right and without overlap,
    by ``new_id``: ``merge([1, 1, 1], (1, 1), 9) == [9, 1]``."""
    out, i = [], 0
    a, b = pair
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == a and ids[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def train(text: str, num_merges: int) -> list[Pair]:
    """Learn up to ``num_merges`` merges from ``text`` (fewer if no pair is left).

    Counts pairs once, then after each merge updates only the chunks that contained the
    merged pair; a heap with lazy deletion finds the most frequent pair.
    """
    chunk_counts = Counter(pretokenize(text))
    words = [list(chunk.encode("utf-8")) for chunk in chunk_counts]
    freqs = list(chunk_counts.values())
    counts: defaultdict[Pair, int] = defaultdict(int)
    where: defaultdict[Pair, set[int]] = defaultdict(set)
    for w, (word, f) in enumerate(zip(words, freqs)):
        for pair in zip(word, word[1:]):
            counts[pair] += f
            where[pair].add(w)
    heap = [(-c, pair) for pair, c in counts.items()]
    heapq.heapify(heap)
    merges: list[Pair] = []
    while len(merges) < num_merges and heap:
        neg, pair = heapq.heappop(heap)
        if counts.get(pair, 0) != -neg:
            continue  # stale entry: the count changed since it was pushed
        new_id = 256 + len(merges)
        merges.append(pair)
        changed: set[Pair] = set()
        for w in where.pop(pair):
            word, f = words[w], freqs[w]
            merged = merge(word, pair, new_id)
            if len(merged) == len(word):
                continue
            for p in zip(word, word[1:]):
                counts[p] -= f
                changed.add(p)
            for p in zip(merged, merged[1:]):
                counts[p] += f
                where[p].add(w)
                changed.add(p)
            words[w] = merged
        for p in changed:
            if counts[p] > 0:
                heapq.heappush(heap, (-counts[p], p))
            else:
                del counts[p]
    return merges


class Codec:
    """Encoder/decoder for a fixed list of merges (caches the encoding of each chunk)."""

    def __init__(self, merges: list[Pair]):
        self.merges = [(int(a), int(b)) for a, b in merges]
        self.ranks = {pair: r for r, pair in enumerate(self.merges)}
        self.vocab = vocab(self.merges)
        self._encode_chunk = lru_cache(maxsize=1 << 16)(self._encode_chunk_uncached)

    def _encode_chunk_uncached(self, chunk: str) -> tuple[int, ...]:
        ids = list(chunk.encode("utf-8"))
        while len(ids) > 1:
            rank, pair = min((self.ranks.get(p, len(self.ranks)), p) for p in zip(ids, ids[1:]))
            if rank == len(self.ranks):
                break
            ids = merge(ids, pair, 256 + rank)
        return tuple(ids)

    def encode(self, text: str) -> list[int]:
        return [i for chunk in pretokenize(text) for i in self._encode_chunk(chunk)]

    def decode(self, ids: list[int]) -> str:
        return b"".join(self.vocab[int(i)] for i in ids).decode("utf-8", errors="replace")


def vocab(merges: list[Pair]) -> list[bytes]:
    """The bytes of every token id: 0..255 are single bytes, 256 + r is merge r's pair."""
    table = [bytes([i]) for i in range(256)]
    for a, b in merges:
        table.append(table[a] + table[b])
    return table


def encode(text: str, merges: list[Pair]) -> list[int]:
    """Token ids of ``text`` under ``merges``."""
    return Codec(merges).encode(text)


def decode(ids: list[int], merges: list[Pair]) -> str:
    """Text of token ``ids``; bytes that are not valid UTF-8 become U+FFFD."""
    return Codec(merges).decode(ids)


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from each byte to a printable character (how Hugging Face stores bytes)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def to_huggingface(merges: list[Pair]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab, merges) in the string form of Hugging Face ``tokenizers.models.BPE``."""
    table = bytes_to_unicode()
    strings = ["".join(table[b] for b in token) for token in vocab(merges)]
    return ({s: i for i, s in enumerate(strings)},
            [(strings[a], strings[b]) for a, b in merges])

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

import bisect
import gc
import heapq
import itertools
import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from functools import lru_cache
from pathlib import Path

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


def split_specials(text: str, special_tokens=()) -> list[str]:
    """Split ``text`` into pieces that are either exactly one special token or plain text.

    At each position the LONGEST special token that matches wins (``"<|a|><|b|>"`` before
    ``"<|a|>"`` when both are specials); plain pieces are never empty.
    """
    if not special_tokens:
        return [text] if text else []
    return [piece for piece in _special_regex(tuple(special_tokens)).split(text) if piece]


@lru_cache(maxsize=64)
def _special_regex(special_tokens: tuple[str, ...]) -> re.Pattern:
    ordered = sorted(set(special_tokens), key=lambda s: (-len(s), s))  # longest first
    return re.compile("(" + "|".join(map(re.escape, ordered)) + ")")


def _chunk_counts(text: str, special_tokens=()) -> Counter:
    """How often each chunk occurs; special tokens are cut out, so no chunk contains or
    crosses one (they are never split and never merged)."""
    specials = set(special_tokens)
    counts: Counter = Counter()
    for piece in split_specials(text, special_tokens):
        if piece not in specials:
            counts.update(pretokenize(piece))
    return counts


def train(text: str, num_merges: int, special_tokens=()) -> list[Pair]:
    """Learn up to ``num_merges`` merges from ``text`` (fewer if no pair is left).

    The most frequent adjacent pair (over all chunks, each weighted by how often it occurs)
    is merged next; **ties go to the smallest pair** ``(a, b)``. ``special_tokens`` (e.g.
    ``"<|endoftext|>"``) are removed from the text before counting: no merge is learned from
    them or across them.

    Counts pairs once, then after each merge updates only the chunks that contained the
    merged pair, and only by the net change of each pair; a heap with lazy deletion finds
    the most frequent pair. Python's cyclic garbage collector is paused meanwhile: the loop
    makes millions of small lists and tuples but no reference cycles, and the collector's
    passes over them cost about 15% of the time (``make bench``, section 9).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _train(text, num_merges, special_tokens)
    finally:
        if enabled:
            gc.enable()


def _train(text: str, num_merges: int, special_tokens) -> list[Pair]:
    chunk_counts = _chunk_counts(text, special_tokens)
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
        delta: defaultdict[Pair, int] = defaultdict(int)
        for w in where.pop(pair):
            added: list[Pair] = []  # the word's new pairs; it is listed for all the others
            merged = _merge_counting(words[w], pair, new_id, freqs[w], delta, added)
            if merged is not None:
                words[w] = merged
                for p in added:
                    where[p].add(w)
        for p, d in delta.items():
            if d:
                c = counts[p] = counts[p] + d
                if c > 0:
                    heapq.heappush(heap, (-c, p))
                else:
                    del counts[p]
    return merges


def _merge_counting(word: list[int], pair: Pair, new_id: int, f: int,
                    delta: defaultdict[Pair, int], added: list[Pair]) -> list[int] | None:
    """:func:`merge` that also adds to ``delta`` the change of every pair count (``f`` per
    occurrence), looking only at the neighbours of each merged position, and appends the new
    pairs to ``added``; None if no match.

    At a match (a, b) -> N between ``left`` and ``right``: (a, b) disappears, (left, a)
    becomes (left, N) and (b, right) becomes (N, right). When ``left`` is itself a new N, the
    old pair there was (b, a)."""
    a, b = pair
    out: list[int] = []
    i, n = 0, len(word)
    while i < n:
        if i + 1 < n and word[i] == a and word[i + 1] == b:
            delta[pair] -= f
            if out:
                left = out[-1]
                delta[(b if left == new_id else left, a)] -= f
                delta[(left, new_id)] += f
                added.append((left, new_id))
            if i + 2 < n and not (i + 3 < n and word[i + 2] == a and word[i + 3] == b):
                right = word[i + 2]
                delta[(b, right)] -= f
                delta[(new_id, right)] += f
                added.append((new_id, right))
            out.append(new_id)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out if len(out) < n else None


class Codec:
    """Encoder/decoder for a fixed list of merges and special tokens.

    Internally token ``i < 256`` is byte ``i`` and ``256 + r`` is merge ``r``; special token
    ``k`` gets ``256 + len(merges) + k`` unless ``special_tokens`` is a dict ``{token: id}``.
    ``ids`` (optional, one per internal id) renumbers the output, as GPT-2's files do (its
    ids 0..255 are the bytes in :func:`bytes_to_unicode` order). ``pattern`` is the
    pre-tokenizer (a compiled pattern or a string for ``re``). Caches each chunk's encoding.
    """

    def __init__(self, merges: list[Pair], special_tokens=(), *, ids=None, pattern=None):
        self.merges = [(int(a), int(b)) for a, b in merges]
        self.ranks = {pair: r for r, pair in enumerate(self.merges)}
        self.vocab = vocab(self.merges)
        n = len(self.vocab)
        if not isinstance(special_tokens, dict):
            special_tokens = {s: n + k for k, s in enumerate(dict.fromkeys(special_tokens))}
        self.special_tokens = {str(s): int(i) for s, i in special_tokens.items()}
        self.ids = list(range(n)) if ids is None else [int(i) for i in ids]
        self._bytes = {i: self.vocab[k] for k, i in enumerate(self.ids)}
        self._bytes.update({i: s.encode("utf-8") for s, i in self.special_tokens.items()})
        if len(self._bytes) != n + len(self.special_tokens):
            raise ValueError("token ids must be distinct")
        self._regex = re.compile(pattern) if isinstance(pattern, str) else (pattern or _CHUNKS)
        self._encode_chunk = lru_cache(maxsize=1 << 16)(self._encode_chunk_uncached)

    def _encode_chunk_uncached(self, chunk: str) -> tuple[int, ...]:
        ids = list(chunk.encode("utf-8"))
        while len(ids) > 1:
            rank, pair = min((self.ranks.get(p, len(self.ranks)), p) for p in zip(ids, ids[1:]))
            if rank == len(self.ranks):
                break
            ids = merge(ids, pair, 256 + rank)
        return tuple(self.ids[i] for i in ids)

    def _pieces(self, text: str) -> list[str]:
        """Special tokens (longest first) and the chunks of the text between them."""
        out = []
        for piece in split_specials(text, tuple(self.special_tokens)):
            out += [piece] if piece in self.special_tokens else self._regex.findall(piece)
        return out

    def _encode_pieces(self, pieces) -> list[int]:
        special, chunk = self.special_tokens, self._encode_chunk
        return [i for piece in pieces
                for i in ((special[piece],) if piece in special else chunk(piece))]

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; a special token in the text is its own id, never split."""
        return self._encode_pieces(self._pieces(text))

    def encode_iterable(self, texts: Iterable[str]) -> Iterator[int]:
        """Token ids of ``"".join(texts)``, yielded as the text streams in (e.g. an open file,
        line by line): the same ids as :meth:`encode`, in memory bounded by the longest chunk.

        The last piece of what has been read so far is held back (the next text may extend
        it: a word, a run of spaces, a longer special token), and so is any tail that could
        be the start of a special token.
        """
        longest = max(map(len, self.special_tokens), default=0)
        buffer = ""
        for text in texts:
            buffer += text
            pieces = self._pieces(buffer)
            if len(pieces) < 2:
                continue
            starts = list(itertools.accumulate(map(len, pieces[:-1]), initial=0))
            cut = starts[-1]
            for k in range(max(0, len(buffer) - longest + 1), len(buffer)):
                if any(s.startswith(buffer[k:]) for s in self.special_tokens):
                    cut = min(cut, starts[bisect.bisect_right(starts, k) - 1])
                    break
            if cut > 0:
                yield from self._encode_pieces(pieces[:starts.index(cut)])
                buffer = buffer[cut:]
        yield from self.encode(buffer)

    def decode(self, ids: list[int]) -> str:
        return b"".join(self._bytes[int(i)] for i in ids).decode("utf-8", errors="replace")

    # -- GPT-2's file layout ------------------------------------------------------------------

    def save(self, directory) -> tuple[Path, Path]:
        """Write ``vocab.json`` ({token string: id}, bytes mapped by :func:`bytes_to_unicode`,
        special tokens as themselves) and ``merges.txt`` (``#version: 0.2`` then one merge
        ``"left right"`` per line, in rank order), the files GPT-2 ships."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        table = bytes_to_unicode()
        strings = ["".join(table[b] for b in token) for token in self.vocab]
        vocab_json = {s: self.ids[k] for k, s in enumerate(strings)}
        vocab_json.update(self.special_tokens)
        paths = directory / "vocab.json", directory / "merges.txt"
        paths[0].write_text(json.dumps(vocab_json, ensure_ascii=False), encoding="utf-8")
        paths[1].write_text("#version: 0.2\n" + "".join(
            f"{strings[a]} {strings[b]}\n" for a, b in self.merges), encoding="utf-8")
        return paths

    @classmethod
    def load(cls, vocab_file, merges_file, special_tokens=("<|endoftext|>",), pattern=None) -> "Codec":
        """Read ``vocab.json`` + ``merges.txt`` (ours, or GPT-2's own: pass
        ``pattern=GPT2_PATTERN`` for GPT-2's exact pre-tokenizer). The ids are those of the
        file; each of ``special_tokens`` found in the vocabulary keeps its id there."""
        vocab_json = json.loads(Path(vocab_file).read_text(encoding="utf-8"))
        inverse = {c: b for b, c in bytes_to_unicode().items()}
        lines = Path(merges_file).read_text(encoding="utf-8").splitlines()
        internal = {bytes([b]): b for b in range(256)}  # token bytes -> internal id
        merges = []
        for line in lines:
            if not line or line.startswith("#version"):
                continue
            left, right = (bytes(inverse[c] for c in part) for part in line.split(" "))
            merges.append((internal[left], internal[right]))
            internal[left + right] = 255 + len(merges)
        table = vocab(merges)
        by_string = {bytes(inverse[c] for c in s): i for s, i in vocab_json.items()
                     if s not in special_tokens and all(c in inverse for c in s)}
        ids = [by_string[token] for token in table]
        specials = {s: vocab_json[s] for s in special_tokens if s in vocab_json}
        return cls(merges, specials, ids=ids, pattern=pattern)


# GPT-2's own pre-tokenizer (needs the third-party `regex` module for \p{L} and \p{N}).
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def gpt2_regex():
    """GPT-2's pre-tokenizer compiled with ``regex`` (a dependency of ``transformers``)."""
    import regex

    return regex.compile(GPT2_PATTERN)


def vocab(merges: list[Pair]) -> list[bytes]:
    """The bytes of every token id: 0..255 are single bytes, 256 + r is merge r's pair."""
    table = [bytes([i]) for i in range(256)]
    for a, b in merges:
        table.append(table[a] + table[b])
    return table


def encode(text: str, merges: list[Pair], special_tokens=()) -> list[int]:
    """Token ids of ``text`` under ``merges``; special tokens get ``256 + len(merges) + k``."""
    return Codec(merges, special_tokens).encode(text)


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

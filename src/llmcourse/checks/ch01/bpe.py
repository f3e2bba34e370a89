"""bpe.ipynb: byte-level BPE (merge one pair, train merges, encode, decode).

The exercises take and return plain Python lists; their ``call`` turns list outputs into
int64 tensors (and decoded text into its code points) so that the grader can compare them
as arrays.
"""

from __future__ import annotations

import torch

from ...data import corpus
from ...reference import bpe as ref_bpe
from .. import calls, register
from ..core import Case, Exercise, Mistake, Rule
from ..kit import generator


NO_TOKENIZER_LIBRARIES = tuple(
    Rule(lib, "write BPE yourself instead of calling a tokenizer library")
    for lib in ("tokenizers", "tiktoken", "transformers", "sentencepiece"))


# -- BPE -----------------------------------------------------------------------------------

class _ListExercise(Exercise):
    """Learners return Python lists (or str); compare them as int64 tensors."""

    call = calls.bpe_lists


def _merge_overlapping(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids):
        out.append(new_id if tuple(ids[i:i + 2]) == tuple(pair) else ids[i])
        i += 1
    return out


def _merge_first_only(ids, pair, new_id):
    for i in range(len(ids) - 1):
        if (ids[i], ids[i + 1]) == tuple(pair):
            return list(ids[:i]) + [new_id] + list(ids[i + 2:])
    return list(ids)


def _merge_right_to_left(ids, pair, new_id):
    return ref_bpe.merge(list(ids)[::-1], tuple(pair)[::-1], new_id)[::-1]


def _merge_drops_last(ids, pair, new_id):
    # `while i < len(ids) - 1:` never copies a last token that was not merged
    out = ref_bpe.merge(list(ids), tuple(pair), new_id)
    return out if out[-1:] == [new_id] else out[:-1]


@register
class BpeMerge(_ListExercise):
    """Replace one pair by a new token."""
    id = "01.bpe_merge"
    entry = "bpe_merge"
    forbid = NO_TOKENIZER_LIBRARIES
    mistakes = (
        Mistake("overlapping occurrences merged", "after a match, jump over BOTH tokens (i += 2): "
                "[5, 5, 5] with (5, 5) gives [new, 5].", _merge_overlapping),
        Mistake("only the first occurrence replaced", "replace every occurrence, scanning left to "
                "right.", _merge_first_only),
        Mistake("scans right to left", "scan left to right: [5, 5, 5] with (5, 5) gives "
                "[new, 5], not [5, new].", _merge_right_to_left),
        Mistake("drops the last token", "when the loop stops before the end, the last token must "
                "still be copied.", _merge_drops_last),
    )

    def reference(self, ids, pair, new_id):
        return ref_bpe.merge(list(ids), tuple(pair), new_id)

    def cases(self, seed, hidden):
        g = generator(seed)
        cases = [
            Case("two occurrences", ([1, 2, 3, 1, 2], (1, 2), 256)),
            Case("a run of equal tokens", ([5, 5, 5, 5, 5], (5, 5), 300)),
            Case("pair absent", ([3, 1, 4, 1, 5], (1, 3), 256)),
            Case("empty list", ([], (1, 2), 256)),
        ]
        if hidden:
            cases += [
                Case("pair at the very end", ([9, 8, 7, 1, 2], (1, 2), 257)),
                Case("random ids", (torch.randint(0, 3, (40,), generator=g).tolist(), (1, 2), 258)),
                Case("three equal tokens", ([7, 7, 7], (7, 7), 259)),
                Case("single token", ([7], (7, 7), 260)),
            ]
        return cases


def _naive_train(text, num_merges, *, chunked=True, weighted=True, first_seen=False):
    """Full recount per merge, with switches that reproduce known mistakes."""
    from collections import Counter

    chunks = Counter(ref_bpe.pretokenize(text) if chunked else [text])
    words = {c: list(c.encode("utf-8")) for c in chunks}
    merges = []
    while len(merges) < num_merges:
        counts: dict = {}
        for c, ids in words.items():
            for p in zip(ids, ids[1:]):
                counts[p] = counts.get(p, 0) + (chunks[c] if weighted else 1)
        if not counts:
            break
        best = (max(counts, key=counts.get) if first_seen
                else min(counts, key=lambda p: (-counts[p], p)))
        merges.append(best)
        words = {c: ref_bpe.merge(ids, best, 255 + len(merges)) for c, ids in words.items()}
    return merges


_TEXTS = ("the cat sat on the mat; the cat ate the rat.", "我爱自然语言处理。我爱机器学习！",
          "emoji: 😀😀👍🏽 and café, déjà vu", "def f(x_1):\n    return x_1 + 42  # done\n\n")


def _training_text(seed: int, n_chars: int = 1500) -> str:
    return corpus(n_chars, seed=seed)[:n_chars] + "".join(_TEXTS) * 3


@register
class BpeTrain(_ListExercise):
    """Train byte-level BPE merges."""
    id = "01.bpe_train"
    entry = "bpe_train"
    uses = ("01.bpe_merge",)
    forbid = NO_TOKENIZER_LIBRARIES
    mistakes = (
        Mistake("merges across chunk boundaries", "split the text with the pre-tokenizer PATTERN "
                "first and count pairs inside each chunk only.",
                lambda text, num_merges: _naive_train(text, num_merges, chunked=False)),
        Mistake("ties broken by first occurrence", "among pairs with the same count take the "
                "smallest pair (a, b), e.g. min(counts, key=lambda p: (-counts[p], p)).",
                lambda text, num_merges: _naive_train(text, num_merges, first_seen=True)),
        Mistake("chunk frequencies ignored", "a chunk that occurs 10 times contributes its pairs "
                "10 times.", lambda text, num_merges: _naive_train(text, num_merges, weighted=False)),
    )

    def reference(self, text, num_merges):
        return ref_bpe.train(text, num_merges)

    def cases(self, seed, hidden):
        cases = [
            Case("classic example", ("aaabdaaabac", 3)),
            Case("English sentence", (_TEXTS[0], 8)),
            Case("Chinese (3-byte characters)", (_TEXTS[1], 10)),
            Case("runs out of pairs", ("ab ab", 5)),
        ]
        if hidden:
            cases += [
                Case("synthetic language", (corpus(2000, seed=seed)[:2000], 40)),
                Case("emoji and accents", (_TEXTS[2] * 2, 12)),
                Case("Python code", (_TEXTS[3] * 3, 15)),
                Case("everything mixed", (_training_text(seed), 60)),
            ]
        return cases


def _encode_whole(text, merges):
    return ref_bpe.Codec(merges)._encode_chunk_uncached(text) if text else []


def _encode_greedy(text, merges, by_frequency):
    ranks = {tuple(p): r for r, p in enumerate(merges)}
    out = []
    for chunk in ref_bpe.pretokenize(text):
        ids = list(chunk.encode("utf-8"))
        while True:
            pairs = [p for p in zip(ids, ids[1:]) if p in ranks]
            if not pairs:
                break
            pair = max(pairs, key=lambda p: (pairs.count(p), -ranks[p])) if by_frequency else pairs[0]
            ids = ref_bpe.merge(ids, pair, 256 + ranks[pair])
        out += ids
    return out


def _encode_code_points(text, merges):
    ids = [ord(ch) for ch in text]
    for r, pair in enumerate(merges):
        ids = ref_bpe.merge(ids, tuple(pair), 256 + r)
    return ids


def _bpe_cases(seed: int, hidden: bool, make) -> list[Case]:
    merges = ref_bpe.train(_training_text(0), 80)
    texts = ["the cat ate the mat", _TEXTS[1], "emoji: 👍🏽😀 café", ""]
    if hidden:
        merges_h = ref_bpe.train(_training_text(seed + 1, 3000), 150)
        texts_h = [corpus(400, seed=seed + 2), _TEXTS[3], "unseen: Ωμέγα ∑ 🦜🦜 and\t\ttabs  \n\n end",
                   "".join(_TEXTS)]
        return make(merges, texts) + make(merges_h, texts_h)
    return make(merges, texts)


@register
class BpeEncode(_ListExercise):
    """Encode text with BPE merges."""
    id = "01.bpe_encode"
    entry = "bpe_encode"
    uses = ("01.bpe_merge",)
    forbid = NO_TOKENIZER_LIBRARIES
    mistakes = (
        Mistake("merges across chunk boundaries", "pre-tokenize with PATTERN and encode each "
                "chunk on its own; merges never join two chunks.", _encode_whole),
        Mistake("merges chosen by frequency, not rank", "the order of merges is their rank in "
                "the list, not how often a pair occurs in the text being encoded.",
                lambda text, merges: _encode_greedy(text, merges, by_frequency=True)),
        Mistake("merges applied in text order, not rank order", "at each step apply the "
                "merge with the LOWEST rank present in the chunk, wherever it is.",
                lambda text, merges: _encode_greedy(text, merges, by_frequency=False)),
        Mistake("code points instead of UTF-8 bytes", "start from text.encode('utf-8'): "
                "byte-level BPE works on bytes 0..255, not on Unicode code points.",
                _encode_code_points),
    )

    def reference(self, text, merges):
        return ref_bpe.encode(text, merges)

    def cases(self, seed, hidden):
        cases = _bpe_cases(seed, hidden, lambda merges, texts: [
            Case(f"encode {text[:24]!r}", (text, merges)) for text in texts])
        # (b, c) has the lower rank; (a, b) comes first in "abc" and is more frequent in "abcab"
        return cases + [Case("rank beats text order", ("abc", [(98, 99), (97, 98)])),
                        Case("rank beats frequency", ("abcab abcab", [(98, 99), (97, 98)]))]


def _decoder(join_bytes):
    def decode(ids, merges):
        table = [bytes([i]) for i in range(256)]
        for a, b in merges:
            table.append(join_bytes(table, a, b))
        return b"".join(table[i] for i in ids)
    return decode


_plain, _swapped = _decoder(lambda t, a, b: t[a] + t[b]), _decoder(lambda t, a, b: t[b] + t[a])


@register
class BpeDecode(_ListExercise):
    """Decode BPE tokens to text."""
    id = "01.bpe_decode"
    entry = "bpe_decode"
    forbid = NO_TOKENIZER_LIBRARIES
    mistakes = (
        Mistake("strict UTF-8 decoding", "a token sequence can end inside a character: decode "
                "with errors='replace'.",
                lambda ids, merges: _plain(ids, merges).decode("utf-8")),
        Mistake("each token decoded separately", "join the bytes of ALL tokens first, then decode "
                "once: one character can span several tokens.",
                lambda ids, merges: "".join(_plain([i], merges).decode("utf-8", "replace") for i in ids)),
        Mistake("invalid bytes dropped", "errors='ignore' loses them silently; use "
                "errors='replace' (U+FFFD).",
                lambda ids, merges: _plain(ids, merges).decode("utf-8", "ignore")),
        Mistake("merged pair expanded in reverse order", "token 256 + r stands for the bytes of "
                "merges[r][0] FOLLOWED BY those of merges[r][1].",
                lambda ids, merges: _swapped(ids, merges).decode("utf-8", "replace")),
        Mistake("bytes read as Latin-1", "the bytes are UTF-8: .decode('utf-8', errors='replace').",
                lambda ids, merges: _plain(ids, merges).decode("latin-1")),
    )

    def reference(self, ids, merges):
        return ref_bpe.decode(ids, merges)

    def cases(self, seed, hidden):
        def make(merges, texts):
            cases = [Case(f"decode {t[:24]!r}", (ref_bpe.encode(t, merges), merges)) for t in texts]
            emoji = list("👍".encode("utf-8"))
            return cases + [
                Case("ends inside a character", (list("é".encode("utf-8"))[:1] + [104, 105], merges)),
                Case("an emoji cut in two", (emoji[:2] + [32] + emoji, merges)),
            ]
        return _bpe_cases(seed, hidden, make)


# -- special tokens ------------------------------------------------------------------------

def _split_with(order, escape=True, keep_empty=False, keep_specials=True, guard_empty=True):
    """A splitter with switches that reproduce known mistakes (order: specials -> order)."""
    import re

    def split(text, special_tokens):
        if guard_empty and not special_tokens:
            return [text] if text else []
        body = "|".join(re.escape(s) if escape else s for s in order(list(special_tokens)))
        pieces = re.split(f"({body})" if keep_specials else body, text)
        return pieces if keep_empty else [p for p in pieces if p]
    return split


def _longest_first(specials):
    return sorted(specials, key=len, reverse=True)


def _shortest_first(specials):
    return sorted(specials, key=len)


def _as_given(specials):
    return list(specials)


class _PiecesExercise(Exercise):
    """A list of strings, compared piece by piece as code points (length first)."""

    call = calls.bpe_pieces


_EOT, _EOT2, _IM = "<|endoftext|>", "<|endoftext|><|endoftext|>", "<|im_start|>"


@register
class BpeSplitSpecial(_PiecesExercise):
    """Cut special tokens out of a text, longest first."""
    id = "01.bpe_split_special"
    entry = "bpe_split_special"
    forbid = NO_TOKENIZER_LIBRARIES
    mistakes = (
        Mistake("special tokens dropped", "put the alternation in a capture group, "
                "re.split('(' + ... + ')', text): re.split then keeps the separators.",
                _split_with(_longest_first, keep_specials=False)),
        Mistake("empty pieces kept", "re.split returns '' between two adjacent special tokens "
                "and at the ends: drop the empty strings.", _split_with(_longest_first, keep_empty=True)),
        Mistake("shorter special token matched first", "sort the special tokens by length, "
                "longest first: '<|endoftext|><|endoftext|>' must not become two "
                "'<|endoftext|>'.", _split_with(_shortest_first)),
        Mistake("special tokens tried in the order given", "the order of the list must not "
                "matter: try the longest special token first.", _split_with(_as_given)),
        Mistake("regex characters not escaped", "'|', '[', '(' ... are regex syntax: join "
                "re.escape(s) for each special token.", _split_with(_longest_first, escape=False)),
        Mistake("no special tokens: split into characters", "with an empty list the pattern is "
                "'()', which matches everywhere: return [text] (or [] for '').",
                _split_with(_longest_first, guard_empty=False)),
    )

    def reference(self, text, special_tokens):
        return ref_bpe.split_specials(text, tuple(special_tokens))

    def cases(self, seed, hidden):
        cases = [
            Case("two documents", ("a cat sat." + _EOT + "a dog ran.", [_EOT])),
            Case("adjacent, first and last", (_EOT + "x" + _EOT + _EOT + "y" + _EOT, [_EOT])),
            # three nested specials, the middle one listed first: each wrong order cuts the
            # longest one differently, so this case alone tells the two order mistakes apart
            Case("three nested, middle listed first", ("x<|a|><|b|><|c|>y<|a|>",
                                                      ["<|a|><|b|>", "<|a|>", "<|a|><|b|><|c|>"])),
            Case("overlap, longer listed last", ("a" + _EOT2 + "b" + _EOT + "c", [_EOT, _EOT2])),
            Case("overlap, longer listed first", (_EOT2 + _EOT + "b" + _EOT2, [_EOT2, _EOT, _IM])),
            Case("no special tokens", ("hello <|world|>", [])),
        ]
        if hidden:
            g = generator(seed)
            docs = [corpus(60, seed=seed + k)[:20 + int(torch.randint(0, 40, (1,), generator=g))]
                    for k in range(5)]
            seps = [_EOT, _IM, _EOT2]
            text = docs[0]
            for k, d in enumerate(docs[1:]):
                text += seps[int(torch.randint(0, 3, (1,), generator=g))] + d
            cases += [
                Case("random documents", (text, [_IM, _EOT, _EOT2])),
                Case("regex characters", ("[MASK] is (*) or [MASK]. a|b", ["[MASK]", "(*)", "|"])),
                Case("a prefix of another", ("<|im|><|im_start|><|im|>", ["<|im|>", _IM])),
                Case("not present", ("plain text, no markers", [_EOT])),
                Case("empty text", ("", [_EOT])),
                Case("only a special token", (_EOT2, [_EOT, _EOT2])),
                Case("Chinese around it", ("我爱" + _EOT + "语言", [_EOT])),
            ]
        return cases

"""Optional loaders for public corpora, for learners with internet access.

Nothing is downloaded unless you pass ``download=True``. Files live in ``root`` (default:
``$LLMCOURSE_DATA``, else ``~/.cache/llmcourse``); put a copy there yourself to work
offline. The parsers are plain functions on text, tested on small fixtures.

- Tiny Shakespeare (Karpathy's char-rnn data, public domain text): ``tiny_shakespeare()``.
- TinyStories (Eldan & Li 2023, CDLA-Sharing-1.0): ``tinystories(split)``, the GPT-4 "V2"
  text files, stories separated by ``<|endoftext|>``.
"""

from __future__ import annotations

import itertools
import os
import urllib.request
from pathlib import Path
from typing import Iterable, Iterator

SOURCES = {
    "tinyshakespeare.txt":
        "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
    "TinyStoriesV2-GPT4-train.txt":
        "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/TinyStoriesV2-GPT4-train.txt",
    "TinyStoriesV2-GPT4-valid.txt":
        "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/TinyStoriesV2-GPT4-valid.txt",
}
END_OF_STORY = "<|endoftext|>"


class DatasetNotAvailable(FileNotFoundError):
    """The file is not on disk and downloading was not asked for."""


def data_dir(root: str | Path | None = None) -> Path:
    if root is not None:
        return Path(root)
    return Path(os.environ.get("LLMCOURSE_DATA") or Path.home() / ".cache" / "llmcourse")


def fetch(name: str, root: str | Path | None = None, download: bool = False) -> Path:
    """The local path of corpus file ``name``; downloads it only when ``download=True``."""
    path = data_dir(root) / name
    if path.exists():
        return path
    url = SOURCES[name]
    if not download:
        raise DatasetNotAvailable(
            f"{name} is not in {path.parent}. Pass download=True to fetch it from {url} "
            f"(needs internet), or put the file there yourself. The course's own corpora "
            f"(llmcourse.data.corpus, llmcourse.data.python_stdlib) need no download.")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as f:  # noqa: S310
        while chunk := response.read(1 << 20):
            f.write(chunk)
    tmp.replace(path)
    return path


def read_text(path: Path) -> str:
    """UTF-8 text with Windows or old-Mac line ends turned into "\\n"."""
    return path.read_bytes().decode("utf-8", errors="replace").replace("\r\n", "\n").replace("\r", "\n")


def parse_shakespeare(text: str) -> list[tuple[str, str]]:
    """Tiny Shakespeare text -> ``(speaker, speech)`` pairs.

    The file is blocks separated by blank lines; a block is ``Speaker:`` on its own line
    followed by the lines spoken. Blocks without a speaker line are skipped."""
    speeches = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        head, _, body = block.strip("\n").partition("\n")
        if head.endswith(":") and body.strip():
            speeches.append((head[:-1].strip(), body.strip("\n")))
    return speeches


def iter_tinystories(lines: Iterable[str]) -> Iterator[str]:
    """Lines of a TinyStories file -> its stories (trimmed, empty ones dropped), streaming.
    ``<|endoftext|>`` separates stories, on its own line or inside one."""
    buf: list[str] = []
    for line in lines:
        *done, rest = line.split(END_OF_STORY)
        for piece in done:
            story = ("".join(buf) + piece).strip()
            buf = []
            if story:
                yield story
        buf.append(rest)
    story = "".join(buf).strip()
    if story:
        yield story


def parse_tinystories(text: str, max_stories: int | None = None) -> list[str]:
    """TinyStories text -> the stories."""
    return list(itertools.islice(iter_tinystories(text.splitlines(keepends=True)), max_stories))


def tiny_shakespeare(root: str | Path | None = None, download: bool = False) -> str:
    """The whole Tiny Shakespeare text (about 1.1 MB)."""
    return read_text(fetch("tinyshakespeare.txt", root, download))


def tinystories(split: str = "valid", root: str | Path | None = None, download: bool = False,
                max_stories: int | None = None) -> list[str]:
    """TinyStories (V2, GPT-4 generated) stories of ``split`` "train" (2.2 GB) or "valid"."""
    if split not in ("train", "valid"):
        raise ValueError(f"split must be 'train' or 'valid', not {split!r}")
    path = fetch(f"TinyStoriesV2-GPT4-{split}.txt", root, download)
    with open(path, encoding="utf-8", errors="replace", newline=None) as f:
        return list(itertools.islice(iter_tinystories(f), max_stories))

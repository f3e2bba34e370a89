"""Python's own standard-library source: a real code domain present wherever Python is.

The files come from the running interpreter (``sysconfig.get_paths()["stdlib"]``), without
tests, installed packages, codec tables and generated data. Their order is a seeded hash
of each file's relative path, so it does not depend on the file system's listing order:
the same Python version and seed give byte-identical text on every machine (another
Python version has other source, so other text).
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
import tokenize
from pathlib import Path

# Directories left out: installed packages, tests, data-like or generated source.
EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__", "encodings",
                           "pydoc_data", "ensurepip", "__phello__"})
TEST_DIRS = frozenset({"test", "tests", "idle_test"})


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(include_tests: bool = False, root: str | Path | None = None) -> list[str]:
    """Relative POSIX paths of the standard library's ``.py`` files, sorted."""
    root = Path(root) if root is not None else stdlib_root()
    skip = EXCLUDED_DIRS if include_tests else EXCLUDED_DIRS | TEST_DIRS
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in skip and not d.startswith("config-")]
        rel = Path(dirpath).relative_to(root)
        found += [(rel / f).as_posix() for f in filenames if f.endswith(".py")]
    return sorted(found)


def _order_key(seed: int, path: str) -> str:
    return hashlib.sha256(f"{seed}/{path}".encode()).hexdigest()


def read_source(path: Path) -> str | None:
    """A source file as text (its coding cookie honoured, newlines as "\\n"); None if unreadable."""
    try:
        with tokenize.open(path) as f:
            return f.read()
    except (OSError, SyntaxError, UnicodeDecodeError):
        return None


def python_stdlib(max_bytes: int = 1_000_000, seed: int = 0, include_tests: bool = False,
                  root: str | Path | None = None) -> str:
    """Standard-library source files, each after a ``# ---- path ----`` header line, in a
    seeded order, until ``max_bytes`` bytes of UTF-8; the last file is cut at a line end."""
    root = Path(root) if root is not None else stdlib_root()
    paths = sorted(stdlib_files(include_tests, root), key=lambda p: _order_key(seed, p))
    parts, left = [], max_bytes
    for rel in paths:
        text = read_source(root / rel)
        if not text:
            continue
        piece = (f"# ---- {rel} ----\n" + text.rstrip("\n") + "\n").encode("utf-8")
        if len(piece) > left:
            cut = piece[:left]
            parts.append(cut[:cut.rfind(b"\n") + 1])
            break
        parts.append(piece)
        left -= len(piece)
    return b"".join(parts).decode("utf-8")

"""How long the reference byte-level BPE trainer takes on course text (a figure for the book).

    python -m llmcourse.scripts.bpe_benchmark [--bytes N] [--merges M]
"""

from __future__ import annotations

import argparse
import time

from ..data import corpus, python_stdlib
from ..reference import bpe


def benchmark_train(n_bytes: int = 1_000_000, num_merges: int = 3840) -> float:
    """Time :func:`llmcourse.reference.bpe.train` on ``n_bytes`` of course text (half synthetic
    language, half Python source), print and return the seconds."""
    text = corpus(n_bytes // 2, seed=0)[: n_bytes // 2] + python_stdlib(n_bytes - n_bytes // 2)
    start = time.perf_counter()
    merges = bpe.train(text, num_merges)
    seconds = time.perf_counter() - start
    print(f"BPE training: {len(text.encode('utf-8')) / 1e6:.2f} MB, {len(merges)} merges "
          f"in {seconds:.2f} s")
    return seconds


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m llmcourse.scripts.bpe_benchmark",
                                description=__doc__.splitlines()[0])
    p.add_argument("--bytes", type=int, default=1_000_000, help="bytes of text (default 1e6)")
    p.add_argument("--merges", type=int, default=3840, help="merges to learn (default 3840)")
    args = p.parse_args(argv)
    benchmark_train(args.bytes, args.merges)


if __name__ == "__main__":
    main()

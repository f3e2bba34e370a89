"""`make bench`: printed figures, not timed tests.

1. one `check()` per exercise (median of 5 runs; target < 1 s on a 2-core CPU);
2. each solution notebook, executed with plain `jupyter nbconvert --execute` (target < 2 min);
3. grading overhead: `llmcourse grade` on one notebook vs `jupyter nbconvert --execute` of
   the same notebook (median of 3 each; target ratio <= 1.2), with and without feedback HTML;
4. a batch of 20 submissions: wall time and submissions per minute.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from conftest import ROOT, chapter_names, filled_student_notebook, save  # noqa: E402

from llmcourse.checks import all_exercises, run  # noqa: E402

os.environ.pop("LLMCOURSE_QUICK", None)  # conftest sets it for the suite; the bench times full budgets
SECTIONS = ("checks", "notebooks", "grading", "batch")


def timed(cmd: list[str], **kw) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, **kw)
    return time.perf_counter() - t


def median_of(n, fn) -> float:
    return statistics.median(fn() for _ in range(n))


def main(argv: list[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default=",".join(SECTIONS), help="comma-separated: " + ",".join(SECTIONS))
    p.add_argument("--chapter", action="append", help="NN-name (repeatable; default: all)")
    args = p.parse_args(argv)
    only = set(args.only.split(","))
    if only - set(SECTIONS):
        p.error(f"unknown section {sorted(only - set(SECTIONS))[0]!r}")
    chapters = [c for c in chapter_names() if not args.chapter or c in args.chapter]
    print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    if "checks" in only:
        _checks([c[:2] for c in chapters])
    tmp = Path(tempfile.mkdtemp(prefix="llmc-bench-"))
    jupyter = [sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
               "--ExecutePreprocessor.timeout=600"]
    solved = {}
    for ch in chapters:
        for nb in sorted((ROOT / "solutions" / ch).glob("*.ipynb")):
            solved[(ch, nb.stem)] = save(tmp / "solved" / ch / nb.name,
                                         filled_student_notebook(ch, nb.stem))
    if "notebooks" in only:
        print("\n2. solution notebooks (plain nbconvert --execute, full budget)")
        for (ch, name), path in solved.items():
            t = timed(jupyter + ["--output-dir", str(tmp / "out"), str(path)])
            print(f"   {ch}/{name + '.ipynb':28s} {t:7.1f} s")
    if only & {"grading", "batch"}:
        _grading(only, tmp, jupyter, solved)


def _checks(prefixes: list[str]) -> None:
    print("\n1. one check() (median of 5), public cases")
    for ex in all_exercises():
        if ex.id.split(".")[0] not in prefixes:
            continue
        run(ex, ex.reference)  # warm-up
        t = median_of(5, lambda: _time(lambda: run(ex, ex.reference)))
        print(f"   {ex.id:28s} {t * 1000:8.1f} ms")


def _grading(only, tmp, jupyter, solved) -> None:
    (ch, name), path = next(iter(solved.items()))
    grade = [sys.executable, "-m", "llmcourse.cli", "grade", str(path), "--course-dir"]
    if "grading" not in only:
        return _batch(tmp, grade, ch, name, path)
    print("\n3. grading overhead: llmcourse grade vs nbconvert --execute (median of 3)")
    plain = median_of(3, lambda: timed(jupyter + ["--output-dir", str(tmp / "out"), str(path)]))
    nofb = median_of(3, lambda: timed(grade + [str(tmp / "c1"), "--no-feedback"], cwd=ROOT))
    withfb = median_of(3, lambda: timed(grade + [str(tmp / "c2")], cwd=ROOT))
    print(f"   nbconvert --execute           {plain:6.2f} s")
    print(f"   llmcourse grade --no-feedback {nofb:6.2f} s   ratio {nofb / plain:.2f}")
    print(f"   llmcourse grade (+ feedback)  {withfb:6.2f} s   ratio {withfb / plain:.2f}")
    if "batch" in only:
        _batch(tmp, grade, ch, name, path)


def _batch(tmp, grade, ch, name, path) -> None:
    print("\n4. a batch of 20 submissions (one chapter notebook each, feedback on)")
    for i in range(20):
        save(tmp / "batch" / f"student{i:02d}" / path.name, filled_student_notebook(ch, name))
    t = timed(grade[:-2] + [str(tmp / "batch"), "--course-dir", str(tmp / "c3")], cwd=ROOT)
    print(f"   wall {t:.1f} s, {20 / t * 60:.1f} submissions per minute")


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


if __name__ == "__main__":
    main()

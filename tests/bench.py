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


def timed(cmd: list[str], **kw) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, **kw)
    return time.perf_counter() - t


def median_of(n, fn) -> float:
    return statistics.median(fn() for _ in range(n))


def main() -> None:
    print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    print("\n1. one check() (median of 5), public cases")
    for ex in all_exercises():
        run(ex, ex.reference)  # warm-up
        t = median_of(5, lambda: _time(lambda: run(ex, ex.reference)))
        print(f"   {ex.id:28s} {t * 1000:8.1f} ms")
    tmp = Path(tempfile.mkdtemp(prefix="llmc-bench-"))
    jupyter = [sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
               "--ExecutePreprocessor.timeout=600"]
    print("\n2. solution notebooks (plain nbconvert --execute)")
    solved = {}
    for ch in chapter_names():
        for nb in sorted((ROOT / "solutions" / ch).glob("*.ipynb")):
            path = save(tmp / "solved" / ch / nb.name, filled_student_notebook(ch, nb.stem))
            solved[(ch, nb.stem)] = path
            t = timed(jupyter + ["--output-dir", str(tmp / "out"), str(path)])
            print(f"   {ch}/{nb.name:24s} {t:7.1f} s")
    print("\n3. grading overhead: llmcourse grade vs nbconvert --execute (median of 3)")
    (ch, name), path = next(iter(solved.items()))
    plain = median_of(3, lambda: timed(jupyter + ["--output-dir", str(tmp / "out"), str(path)]))
    grade = [sys.executable, "-m", "llmcourse.cli", "grade", str(path), "--course-dir"]
    nofb = median_of(3, lambda: timed(grade + [str(tmp / "c1"), "--no-feedback"], cwd=ROOT))
    withfb = median_of(3, lambda: timed(grade + [str(tmp / "c2")], cwd=ROOT))
    print(f"   nbconvert --execute           {plain:6.2f} s")
    print(f"   llmcourse grade --no-feedback {nofb:6.2f} s   ratio {nofb / plain:.2f}")
    print(f"   llmcourse grade (+ feedback)  {withfb:6.2f} s   ratio {withfb / plain:.2f}")
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

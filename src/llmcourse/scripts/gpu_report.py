"""Chapter 09: the whole GPU timing lab as one script, and the measurements the notebook reuses.

    python -m llmcourse.scripts.gpu_report --out DIR            # full sizes on a GPU
    python -m llmcourse.scripts.gpu_report --out DIR --small    # small sizes (CPU, ~1 min)

Measures on the current device, with the course's own timer (:func:`llmcourse.reference.timing.time_fn`,
or any timer with its signature passed as ``timer``): matmul FLOP/s per dtype against the
listed peak, device-to-device copy bandwidth, attention (naive, SDPA, chunked: time and
peak memory across sequence lengths), autocast speed and accuracy, a torch.compile fusion
example, the tokens/s and MFU of a GPT training step, and (GPU with Triton only) a fused
softmax kernel against the copy bandwidth. Writes ``results.json`` and ``results.md``.
Every section is independent: a failing one is reported and the run goes on.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path

import torch

from .gpu_measure import (DTYPES, LISTED_PEAKS, GiB, Sizes, _device, _free,  # noqa: F401 (re-exported)
                          device_name, fuse_gpt, fused_chain, listed_peaks, measure_attention,
                          measure_autocast, measure_compile, measure_copy, measure_gpt_step,
                          measure_matmul, measure_softmax)


# ---------------------------------------------------------------------------------------
# The report

def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e5 else f"{v:,.0f}"
    if isinstance(v, dict):
        return ", ".join(f"{k}={x}" for k, x in v.items())
    return str(v)


def table(rows: list[dict]) -> str:
    """A markdown table of a list of dicts (columns: the union of the keys, in order)."""
    if isinstance(rows, dict):
        rows = [rows]
    cols = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def environment() -> dict:
    info = {"device": device_name(), "torch": torch.__version__, "python": sys.version.split()[0],
            "cuda": torch.version.cuda, "listed_peaks": listed_peaks()}
    if torch.cuda.is_available():
        info["gpu_memory_gib"] = torch.cuda.get_device_properties(0).total_memory / GiB
    return info


def run_report(out: Path, small: bool = False, batch: int | None = None,
               sections: list[str] | None = None, log=print) -> dict:
    # Imported here, not at the top: the GPU lab imports this module for its measurements and
    # passes the learner's own timer, so the lab's sandbox build must not carry the answer.
    from ..reference.timing import time_fn

    sizes = Sizes.small(batch or 4) if small else Sizes.full(batch or 16)
    results: dict = {"environment": environment(), "small": small, "sizes": asdict(sizes)}
    log(f"device: {results['environment']['device']}, torch {torch.__version__}")
    plan = [
        ("matmul", lambda: measure_matmul(time_fn, sizes)),
        ("copy", lambda: measure_copy(time_fn, sizes)),
        ("attention", lambda: measure_attention(time_fn, sizes)),
        ("autocast", lambda: measure_autocast(time_fn, sizes)),
        ("compile", lambda: measure_compile(time_fn, sizes)),
        ("gpt_step", lambda: measure_gpt_step(time_fn, sizes)),
        ("softmax", lambda: measure_softmax(
            time_fn, sizes, copy_gb_per_s=(results.get("copy") or {}).get("gb_per_s"))),
    ]
    out.mkdir(parents=True, exist_ok=True)
    for name, fn in plan:
        if sections and name not in sections:
            continue
        t0 = time.perf_counter()
        try:
            results[name] = fn()
            log(f"[{name}] done in {time.perf_counter() - t0:.1f} s")
            log(table(results[name]))
        except Exception as exc:  # report it and go on with the next section
            results[name] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            log(f"[{name}] FAILED after {time.perf_counter() - t0:.1f} s: {results[name]['error']}")
            traceback.print_exc()
            _free()
        results.setdefault("seconds", {})[name] = time.perf_counter() - t0
        (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    (out / "results.md").write_text(markdown(results))
    return results


def markdown(results: dict) -> str:
    env = results["environment"]
    parts = [f"# GPU timing lab: {env['device']}", "",
             f"torch {env['torch']}, CUDA {env['cuda']}, Python {env['python']}"
             + (" (small sizes)" if results.get("small") else ""), ""]
    titles = {"matmul": "Matmul throughput per dtype", "copy": "Device copy bandwidth",
              "attention": "Causal attention: naive vs SDPA vs chunked",
              "autocast": "Mixed precision (MLP block)", "compile": "torch.compile fusion",
              "gpt_step": "GPT training step", "softmax": "Fused softmax vs copy bandwidth"}
    for key, title in titles.items():
        if key in results:
            parts += [f"## {title}", "", table(results[key]), ""]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m llmcourse.scripts.gpu_report",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder for results.json/results.md")
    p.add_argument("--small", action="store_true", help="small sizes (CPU, about a minute)")
    p.add_argument("--batch", type=int, default=None, help="GPT step batch size (16; small: 4)")
    p.add_argument("--sections", nargs="*", default=None,
                   help="only these: matmul copy attention autocast compile gpt_step softmax")
    args = p.parse_args(argv)
    small = args.small
    if not small and not torch.cuda.is_available():
        print("no CUDA device: running the small sizes (--small)")
        small = True
    t0 = time.perf_counter()
    run_report(args.out, small=small, batch=args.batch, sections=args.sections)
    print(f"wrote {args.out / 'results.json'} and {args.out / 'results.md'} "
          f"in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

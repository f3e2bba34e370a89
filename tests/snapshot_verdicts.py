"""Snapshot of what learners see from every registered exercise, for refactors of the checks.

For each exercise: the public-case verdict (``str(run(...))``) on the reference, on a stub that
raises ``NotImplementedError`` and on each cataloged mistake; its forbidden-shortcut rules
(target, why, allow, in order); and the verdict lines that a few probe cells importing the
course's reference get (so the messages of forbidden verdicts are covered too).

    python tests/snapshot_verdicts.py write /tmp/before.json
    python tests/snapshot_verdicts.py compare /tmp/before.json      # exit 1 on any change
"""

from __future__ import annotations

import json
import sys

# Cells a learner might write that reach into the reference; each exercise's rules decide
# which are forbidden and with which message.
PROBES = (
    "import llmcourse.reference.basics\n",
    "from llmcourse.reference import training, gpt\n",
    "from llmcourse.reference.training import train\n",
    "from llmcourse.reference import attention\n",
    "from llmcourse.checks import core\n",
)


def _stub():
    ns: dict = {}
    exec("def stub(*args, **kwargs):\n    raise NotImplementedError()", ns)  # no source file
    return ns["stub"]


def snapshot(chapter: str | None = None) -> dict[str, dict]:
    import torch

    from llmcourse.checks import all_exercises, run
    from llmcourse.checks.forbidden import violations_for

    torch.set_num_threads(1)
    out = {}
    for ex in all_exercises(chapter):
        probes = {}
        for i, src in enumerate(PROBES):
            cell = f"{src}\ndef {ex.entry}(*args, **kwargs):\n    return {src.split()[-1].split(',')[0]}\n"
            probes[str(i)] = [str(v) for v in violations_for(ex.entry, ex.rules,
                                                             [("cell In[1]", cell)])]
        out[ex.id] = {
            "entry": ex.entry,
            "reference": str(run(ex, ex.reference)),
            "stub": str(run(ex, _stub())),
            "mistakes": {m.name: str(run(ex, m.impl)) for m in ex.mistakes},
            "rules": [[r.target, r.why, list(r.allow)] for r in ex.rules],
            "probes": probes,
        }
    return out


def compare(before: dict, after: dict) -> list[str]:
    diffs = []
    for key in sorted(set(before) | set(after)):
        if key not in after:
            diffs.append(f"{key}: missing after")
        elif key not in before:
            diffs.append(f"{key}: new after")
        elif before[key] != after[key]:
            for field in before[key]:
                if before[key][field] != after[key].get(field):
                    diffs.append(f"{key}.{field}: {before[key][field]!r} -> {after[key].get(field)!r}")
    return diffs


def main(argv: list[str]) -> int:
    what, path = argv[0], argv[1]
    chapter = argv[2] if len(argv) > 2 else None
    now = snapshot(chapter)
    if what == "write":
        with open(path, "w", encoding="utf-8") as f:
            json.dump(now, f, indent=1, ensure_ascii=False, sort_keys=True)
        print(f"{len(now)} exercises written to {path}")
        return 0
    with open(path, encoding="utf-8") as f:
        before = json.load(f)
    if chapter:
        before = {k: v for k, v in before.items() if k.startswith(chapter + ".")}
    diffs = compare(before, now)
    print("\n".join(diffs) or f"identical: {len(now)} exercises")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

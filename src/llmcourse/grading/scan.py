"""The static shortcut scan, run in a child process with limits (hostile input).

``python -m llmcourse.grading.scan`` reads ``{"exercises": {id: [entry, rules]}, "cells":
[[label, source], ...]}`` as JSON on stdin and prints ``{id: [violation, ...]}``. A deeply
nested expression or a giant cell can only exhaust this child (address space, CPU time and
recursion are capped): :func:`scan` then reports one line, and the exercise scores 0.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

SCAN_MEMORY = 2 * 2**30
SCAN_SECONDS = 60


def _limits() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (SCAN_MEMORY, SCAN_MEMORY))
    resource.setrlimit(resource.RLIMIT_CPU, (SCAN_SECONDS, SCAN_SECONDS))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def scan(exercises: dict[str, tuple[str, list]], cells: list[tuple[str, str]],
         library: str = "") -> dict[str, list[str]]:
    """{exercise: [violations]}; an exercise the scan could not finish gets one line."""
    if not exercises:
        return {}
    env = dict(os.environ)
    if library:
        env["PYTHONPATH"] = library
    payload = json.dumps({"exercises": exercises, "cells": cells})
    try:
        p = subprocess.run([sys.executable, "-m", "llmcourse.grading.scan"], input=payload.encode(),
                           capture_output=True, timeout=SCAN_SECONDS * 2, env=env,
                           cwd=library or None, preexec_fn=_limits)
        if p.returncode == 0:
            found = json.loads(p.stdout)
            return {e: [str(v) for v in found.get(e, [])] for e in exercises}
    except (subprocess.TimeoutExpired, ValueError, OSError):
        pass
    return {e: ["the shortcut scan could not read this code (too large or too deeply nested)"]
            for e in exercises}


def _main() -> None:
    sys.setrecursionlimit(2000)
    from ..checks.core import Rule
    from ..checks.forbidden import definitions, violations_for

    data = json.load(sys.stdin)
    cells = [(str(a), str(b)) for a, b in data["cells"]]
    out = {}
    try:
        defined = set(definitions(cells)[0])
    except (RecursionError, MemoryError, ValueError):
        defined = None
    for exid, (entry, rules) in data["exercises"].items():
        try:
            if defined is None:
                raise RecursionError
            if entry not in defined:  # made at run time (exec, a module's globals, ...)
                out[exid] = [f"`{entry}` is not defined by the code of any answer cell (code made "
                             "at run time is not an answer)"]
                continue
            found = violations_for(entry, tuple(Rule(t, w, tuple(a)) for t, w, a in rules), cells)
            out[exid] = [str(v) for v in found[:1]]
        except (RecursionError, MemoryError, SyntaxError, ValueError) as exc:
            out[exid] = [f"the shortcut scan could not read this code ({type(exc).__name__})"]
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    _main()

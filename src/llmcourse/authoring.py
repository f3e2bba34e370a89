"""Build instructor notebooks from a compact description (used when writing chapters).

Example::

    from llmcourse.authoring import md, code, solution, tests, write
    write("solutions/00-getting-started/warmup.ipynb", [
        md("# Title"),
        code("import torch"),
        solution("softmax", "def softmax(x, dim=-1):\\n    ### BEGIN SOLUTION\\n    ...\\n    ### END SOLUTION"),
        tests("test_softmax", 2, 'check("00.softmax", softmax)', 'check("00.softmax", softmax, hidden=True, seed=1)'),
    ])

Every nbgrader cell gets the metadata nbgrader expects (schema 3) and a stable cell id.
"""

from __future__ import annotations

import json
from pathlib import Path

KERNEL = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}


def _cell(kind: str, source: str, cell_id: str, nbgrader: dict | None = None) -> dict:
    cell = {"cell_type": kind, "id": cell_id, "metadata": {}, "source": source.strip("\n")}
    if nbgrader is not None:
        cell["metadata"]["nbgrader"] = {"schema_version": 3, "task": False, **nbgrader}
    if kind == "code":
        cell.update(execution_count=None, outputs=[])
    return cell


class _Counter:
    n = 0


def _auto_id(prefix: str) -> str:
    _Counter.n += 1
    return f"{prefix}-{_Counter.n:02d}"


def md(source: str, cell_id: str | None = None) -> dict:
    return _cell("markdown", source, cell_id or _auto_id("md"))


def code(source: str, cell_id: str | None = None) -> dict:
    return _cell("code", source, cell_id or _auto_id("code"))


def solution(grade_id: str, source: str) -> dict:
    """An answer cell: the learner's code goes between BEGIN/END SOLUTION."""
    return _cell("code", source, grade_id, {"grade": False, "grade_id": grade_id,
                                             "locked": False, "solution": True})


def tests(grade_id: str, points: float, public: str, hidden: str) -> dict:
    """A locked, graded test cell: public checks, then hidden ones."""
    source = f"{public.strip()}\n### BEGIN HIDDEN TESTS\n{hidden.strip()}\n### END HIDDEN TESTS"
    return _cell("code", source, grade_id, {"grade": True, "grade_id": grade_id, "locked": True,
                                             "points": points, "solution": False})


def write(path: str | Path, cells: list[dict], **metadata) -> None:
    nb = {"cells": cells, "metadata": {"kernelspec": KERNEL, "language_info": {"name": "python"},
                                       **metadata},
          "nbformat": 4, "nbformat_minor": 5}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    _Counter.n = 0

"""``llmcourse check NOTEBOOK``: run a notebook and print the public verdict of every exercise.

The same verdict as the notebook's ``check_all()`` cell, from a terminal - useful before
submitting. (``nbgrader validate`` exits 0 even when tests fail; this exits 1.)
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from .submissions import load_notebook

MARK = "@@llmcourse-verdict@@"


def check_notebook(path: Path, timeout: int = 120) -> bool:
    import nbformat
    from nbclient import NotebookClient

    data, problem = load_notebook(path)
    if problem:
        raise ValueError(problem)
    nb = nbformat.reads(json.dumps(data), as_version=4)
    # The kernel talks over local IPC sockets in a private folder, not TCP: no "Kernel is
    # running over TCP without encryption" warning, and nothing listens on a port.
    from traitlets.config import Config

    sockets = tempfile.TemporaryDirectory(prefix="llmcourse-kernel-")
    config = Config()
    config.KernelManager.transport = "ipc"
    config.KernelManager.ip = os.path.join(sockets.name, "kernel")
    client = NotebookClient(nb, timeout=timeout, allow_errors=True, config=config,
                            resources={"metadata": {"path": str(path.resolve().parent)}})
    verdict = nbformat.v4.new_code_cell(
        "from llmcourse import check_all as _ca\n"
        f"_r = _ca()\nprint('{MARK}', all(bool(v) for v in _r.values()) and len(_r) > 0)")
    from nbclient.exceptions import DeadKernelError

    try:
        with client.setup_kernel():
            for index, cell in enumerate(nb.cells):
                if cell.cell_type == "code":
                    client.execute_cell(cell, index)
            nb.cells.append(verdict)
            client.execute_cell(verdict, len(nb.cells) - 1)
    except DeadKernelError:
        print(f"the kernel died while running cell {index} (out of memory?)")
        return False
    finally:
        sockets.cleanup()
    errors = [(i, o) for i, c in enumerate(nb.cells[:-1]) if c.cell_type == "code"
              for o in c.outputs if o.get("output_type") == "error"]
    for i, o in errors:
        if o.get("ename") not in ("CheckFailed", "NotImplementedError"):
            print(f"cell {i}: {o.get('ename')}: {o.get('evalue', '')[:200]}")
    text = "".join(o.get("text", "") for o in verdict.outputs if o.get("output_type") == "stream")
    print(text.replace(MARK, "").rsplit("\n", 2)[0].strip() if MARK in text else
          "could not run the checks (see the errors above)")
    return f"{MARK} True" in text

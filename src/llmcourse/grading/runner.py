"""Runs INSIDE the sandbox: execute one notebook with nbclient, then the verification cell.

``python -m llmcourse.grading.runner JOB_IN JOB_OUT`` reads ``JOB_IN/notebook.ipynb`` and
``JOB_IN/job.json`` (limits and the exercises to verify), starts the kernel - inside the
same sandbox, so the kernel and this runner share its namespaces and limits - and writes
``JOB_OUT/executed.ipynb`` and, from the verification cell, ``JOB_OUT/outputs.bin``.

Nothing here is trusted by the grader: the learner's code can rewrite both files. The
grader takes only the outputs of the executed notebook (capped, validated) and judges the
learner's raw outputs against expected values it made itself and never let in here.
"""

from __future__ import annotations

import json
import os
import sys
import time

from nbclient.client import NotebookClient
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbformat import NotebookNode
from nbformat.v4 import new_code_cell, new_output

CELL_TIMEOUT = {"ename": "CellTimeoutError", "evalue": "",
                "traceback": ["\x1b[0;31mCellTimeoutError\x1b[0m: No reply from kernel before timeout"]}


def error_output(ename: str, evalue: str) -> NotebookNode:
    return new_output("error", ename=ename, evalue=evalue, traceback=[f"{ename}: {evalue}"])


class Runner(NotebookClient):
    def __init__(self, nb, job: dict, **kw):
        super().__init__(nb, timeout=int(job["cell_timeout"]), allow_errors=True,
                         interrupt_on_timeout=True, raise_on_iopub_timeout=True,
                         error_on_timeout=CELL_TIMEOUT, kernel_name="python3",
                         extra_arguments=["--HistoryManager.hist_file=:memory:"],
                         shutdown_kernel="immediate",  # a graceful shutdown waits ~1.2 s; the sandbox ends anyway
                         resources={"metadata": {"path": os.getcwd()}}, **kw)
        self.job = job
        self.max_cell_output = int(job.get("max_cell_output", 200_000))
        self._out_chars: dict[int, int] = {}
        self._dead = False

    def output(self, outs, msg, display_id, cell_index):
        content = msg.get("content", {})
        size = len(content.get("text", "")) + sum(len(str(v)) for v in content.get("data", {}).values())
        size += sum(len(line) for line in content.get("traceback", []))
        used = self._out_chars.get(cell_index, 0)
        self._out_chars[cell_index] = used + size
        if used > self.max_cell_output:
            return None
        if used + size > self.max_cell_output:
            outs.append(new_output("stream", name="stderr", text=f"\n[output truncated by the grader: "
                                   f"over {self.max_cell_output} characters]\n"))
            return None
        return super().output(outs, msg, display_id, cell_index)

    def run(self) -> None:
        deadline = time.monotonic() + int(self.job["notebook_timeout"])
        with self.setup_kernel():
            self._warm_up()
            for index, cell in enumerate(self.nb.cells):
                if cell.cell_type != "code":
                    continue
                if self._dead:
                    cell.outputs = [error_output("DeadKernelError", "skipped: the kernel died earlier")]
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    cell.outputs = [error_output("NotebookTimeout", "skipped: the notebook used up its "
                                                 f"{self.job['notebook_timeout']} s time limit")]
                    continue
                self.timeout = max(1, int(min(int(self.job["cell_timeout"]), remaining)))
                self._execute(cell, index)
            if not self._dead and self.job.get("entries"):
                # the grader's own step (every exercise, every hidden case, operators
                # recorded): not held to one learner cell's limit
                self.timeout = max(120, 2 * int(self.job["cell_timeout"]))
                self._verify()

    def _warm_up(self) -> None:
        """Import torch and the checks before the learner's first cell (not timed as one of
        its cells: on a busy machine the import alone can take longer than a cell's limit)."""
        cell = new_code_cell("import torch, numpy, llmcourse.checks, llmcourse.grading.harness")
        self.nb.cells.insert(0, cell)
        self.timeout = max(120, int(self.job["cell_timeout"]))
        try:
            self.execute_cell(cell, 0, store_history=False)
        except (CellTimeoutError, DeadKernelError):
            pass
        finally:
            self.nb.cells.pop(0)
            self._out_chars.clear()

    def _execute(self, cell, index, **kw) -> None:
        try:
            self.execute_cell(cell, index, **kw)
        except DeadKernelError:
            self._dead = True
            cell.outputs.append(error_output("DeadKernelError", "the kernel died (crash or os._exit)"))
        except CellTimeoutError:
            cell.outputs.append(error_output("CellTimeoutError", "no reply from the kernel in time"))

    def _verify(self) -> None:
        """The learner's functions on the grader's hidden inputs -> the outputs file."""
        inputs, out = self.job["inputs"], self.job["outputs"]
        deadline = time.monotonic() + 300  # the grader makes the inputs while the notebook runs
        while not os.path.exists(inputs) and time.monotonic() < deadline:
            time.sleep(0.02)
        challenges = {k: int(v) for k, v in self.job.get("challenges", {}).items()}
        entries = {k: v for k, v in self.job["entries"].items() if k not in challenges}
        record = bool(self.job.get("record_ops", True))
        unrecorded = set(self.job.get("unrecorded", []))
        steps = [(entries, out, self.timeout, record)]
        # each challenge in a step of its own, stopped at its time budget: a run over budget
        # writes no outputs, and the grader scores it 0 with one line
        steps += [({k: self.job["entries"][k]}, f"{out}.{_safe(k)}", budget + 5,
                   record and k not in unrecorded)
                  for k, budget in challenges.items() if k in self.job["entries"]]
        for step_entries, step_out, timeout, step_record in steps:
            if self._dead:
                break
            self.timeout = max(1, int(timeout))
            src = ("from llmcourse.grading.harness import dump as _llmcourse_dump\n"
                   f"_llmcourse_dump({inputs!r}, {step_out!r}, {step_entries!r}, "
                   f"{step_record!r})")
            cell = new_code_cell(src)
            self.nb.cells.append(cell)
            try:
                self._execute(cell, len(self.nb.cells) - 1, store_history=False)
            finally:
                self.nb.cells.pop()


def _safe(name: str) -> str:
    from .protocol import safe_name

    return safe_name(name)


def main(job_in: str, job_out: str) -> int:
    import nbformat

    with open(os.path.join(job_in, "job.json")) as f:
        job = json.load(f)
    nb = nbformat.read(os.path.join(job_in, "notebook.ipynb"), as_version=4)
    runner = Runner(nb, job)
    problem = ""
    try:
        runner.run()
    except Exception as exc:  # kernel would not start, ...: said in the executed notebook
        problem = f"{type(exc).__name__}: {str(exc).strip()[:300]}"
    nb.metadata["llmcourse_runner"] = {"problem": problem}
    tmp = os.path.join(job_out, "executed.ipynb.tmp")
    nbformat.write(nb, tmp)
    os.replace(tmp, os.path.join(job_out, "executed.ipynb"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))

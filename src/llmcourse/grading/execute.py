"""nbgrader plug-ins: the sandboxed Execute step and feedback without leaks.

* :class:`SafeExecute` replaces nbgrader's ``Execute``. It never starts a kernel in the
  grader: it writes the notebook and its limits into a job folder, runs the whole execution
  (kernel included) inside the sandbox (:mod:`.sandbox`, :mod:`.runner`) and takes back only
  the cells' outputs - read as hostile input: a regular file, size-capped, validated. The
  per-cell time limit is nbgrader's ``timeout``; the notebook has a whole-run limit; each
  cell's output is capped while it streams in. After the learner's cells the sandbox runs
  each exercise on the grader's hidden inputs and writes the raw outputs to a file that the
  grader judges outside the sandbox.
* Run without ``llmcourse grade`` (plain ``nbgrader autograde``), it refuses in one line.
* :class:`StripHiddenTests` removes hidden tests and traceback source lines from feedback.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from nbformat import NotebookNode
from nbformat.v4 import new_output
from nbgrader.preprocessors import NbGraderPreprocessor
from traitlets import Bool, Integer, Unicode

from .protocol import (HIDDEN_PLACEHOLDER, MAX_NOTEBOOK_BYTES, SANDBOX_INPUTS_DIR, SANDBOX_JOB_OUT,
                       BatchDir, ProtocolError, read_challenges, read_plan, read_regular, read_unrecorded,
                       strip_hidden)
from .sandbox import NO_SANDBOX, Limits, _size, probe, run_job

REFUSE = ("plain `nbgrader autograde` is not supported for this course: run `llmcourse grade` "
          "(it runs every notebook in a sandbox and verifies the results outside it)")
OUTPUT_TYPES = {"stream", "execute_result", "display_data", "error"}


def error_output(ename: str, evalue: str) -> NotebookNode:
    return new_output("error", ename=ename, evalue=evalue, traceback=[f"{ename}: {evalue}"])


class SafeExecute(NbGraderPreprocessor):
    timeout = Integer(30, help="seconds per cell").tag(config=True)
    notebook_timeout = Integer(600, help="seconds for the whole notebook").tag(config=True)
    max_cell_output = Integer(200_000, help="characters of output kept per cell").tag(config=True)
    memory = Unicode("4G", help="address-space limit of each process in the sandbox").tag(config=True)
    verify_dir = Unicode("", help="the batch folder made by `llmcourse grade`").tag(config=True)
    unsafe = Bool(False, help="run without the sandbox (trusted work only)").tag(config=True)

    def preprocess(self, nb, resources):
        if not self.verify_dir:
            raise RuntimeError(REFUSE)
        if not self.unsafe and not probe()[0]:
            raise RuntimeError(NO_SANDBOX.format(why=probe()[1]))
        info = resources.get("nbgrader", {})
        batch = BatchDir(Path(self.verify_dir))
        name = info.get("notebook", "")
        job = batch.job(info.get("student", "_"), name)
        shutil.rmtree(job.root, ignore_errors=True)
        job.inbox.mkdir(parents=True)
        job.outbox.mkdir(mode=0o700)
        unsafe = self.unsafe
        (job.notebook).write_text(json.dumps(nb), encoding="utf-8")
        budgets = read_challenges(batch.plan, name)
        (job.job).write_text(json.dumps({
            "cell_timeout": self.timeout, "notebook_timeout": self.notebook_timeout,
            "max_cell_output": self.max_cell_output, "entries": read_plan(batch.plan, name),
            "challenges": budgets, "unrecorded": read_unrecorded(batch.plan, name),
            "inputs": str(batch.inputs) if unsafe else f"{SANDBOX_INPUTS_DIR}/{batch.inputs.name}",
            "outputs": str(job.outputs) if unsafe else f"{SANDBOX_JOB_OUT}/{job.outputs.name}"}))
        extra = sum(b + 10 for b in budgets.values())  # each challenge's own step
        limits = Limits(memory=_size(self.memory), wall=self.notebook_timeout + 120 + extra,
                        cpu=2 * (self.notebook_timeout + extra) + 120)
        report = run_job(job, batch.library, batch.inputs_dir, limits, unsafe=unsafe)
        problem = merge_outputs(nb, job.executed, self.max_cell_output)
        if problem:
            self.log.warning("%s: %s", name, problem)
            for cell in nb.cells:
                if cell.cell_type == "code":
                    cell.outputs = [error_output("GraderError", f"the notebook did not run in the "
                                                 f"sandbox ({report.note or problem})")]
        return nb, resources


def _clean_output(out, budget: int) -> tuple[dict | None, int]:
    """One output from the sandbox, checked field by field; None when malformed."""
    if not isinstance(out, dict) or out.get("output_type") not in OUTPUT_TYPES:
        return None, 0
    kind = out["output_type"]
    if kind == "stream":
        text = out.get("text", "")
        text = "".join(text) if isinstance(text, list) else text
        if not isinstance(text, str) or out.get("name") not in ("stdout", "stderr"):
            return None, 0
        text = text[:budget]
        return new_output("stream", name=out["name"], text=text), len(text)
    if kind == "error":
        ename, evalue, tb = out.get("ename"), out.get("evalue"), out.get("traceback", [])
        if not (isinstance(ename, str) and isinstance(evalue, str) and isinstance(tb, list)
                and all(isinstance(t, str) for t in tb)):
            return None, 0
        tb = [t[:2000] for t in tb[:50]]
        return (new_output("error", ename=ename[:200], evalue=evalue[:2000], traceback=tb),
                len(evalue) + sum(map(len, tb)))
    data = out.get("data", {})
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        return None, 0
    clean, size = {}, 0
    for k, v in data.items():
        v = "".join(v) if isinstance(v, list) and all(isinstance(x, str) for x in v) else v
        if not isinstance(v, str) or size + len(v) > budget:
            continue
        clean[k[:100]] = v
        size += len(v)
    fields = {"data": clean, "metadata": {}}
    if kind == "execute_result":
        count = out.get("execution_count")
        fields["execution_count"] = count if isinstance(count, int) else None
    return new_output(kind, **fields), size


def merge_outputs(nb, executed: Path, max_cell_output: int) -> str:
    """Copy the outputs of the executed notebook into ``nb``; '' or the problem in one line.

    Only outputs and execution counts come back; sources, metadata and cell order are the
    grader's own."""
    try:
        data = json.loads(read_regular(executed, MAX_NOTEBOOK_BYTES))
    except ProtocolError as exc:
        return str(exc)
    except ValueError:
        return "the executed notebook is not JSON"
    cells = data.get("cells") if isinstance(data, dict) else None
    if not isinstance(cells, list) or len(cells) != len(nb.cells):
        return "the executed notebook does not match the submitted one"
    for mine, theirs in zip(nb.cells, cells):
        if mine.cell_type != "code":
            continue
        outs, budget = [], 2 * max_cell_output
        raw = theirs.get("outputs", []) if isinstance(theirs, dict) else []
        for out in (raw if isinstance(raw, list) else [])[:500]:
            clean, size = _clean_output(out, budget)
            if clean is not None:
                outs.append(clean)
                budget -= size
            if budget <= 0:
                break
        count = theirs.get("execution_count") if isinstance(theirs, dict) else None
        mine.outputs = outs
        mine.execution_count = count if isinstance(count, int) else None
    meta = data.get("metadata", {}) if isinstance(data, dict) else {}
    runner = meta.get("llmcourse_runner", {}) if isinstance(meta, dict) else {}
    problem = runner.get("problem", "") if isinstance(runner, dict) else ""
    return str(problem)[:300] if problem else ""


class StripHiddenTests(NbGraderPreprocessor):
    """For feedback: drop hidden-test source and the code lines inside tracebacks."""

    def preprocess_cell(self, cell, resources, index):
        if cell.cell_type == "code":
            cell.source = strip_hidden(cell.source, HIDDEN_PLACEHOLDER)
            for out in cell.get("outputs", []):
                if out.get("output_type") == "error":
                    out["traceback"] = [f"{out.get('ename', 'Error')}: {out.get('evalue', '')}"]
        return cell, resources

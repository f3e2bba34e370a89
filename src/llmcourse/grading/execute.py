"""nbgrader plug-ins: a sandboxed kernel, a guarded Execute step and feedback without leaks.

* :class:`SandboxKernelManager` starts the kernel through :mod:`llmcourse.grading.sandbox`
  (memory and file-size limits, no network) over IPC sockets, so an empty network
  namespace does not cut the grader off from its kernel.
* :class:`SafeExecute` replaces nbgrader's ``Execute``: a per-cell time limit (nbgrader's
  ``timeout``), a whole-notebook time limit (cells after it are skipped with a clear error),
  a cap on each cell's output while it streams in, and - after the learner's cells - one
  extra cell that runs each exercise on inputs the grader generated, writing the raw
  outputs to a file that the grader compares outside the kernel.
* :class:`StripHiddenTests` removes hidden tests and traceback source lines from feedback.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from jupyter_client.manager import AsyncKernelManager
from nbclient.client import NotebookClient
from nbformat import NotebookNode
from nbformat.v4 import new_code_cell, new_output
from nbgrader.preprocessors import Execute, NbGraderPreprocessor
from traitlets import Bool, Integer, Unicode

from .protocol import HIDDEN_PLACEHOLDER, BatchDir, read_plan, strip_hidden


class SandboxKernelManager(AsyncKernelManager):
    memory_limit = Unicode("4G", help="address-space limit of the kernel (RLIMIT_AS)").tag(config=True)
    file_size_limit = Unicode("1G", help="largest file the kernel may write").tag(config=True)
    allow_network = Bool(False, help="let the kernel reach the network").tag(config=True)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.transport = "ipc"
        self._ipc_dir = tempfile.mkdtemp(prefix="llmc-kernel-")
        self.ip = os.path.join(self._ipc_dir, "k")

    def format_kernel_cmd(self, extra_arguments=None):
        cmd = super().format_kernel_cmd(extra_arguments)
        if "ipykernel_launcher" not in cmd:
            return cmd  # not a Python kernel we know how to wrap
        i = cmd.index("ipykernel_launcher")
        opts = ["--memory", self.memory_limit, "--fsize", self.file_size_limit]
        opts += ["--allow-network"] if self.allow_network else []
        return cmd[:i] + ["llmcourse.grading.sandbox"] + opts + ["--"] + cmd[i + 1:]


def error_output(ename: str, evalue: str) -> NotebookNode:
    return new_output("error", ename=ename, evalue=evalue, traceback=[f"{ename}: {evalue}"])


class SafeExecute(Execute):
    notebook_timeout = Integer(600, help="seconds for the whole notebook").tag(config=True)
    max_cell_output = Integer(200_000, help="characters of output kept per cell").tag(config=True)
    verify_dir = Unicode("", help="folder with plan.json for verification outside the kernel"
                         ).tag(config=True)

    def preprocess(self, nb, resources=None, km=None):
        NotebookClient.__init__(self, nb, km)
        self.reset_execution_trackers()
        self._check_assign_resources(resources)
        self._cell_timeout = self.timeout
        self._deadline = time.monotonic() + self.notebook_timeout
        self._out_chars: dict[int, int] = {}
        with self.setup_kernel():
            info = self.wait_for_reply(self.kc.kernel_info())
            self.nb.metadata["language_info"] = info["content"]["language_info"]
            for index, cell in enumerate(self.nb.cells):
                self.preprocess_cell(cell, resources, index)
            self._verify(resources or {})
        self.set_widgets_metadata()
        self.timeout = self._cell_timeout
        return self.nb, self.resources

    def preprocess_cell(self, cell, resources, index):
        if cell.cell_type != "code":
            return cell, self.resources
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            cell.outputs = [error_output("NotebookTimeout", f"skipped: the notebook used up its "
                                         f"{self.notebook_timeout} s time limit")]
            return cell, self.resources
        self.timeout = max(1, int(min(self._cell_timeout, remaining)))
        return super().preprocess_cell(cell, resources, index)

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

    def _verify(self, resources: dict) -> None:
        """Run the learner's functions on the grader's inputs; outputs go to a file."""
        if not self.verify_dir:
            return
        info = resources.get("nbgrader", {})
        batch = BatchDir(Path(self.verify_dir))
        entries = read_plan(batch.plan, info.get("notebook", ""))
        if not entries:
            return
        job = batch.job(info.get("student", "_"), info["notebook"])
        out, inputs = str(job.outputs), str(batch.inputs)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        if os.path.exists(out):
            os.remove(out)
        src = ("from llmcourse.grading.harness import dump as _llmcourse_dump\n"
               f"_llmcourse_dump({inputs!r}, {out!r}, {entries!r})")
        deadline = time.monotonic() + 300  # the grader makes the inputs in parallel
        while not os.path.exists(inputs) and time.monotonic() < deadline:
            time.sleep(0.02)
        cell = new_code_cell(src)
        self.timeout = self._cell_timeout
        self.nb.cells.append(cell)
        try:
            self.execute_cell(cell, len(self.nb.cells) - 1, store_history=False)
        except Exception as exc:  # a dead kernel: the grader reports missing outputs
            self.log.warning("verification cell failed: %s", exc)
        finally:
            self.nb.cells.pop()


class StripHiddenTests(NbGraderPreprocessor):
    """For feedback: drop hidden-test source and the code lines inside tracebacks."""

    def preprocess_cell(self, cell, resources, index):
        if cell.cell_type == "code":
            cell.source = strip_hidden(cell.source, HIDDEN_PLACEHOLDER)
            for out in cell.get("outputs", []):
                if out.get("output_type") == "error":
                    out["traceback"] = [f"{out.get('ename', 'Error')}: {out.get('evalue', '')}"]
        return cell, resources

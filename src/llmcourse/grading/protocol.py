"""The contract between the grader, the sandboxed kernel and the verifier, in one place.

A batch of one chapter works in a folder the grader owns (:class:`BatchDir`)::

    batch/
      plan.json                 what each notebook's kernel runs at the end (plan file)
      pristine/llmcourse/       the hash-checked copy the truth is made from (never in a sandbox)
      public/                   the public cases' answers, one file per exercise
      lib/llmcourse/            the learner build (read-only in every sandbox)
      in/inputs.bin             the hidden cases' INPUTS (read-only in every sandbox)
      jobs/<student>--<nb>/     one per notebook run:
        in/notebook.ipynb       the notebook to execute      (read-only in the sandbox)
        in/job.json             limits and the plan entry     (read-only in the sandbox)
        out/executed.ipynb      the executed notebook         (written by the sandbox)
        out/outputs.bin         the learner's raw outputs     (written by the sandbox)

Files cross between processes in one uncompressed container format (:func:`save` /
:func:`load`): a JSON header and raw array bytes, read with size caps and a dtype
allow-list. There is no zip and no pickle, so a hostile file cannot inflate or run code.

Array keys follow one scheme (:func:`key` / :func:`select`)::

    <exercise>:<case>:a...      inputs (positional args)      <exercise>:<case>:k...  kwargs
    <exercise>:<case>:e<i>      expected item i
    <exercise>:<case>:m<j>:<i>  item i of cataloged mistake j
    <exercise>:<case>:<i>       item i of the learner's output

Everything read from a job's ``out/`` is hostile: :func:`read_regular` refuses links,
FIFOs, devices and files over a size cap before reading a byte.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HIDDEN_BEGIN, HIDDEN_END = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
HIDDEN_PLACEHOLDER = "# (hidden tests were run here)"

# Caps on what the grader reads back from a sandbox (and from a hand-in).
MAX_NOTEBOOK_BYTES = 50 * 2**20  # a hand-in, or an executed notebook
MAX_CELL_CHARS = 1_000_000  # one cell's source
MAX_OUTPUTS_BYTES = 256 * 2**20  # the learner's raw outputs
MAX_HEADER_BYTES = 16 * 2**20


class ProtocolError(ValueError):
    """A file from a kernel or a hand-in that breaks the contract (one line)."""


def strip_hidden(src: str, placeholder: str = "") -> str:
    """Remove every hidden-test region (an unterminated one runs to the end)."""
    while HIDDEN_BEGIN in src:
        start = src.index(HIDDEN_BEGIN)
        end = src.find(HIDDEN_END, start)
        end = len(src) if end < 0 else end + len(HIDDEN_END)
        src = src[:start] + placeholder + src[end:]
    return src


# ---------------------------------------------------------------------------------------
# Paths


def safe_name(text: str) -> str:
    """A name that is safe in a path and in a line of output (non-ASCII etc. escaped)."""
    return "".join(c if (c.isascii() and (c.isalnum() or c in "._-@")) else f"%{ord(c):02x}"
                   for c in text)[:200] or "_"


def printable(text: str, limit: int = 2000) -> str:
    """One line that any file or terminal can take: surrogates (non-UTF-8 file names) and
    control characters escaped, newlines folded."""
    text = str(text).encode("utf-8", "backslashreplace").decode("utf-8")
    text = "".join(c if c.isprintable() else ("\\x%02x" % ord(c) if ord(c) < 256 else repr(c)[1:-1])
                   for c in text.replace("\n", " ").replace("\r", " ").replace("\t", " "))
    return text[:limit]


@dataclass(frozen=True)
class JobDir:
    root: Path

    @property
    def inbox(self) -> Path:
        return self.root / "in"

    @property
    def outbox(self) -> Path:
        return self.root / "out"

    @property
    def notebook(self) -> Path:
        return self.inbox / "notebook.ipynb"

    @property
    def job(self) -> Path:
        return self.inbox / "job.json"

    @property
    def executed(self) -> Path:
        return self.outbox / "executed.ipynb"

    @property
    def outputs(self) -> Path:
        return self.outbox / "outputs.bin"


@dataclass(frozen=True)
class BatchDir:
    root: Path

    @property
    def plan(self) -> Path:
        return self.root / "plan.json"

    @property
    def library(self) -> Path:
        """The learner build of the library (the sandbox's /opt/llmcourse)."""
        return self.root / "lib"

    @property
    def pristine(self) -> Path:
        return self.root / "pristine"

    @property
    def public(self) -> Path:
        return self.root / "public"

    @property
    def inputs_dir(self) -> Path:
        return self.root / "in"

    @property
    def inputs(self) -> Path:
        return self.inputs_dir / "inputs.bin"

    def job(self, student: str, notebook: str) -> JobDir:
        return JobDir(self.root / "jobs" / f"{safe_name(student)}--{safe_name(notebook)}")


# Where the sandbox sees things (fixed paths inside it).
SANDBOX_JOB_IN = "/job/in"
SANDBOX_JOB_OUT = "/job/out"
SANDBOX_INPUTS_DIR = "/job/inputs"
SANDBOX_LIBRARY = "/opt/llmcourse"


# ---------------------------------------------------------------------------------------
# The plan file: notebook name -> {"entries": {exercise id: entry name}}


def write_plan(path: Path, plan: dict[str, dict[str, str]],
               budgets: dict[str, int] | None = None, unrecorded=()) -> None:
    """``budgets``: {challenge id: seconds}; a challenge runs in a step of its own.
    ``unrecorded``: challenges whose step runs without the torch operator record."""
    budgets = budgets or {}
    path.write_text(json.dumps({nb: {"entries": e, "challenges": {x: budgets[x] for x in e if x in budgets},
                                     "unrecorded": sorted(x for x in e if x in unrecorded)}
                                for nb, e in plan.items()}))


def _plan_part(path: Path | str, notebook: str, part: str, convert, empty):
    try:
        return convert(json.loads(Path(path).read_text()).get(notebook, {}).get(part, empty))
    except (OSError, ValueError, TypeError, AttributeError):
        return convert(empty)


def read_unrecorded(path: Path | str, notebook: str) -> list[str]:
    """The challenges of one notebook whose step runs without the operator record."""
    return _plan_part(path, notebook, "unrecorded", lambda v: [str(x) for x in v], [])


def read_challenges(path: Path | str, notebook: str) -> dict[str, int]:
    """{challenge id: budget in seconds} of one notebook."""
    return _plan_part(path, notebook, "challenges",
                      lambda v: {str(k): int(b) for k, b in v.items()}, {})


def challenge_outputs(outputs: str, exid: str) -> str:
    """Where the kernel writes one challenge's outputs (next to the exercises' file)."""
    return f"{outputs}.{safe_name(exid)}"


def read_plan(path: Path | str, notebook: str) -> dict[str, str]:
    """The entries of one notebook ({} when there is nothing to verify)."""
    try:
        plan = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return dict(plan.get(notebook, {}).get("entries", {}))


# ---------------------------------------------------------------------------------------
# Array keys


def key(exid: str, case: int, part: str) -> str:
    return f"{exid}:{case}:{part}"


def expected_key(exid: str, case: int, item: int | str) -> str:
    return key(exid, case, f"e{item}")


def mistake_key(exid: str, case: int, mistake: int, item: int | str) -> str:
    return key(exid, case, f"m{mistake}:{item}")


def output_key(exid: str, case: int, item: int | str) -> str:
    return key(exid, case, str(item))


def select(arrays: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """The arrays under ``prefix``, keyed by the rest of their key."""
    return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}


def expected_items(arrays, exid, case, meta):
    return unpack(select(arrays, key(exid, case, "e")), meta)


def mistake_items(arrays, exid, case, mistake, meta):
    return unpack(select(arrays, key(exid, case, f"m{mistake}:")), meta)


def output_items(arrays, exid, case, meta):
    return unpack({k: v for k, v in select(arrays, key(exid, case, "")).items()
                   if k.isdigit()}, meta)


# ---------------------------------------------------------------------------------------
# Items (see ``checks.core.flatten``) <-> arrays + JSON


def pack(items) -> tuple[dict[str, np.ndarray], list]:
    arrays, meta = {}, []
    for i, (where, arr, tag) in enumerate(items):
        meta.append([where, tag, arr is not None])
        if arr is not None:
            arrays[str(i)] = arr
    return arrays, meta


def unpack(arrays: dict[str, np.ndarray], meta: list) -> list:
    """Inverse of :func:`pack`; a malformed ``meta`` raises KeyError/TypeError/ValueError."""
    if not isinstance(meta, list):
        raise TypeError("items must be a list")
    out = []
    for i, entry in enumerate(meta):
        where, tag, has = entry
        if not (isinstance(where, str) and isinstance(tag, str)):
            raise TypeError("malformed item")
        out.append((where, arrays[str(i)] if has else None, tag))
    return out


# ---------------------------------------------------------------------------------------
# Files

MAGIC = b"LLMC-ARRAYS-1\n"


def save(path_or_file, arrays: dict[str, np.ndarray], meta) -> None:
    """An uncompressed container: MAGIC, 8-byte header length, JSON header, raw bytes."""
    index, blobs, offset = [], [], 0
    for k, a in arrays.items():
        a = np.asarray(a, order="C")
        if a.dtype.kind == "O":
            raise TypeError(f"{k}: object arrays cannot be sent")
        raw = a.tobytes()
        index.append({"key": k, "dtype": a.dtype.str, "shape": list(a.shape), "offset": offset,
                      "nbytes": len(raw)})
        blobs.append(raw)
        offset += len(raw)
    header = json.dumps({"meta": meta, "arrays": index}).encode()
    data = MAGIC + len(header).to_bytes(8, "little") + header + b"".join(blobs)
    if hasattr(path_or_file, "write"):
        path_or_file.write(data)
    else:
        Path(path_or_file).write_bytes(data)


def loads(data: bytes, cap: int = MAX_OUTPUTS_BYTES) -> tuple[dict[str, np.ndarray], object]:
    if len(data) > cap:
        raise ProtocolError(f"larger than {cap} bytes")
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 8:
        raise ProtocolError("not an llmcourse array file")
    n = int.from_bytes(data[len(MAGIC):len(MAGIC) + 8], "little")
    start = len(MAGIC) + 8
    if n > min(MAX_HEADER_BYTES if cap <= MAX_OUTPUTS_BYTES else cap, len(data) - start):
        raise ProtocolError("header too large")
    try:
        header = json.loads(data[start:start + n])
        body = memoryview(data)[start + n:]
        arrays = {}
        for entry in header["arrays"]:
            dt = np.dtype(entry["dtype"])
            shape = tuple(int(s) for s in entry["shape"])
            off, nbytes = int(entry["offset"]), int(entry["nbytes"])
            if dt.kind not in "biufcU" or dt.hasobject or dt.fields:
                raise ProtocolError(f"dtype {dt} not allowed")
            if any(s < 0 for s in shape) or off < 0 or off + nbytes > len(body):
                raise ProtocolError("array outside the file")
            if int(np.prod(shape, dtype=np.int64)) * dt.itemsize != nbytes:
                raise ProtocolError("array size does not match its shape")
            arrays[str(entry["key"])] = np.frombuffer(body[off:off + nbytes], dtype=dt).reshape(shape)
        return arrays, header["meta"]
    except ProtocolError:
        raise
    except (ValueError, TypeError, KeyError, OverflowError) as exc:
        raise ProtocolError(f"malformed array file ({type(exc).__name__})") from None


def load(path: Path | str, cap: int = MAX_OUTPUTS_BYTES) -> tuple[dict[str, np.ndarray], object]:
    return loads(read_regular(Path(path), cap), cap)


def read_regular(path: Path, cap: int) -> bytes:
    """The bytes of a regular file of at most ``cap`` bytes; no links, FIFOs or devices.

    Opened with O_NOFOLLOW|O_NONBLOCK and checked with fstat before reading, so a file
    swapped for a link or a FIFO between the check and the read is refused too."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise ProtocolError(f"{path.name}: cannot read ({exc.strerror or exc})") from None
    if not stat.S_ISREG(st.st_mode):
        raise ProtocolError(f"{path.name}: not a regular file (a link, folder, FIFO or device)")
    if st.st_size > cap:
        raise ProtocolError(f"{path.name}: larger than {cap // 2**20} MB")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise ProtocolError(f"{path.name}: cannot read ({exc.strerror or exc})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > cap:
            raise ProtocolError(f"{path.name}: not a regular file of at most {cap} bytes")
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, min(1 << 20, cap + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > cap:
                raise ProtocolError(f"{path.name}: larger than {cap // 2**20} MB")
        return b"".join(chunks)
    finally:
        os.close(fd)

"""The learner's notebook runs in a bubblewrap (``bwrap``) sandbox: a prisoner, not a guest.

:func:`run_job` starts ``bwrap`` around :mod:`.runner` (which starts the kernel inside the
same sandbox), with:

* own PID, mount, network, IPC, UTS and cgroup namespaces - no network at all (only a
  loopback of its own), no view of the grader's processes, ``/proc`` entries, file
  descriptors or sockets;
* a throwaway unprivileged uid: as an ordinary user, 65534 in a user namespace of its own;
  as ROOT, a real uid of its own per job (:func:`job_uid`, no account has it): bwrap makes
  the namespaces as root and the first process drops to that uid with no capabilities and
  no-new-privs before anything else runs (the kernel never applies RLIMIT_NPROC to root,
  not even to root mapped to 65534 in a user namespace; and as root no user namespace is
  needed at all); ``--cap-drop ALL``, ``--new-session`` (no terminal injection),
  ``--die-with-parent``, ``--clearenv`` with a short, fixed environment;
* a read-only root that holds only ``/usr``, the Python install, the virtual
  environment's packages and the LEARNER BUILD of the library at ``/opt/llmcourse``
  (:mod:`.learner`); one read-only folder with the hidden inputs, the job's read-only
  ``in/`` and writable ``out/``; a private, size-capped ``/tmp`` (the working folder);
* rlimits set before ``bwrap`` starts and inherited by everything inside: address space,
  CPU time, file size, no core dumps, processes (RLIMIT_NPROC; also a pids cgroup where the
  grader may make one: exact per job);
* the whole tree killed at the end: the sandbox's PID 1 dies with ``bwrap``, and with it
  every process inside, daemons included.

Without bubblewrap, :func:`run_job` with ``unsafe=True`` runs the same runner as a plain
child process with the same rlimits (``llmcourse grade --unsafe-no-sandbox``); rows say
"not sandboxed". This module must stay cheap to import: no torch, no llmcourse.checks.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .protocol import (SANDBOX_INPUTS_DIR, SANDBOX_JOB_IN, SANDBOX_JOB_OUT, SANDBOX_LIBRARY,
                       JobDir)

SANDBOX_UID = 65534
# When the grader runs as root, the sandbox's processes get a REAL unprivileged uid of their
# own (one per job, in a range no account uses): the kernel does not apply RLIMIT_NPROC to
# root - not even to root mapped to another uid in a user namespace - so there bwrap sets up
# the namespaces as root (no user namespace needed) and the runner drops to that uid before
# anything else runs.
ROOT_MODE_UIDS = (1_900_000_000, 10_000_000)  # first uid, how many
NO_SANDBOX = ("no sandbox available: {why}. Install bubblewrap (`apt-get install bubblewrap`) "
              "or pass --unsafe-no-sandbox to grade trusted work without one")


def _size(text: str) -> int:
    units = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
    text = text.strip().lower().rstrip("b").rstrip("i")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


@dataclass
class Limits:
    memory: int = 4 * 2**30  # RLIMIT_AS of every process in the sandbox
    fsize: int = 256 * 2**20  # largest file
    tmp: int = 512 * 2**20  # size of the private /tmp
    nproc: int = 256  # processes and threads
    cpu: int = 1800  # CPU seconds per process
    wall: int = 900  # seconds for the whole run


def root_mode() -> bool:
    """Whether sandboxes drop to a real throwaway uid (the grader is root; set
    LLMCOURSE_SANDBOX_USERNS=1 to use a user namespace instead)."""
    return os.geteuid() == 0 and os.environ.get("LLMCOURSE_SANDBOX_USERNS", "") in ("", "0")


def job_uid(job: JobDir) -> int:
    import zlib

    first, count = ROOT_MODE_UIDS
    return first + zlib.crc32(str(job.root).encode()) % count


def _my_processes(uid: int | None = None) -> int:
    """Processes of ``uid`` now (RLIMIT_NPROC counts them all, not just the sandbox's)."""
    uid, n = os.getuid() if uid is None else uid, 0
    for pid in os.listdir("/proc"):
        try:
            n += pid.isdigit() and os.stat(f"/proc/{pid}").st_uid == uid
        except OSError:
            pass
    return n


def set_limits(limits: Limits, nproc_base: int = 0) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (limits.memory, limits.memory))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.fsize, limits.fsize))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu, limits.cpu))
    nproc = limits.nproc + nproc_base
    soft, hard = resource.getrlimit(resource.RLIMIT_NPROC)
    if hard != resource.RLIM_INFINITY:
        nproc = min(nproc, hard)
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))


def bwrap() -> str | None:
    """The bwrap executable ($LLMCOURSE_BWRAP overrides, e.g. to test the refusal)."""
    if "LLMCOURSE_BWRAP" in os.environ:
        path = os.environ["LLMCOURSE_BWRAP"]
        return path if os.access(path, os.X_OK) else None
    return shutil.which("bwrap") or (os.path.exists("/usr/bin/bwrap") and "/usr/bin/bwrap") or None


_PROBE: tuple[bool, str] | None = None


def probe() -> tuple[bool, str]:
    """(True, version) when a user+PID+network namespace sandbox can be made here."""
    global _PROBE
    if _PROBE is None:
        exe = bwrap()
        if exe is None:
            _PROBE = (False, "bubblewrap (bwrap) is not installed")
        else:
            try:
                uid = ROOT_MODE_UIDS[0] if root_mode() else SANDBOX_UID
                tail = (_drop(uid) + ["-c", "import os; print(os.getuid())"] if root_mode()
                        else ["id", "-u"])
                p = subprocess.run([exe, *_namespaces(), *_system_binds(), "--die-with-parent",
                                    "--new-session", *tail],
                                   capture_output=True, text=True, timeout=30)
                if p.returncode == 0 and p.stdout.strip() == str(uid):
                    v = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
                    _PROBE = (True, v.strip() or "bwrap")
                else:
                    why = (p.stderr.strip().splitlines() or ["unknown error"])[-1]
                    _PROBE = (False, f"bwrap cannot make a user namespace here ({why[:200]})")
            except (OSError, subprocess.SubprocessError) as exc:
                _PROBE = (False, f"bwrap failed to start ({exc})")
    return _PROBE


def _namespaces() -> list[str]:
    """Own PID, mount, network, IPC, UTS (and cgroup) namespaces; a user namespace with the
    throwaway uid 65534 - or, as root, none (the uid is dropped inside: :func:`_drop`)."""
    if root_mode():
        return ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
                "--unshare-cgroup-try", "--cap-drop", "ALL", "--cap-add", "CAP_SETUID",
                "--cap-add", "CAP_SETGID"]
    return ["--unshare-all", "--unshare-user", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
            "--cap-drop", "ALL"]


DROP = ("import ctypes, os, sys; u = int(sys.argv[1]); os.setgroups([]); os.setgid(u); "
        "os.setuid(u); ctypes.CDLL(None).prctl(38, 1, 0, 0, 0); "  # PR_SET_NO_NEW_PRIVS
        "os.execv(sys.executable, sys.argv[2:])")


def _drop(uid: int) -> list[str]:
    """The command prefix that becomes ``uid`` (all capabilities gone) and runs the rest."""
    return [sys.executable, "-c", DROP, str(uid), sys.executable]


def _python_roots() -> list[str]:
    """The read-only folders the interpreter and its packages live in."""
    roots = {os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix), sys.prefix,
             os.path.dirname(os.path.realpath(sys.executable))}
    return sorted(r for r in roots if not r.startswith("/usr/") and r != "/usr")


def _system_binds() -> list[str]:
    """/usr, /proc, /dev, the /bin-like links and the interpreter's folders, read-only."""
    cmd = ["--ro-bind", "/usr", "/usr", "--proc", "/proc", "--dev", "/dev"]
    for name in ("bin", "lib", "lib64", "sbin"):
        target = os.path.join("/", name)
        if os.path.islink(target):
            cmd += ["--symlink", os.readlink(target), target]
        elif os.path.isdir(target):
            cmd += ["--ro-bind", target, target]
    return cmd + _parents(_python_roots()) + [a for r in _python_roots() for a in ("--ro-bind", r, r)]


def _parents(paths) -> list[str]:
    """Folders above bind targets, made world-readable (bwrap run by root makes them 0700,
    which the throwaway uid could not enter)."""
    out, seen = [], {"/", "/usr", "/proc", "/dev", "/tmp"}
    for path in paths:
        parts = Path(path).parts
        for i in range(2, len(parts)):
            d = str(Path(*parts[:i]))
            if d not in seen:
                seen.add(d)
                out += ["--perms", "0755", "--dir", d]
    return out


def command(job: JobDir, library: Path, inputs_dir: Path, limits: Limits) -> list[str]:
    python = sys.executable
    cmd = [bwrap(), *_namespaces(), "--die-with-parent", "--new-session",
           "--hostname", "sandbox", "--clearenv", *_system_binds()]
    cmd += _parents([SANDBOX_LIBRARY, SANDBOX_INPUTS_DIR, SANDBOX_JOB_IN, SANDBOX_JOB_OUT])
    cmd += ["--ro-bind", str(library), SANDBOX_LIBRARY,
            "--ro-bind", str(inputs_dir), SANDBOX_INPUTS_DIR,
            "--ro-bind", str(job.inbox), SANDBOX_JOB_IN,
            "--bind", str(job.outbox), SANDBOX_JOB_OUT,
            "--size", str(limits.tmp), "--perms", "1777", "--tmpfs", "/tmp",
            "--perms", "0777", "--dir", "/tmp/work", "--chdir", "/tmp/work"]
    env = {"HOME": "/tmp", "PATH": f"{os.path.dirname(python)}:/usr/bin:/bin",
           "PYTHONPATH": SANDBOX_LIBRARY, "PYTHONDONTWRITEBYTECODE": "1",
           "JUPYTER_RUNTIME_DIR": "/tmp/.jupyter", "IPYTHONDIR": "/tmp/.ipython",
           "MPLCONFIGDIR": "/tmp/.mpl", "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1",
           "LLMCOURSE_SANDBOX": "bwrap", "LANG": "C.UTF-8"}
    for k in ("LLMCOURSE_QUICK",):
        if k in os.environ:
            env[k] = os.environ[k]
    for k, v in env.items():
        cmd += ["--setenv", k, v]
    runner = ["-m", "llmcourse.grading.runner", SANDBOX_JOB_IN, SANDBOX_JOB_OUT]
    if root_mode():
        return cmd + ["--", *_drop(job_uid(job)), *runner]
    return cmd + ["--", python, *runner]


def _pids_cgroup(limit: int) -> str | None:
    """A pids cgroup (v1 or v2) for the sandbox, where this process may make one."""
    for base in ("/sys/fs/cgroup/pids", "/sys/fs/cgroup/unified", "/sys/fs/cgroup"):
        ctl = "pids.max"
        if not os.path.isdir(base) or (base != "/sys/fs/cgroup/pids" and
                                       not os.path.exists(os.path.join(base, "cgroup.procs"))):
            continue
        path = os.path.join(base, f"llmcourse-{os.getpid()}-{time.monotonic_ns()}")
        try:
            os.mkdir(path)
            with open(os.path.join(path, ctl), "w") as f:
                f.write(str(limit))
            return path
        except OSError:
            try:
                os.rmdir(path)
            except OSError:
                pass
    return None


def _child_setup(limits: Limits, cgroup: str | None, uid: int | None = None):
    base = _my_processes(uid)

    def setup():
        if cgroup:
            try:
                with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
                    f.write(str(os.getpid()))
            except OSError:
                pass
        set_limits(limits, base)
    return setup


def library_for(library: Path, job: JobDir) -> Path:
    """The learner build a job runs with: its notebook's (``lib/notebooks/<notebook>``, the
    job folder being ``<student>--<notebook>``), else the default ``lib/``."""
    folder = library / "notebooks"
    if folder.is_dir():
        match = [d for d in folder.iterdir() if job.root.name.endswith("--" + d.name)]
        if match:
            return max(match, key=lambda d: len(d.name))
    return library


@dataclass
class RunReport:
    sandboxed: bool
    returncode: int | None
    seconds: float
    note: str = ""


def run_job(job: JobDir, library: Path, inputs_dir: Path, limits: Limits,
            unsafe: bool = False) -> RunReport:
    """Run one notebook job; kill everything it started; never raise for what it did."""
    t0 = time.monotonic()
    cgroup = None
    library = library_for(library, job)
    if unsafe:
        env = {"HOME": str(job.outbox), "PATH": os.environ.get("PATH", "/usr/bin"),
               "PYTHONPATH": str(library), "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg",
               "JUPYTER_RUNTIME_DIR": str(job.outbox / ".jupyter"), "LLMCOURSE_SANDBOX": "none"}
        if "LLMCOURSE_QUICK" in os.environ:
            env["LLMCOURSE_QUICK"] = os.environ["LLMCOURSE_QUICK"]
        cmd = [sys.executable, "-m", "llmcourse.grading.runner", str(job.inbox), str(job.outbox)]
        kw = {"env": env, "cwd": str(job.outbox)}
    else:
        cmd, kw = command(job, library, inputs_dir, limits), {"env": {}}
    uid = None
    if not unsafe and root_mode():  # the sandbox's own uid writes its out/ folder only
        uid = job_uid(job)
        os.chown(job.outbox, uid, uid)
    cgroup = _pids_cgroup(limits.nproc)
    log = job.root / "stderr.log"  # written by the sandbox: capped by RLIMIT_FSIZE
    with open(log, "wb") as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=err, start_new_session=True,
                                preexec_fn=_child_setup(limits, cgroup, uid), **kw)
    note = ""
    try:
        proc.wait(timeout=limits.wall)
        if proc.returncode and not os.path.lexists(job.executed):
            note = _tail(log)
    except subprocess.TimeoutExpired:
        note = f"the sandbox ran past {limits.wall} s and was killed"
    finally:
        _kill(proc, cgroup)
    return RunReport(not unsafe, proc.returncode, time.monotonic() - t0, note)


def _tail(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 2000))
            lines = f.read().decode(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return (lines or [""])[-1][:200]


def _kill(proc: subprocess.Popen, cgroup: str | None) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    if cgroup:
        procs = os.path.join(cgroup, "cgroup.procs")
        for _ in range(50):  # anything left in the cgroup (the unsafe path's escapees too)
            try:
                pids = [int(p) for p in open(procs).read().split()]
            except OSError:
                break
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.05)
        try:
            os.rmdir(cgroup)
        except OSError:
            pass

"""Start an IPython kernel with the grader's limits: memory, file size, no network.

Run as ``python -m llmcourse.grading.sandbox [--memory BYTES] [--fsize BYTES] -- <ipykernel args>``
(the grader's kernel manager builds this command). Limits are set in this process before
the kernel starts, so the learner's code cannot lift them:

* memory: ``RLIMIT_AS`` - a memory bomb gets ``MemoryError``, not the machine's memory;
* files: ``RLIMIT_FSIZE`` - no filling the disk; core dumps off;
* network: a fresh network namespace with no interfaces when the OS allows it (root, or
  unprivileged user namespaces), and in every case an audit hook - which Python code cannot
  remove - that refuses internet sockets and name lookups.

This module must stay cheap to import: no torch, no llmcourse.checks.
"""

from __future__ import annotations

import ctypes
import os
import resource
import socket
import sys

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
NETWORK_DISABLED = "network access is disabled while grading"


def set_limits(memory: int | None, fsize: int | None) -> None:
    if memory:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    if fsize:
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _unshare(flags: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.unshare(flags) == 0
    except (OSError, AttributeError):
        return False


def isolate_network() -> str:
    """Move this process into an empty network namespace; return how (or 'audit hook only')."""
    uid, gid = os.geteuid(), os.getegid()
    if uid == 0 and _unshare(CLONE_NEWNET):
        return "network namespace"
    if _unshare(CLONE_NEWUSER | CLONE_NEWNET):
        try:  # keep our own uid/gid inside the new user namespace
            with open("/proc/self/setgroups", "w") as f:
                f.write("deny")
            with open("/proc/self/uid_map", "w") as f:
                f.write(f"{uid} {uid} 1")
            with open("/proc/self/gid_map", "w") as f:
                f.write(f"{gid} {gid} 1")
        except OSError:
            pass
        return "user+network namespace"
    return "audit hook only"


_INET = {socket.AF_INET, socket.AF_INET6}


def _audit(event: str, args: tuple) -> None:
    if event in ("socket.connect", "socket.sendto", "socket.sendmsg", "socket.bind"):
        sock = args[0]
        if getattr(sock, "family", None) in _INET:
            raise PermissionError(NETWORK_DISABLED)
    elif event in ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex",
                   "socket.gethostbyaddr"):
        raise PermissionError(NETWORK_DISABLED)


def block_network_calls() -> None:
    sys.addaudithook(_audit)


def _size(text: str) -> int:
    units = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
    text = text.strip().lower().rstrip("b").rstrip("i")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def main(argv: list[str]) -> None:
    memory = fsize = None
    network = False
    while argv and argv[0] != "--":
        opt = argv.pop(0)
        if opt == "--memory":
            memory = _size(argv.pop(0))
        elif opt == "--fsize":
            fsize = _size(argv.pop(0))
        elif opt == "--allow-network":
            network = True
        else:
            raise SystemExit(f"sandbox: unknown option {opt!r}")
    kernel_args = argv[1:]
    set_limits(memory, fsize)
    if not network:
        os.environ["LLMCOURSE_SANDBOX_NETWORK"] = isolate_network()
        block_network_calls()
    sys.argv = ["ipykernel_launcher"] + kernel_args
    from ipykernel import kernelapp

    kernelapp.launch_new_instance()


if __name__ == "__main__":
    main(sys.argv[1:])

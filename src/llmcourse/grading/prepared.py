"""The part of a batch's preparation that does not depend on the batch: the public cases
(``make_public``), the learner builds and a gradebook holding the chapter's cells, kept
between batches in the grader user's cache (:func:`cache_root`), shared by every course folder.

The cache key is the pristine copy's digest, the solutions' digest, the chapter, its exercise
ids, the Python, torch and nbgrader versions and ``LLMCOURSE_FULL_LEARNER_BUILD``: any change
to the course makes a new entry. An entry is written by the grader's own process, before any
learner code of its batch runs, into ``<cache>/prepared/<key>/``, a folder no sandbox binds;
its manifest holds the digest of every file (the ``.pyc`` files too), checked before each use:
an entry that does not match is deleted and made again. With ``--unsafe-no-sandbox`` the
kernels could write there, so the cache is neither read nor written. The hidden cases are
never cached: they depend on the batch's seed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from .learner import LearnerBuild

MANIFEST = "manifest.json"
GRADEBOOK = "gradebook.db"


@dataclass
class Restored:
    info: dict  # what make_public wrote to build.json
    build: LearnerBuild
    gradebook: bool  # the chapter's gradebook was copied too


def cache_key(pristine_digest: str, solutions_digest: str, assignment: str,
              exercise_ids: list[str]) -> str:
    try:
        torch = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch = "-"
    try:
        nbgrader = metadata.version("nbgrader")
    except metadata.PackageNotFoundError:
        nbgrader = "-"
    full = os.environ.get("LLMCOURSE_FULL_LEARNER_BUILD", "") not in ("", "0")
    parts = [pristine_digest, solutions_digest, assignment, ",".join(exercise_ids),
             sys.version, torch, nbgrader, str(full)]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


def files_digest(root: Path) -> str:
    """sha256 over every regular file under ``root`` (names and bytes), or of ``root`` itself
    when it is a file; symlinks refused."""
    h = hashlib.sha256()
    for p in [root] if root.is_file() else sorted(root.rglob("*")):
        if p.is_symlink():
            raise ValueError(f"symlink in a prepared entry: {p}")
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def cache_root() -> Path:
    """``$LLMCOURSE_CACHE``, else ``$XDG_CACHE_HOME/llmcourse``, else ``~/.cache/llmcourse``:
    the grader's own user's folder, which no sandbox binds."""
    explicit = os.environ.get("LLMCOURSE_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "llmcourse"


def entry_dir(key: str, root: Path | None = None) -> Path:
    return (root or cache_root()) / "prepared" / key


def restore(entry: Path, library: Path, public: Path,
            gradebook: Path | None = None) -> Restored | None:
    """Copy a checked entry to ``library`` and ``public`` (and its gradebook, which holds the
    chapter's cells and no learner, to ``gradebook`` when that does not exist yet); None when
    there is none (or it does not match its manifest, and is then removed)."""
    try:
        manifest = json.loads((entry / MANIFEST).read_text())
        for name, digest in manifest["digest"].items():
            if name not in ("library", "public", GRADEBOOK) or files_digest(entry / name) != digest:
                raise ValueError(f"{name} does not match its manifest")
        shutil.copytree(entry / "library", library, symlinks=True)
        shutil.copytree(entry / "public", public, symlinks=True)
        copied = gradebook is not None and GRADEBOOK in manifest["digest"] and not gradebook.exists()
        if copied:
            shutil.copyfile(entry / GRADEBOOK, gradebook)
        build = manifest["build"]
        return Restored(manifest["info"], LearnerBuild(
            library, bool(build["full"]), list(build["reference"]),
            {n: library / r for n, r in build["notebooks"].items()}), copied)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        shutil.rmtree(library, ignore_errors=True)
        shutil.rmtree(public, ignore_errors=True)
        if isinstance(exc, FileNotFoundError):  # none yet (or another grader replaced it)
            return None
        shutil.rmtree(entry, ignore_errors=True)
        print(f"llmcourse: prepared entry {entry.name} discarded ({exc}); making it again",
              file=sys.stderr)
        return None


def store(entry: Path, info: dict, build: LearnerBuild, public: Path,
          gradebook: Path | None = None) -> None:
    """Write an entry (atomically: made in a temporary folder, renamed into place), or add
    ``gradebook`` (a gradebook this batch made that holds the chapter's cells and no learner
    yet) to an entry that lacks one. Two graders writing at once: the first one wins."""
    try:
        if (entry / MANIFEST).exists():
            if gradebook is not None:
                _add_gradebook(entry, gradebook)
            return
        entry.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        public.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_name(f"{entry.name}.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(build.root, tmp / "library", symlinks=True)
        shutil.copytree(public, tmp / "public", symlinks=True)
        names = ["library", "public"]
        if gradebook is not None:
            shutil.copyfile(gradebook, tmp / GRADEBOOK)
            names.append(GRADEBOOK)
        manifest = {"info": info,
                    "build": {"full": build.full, "reference": build.reference,
                              "notebooks": {n: str(p.relative_to(build.root))
                                            for n, p in build.notebooks.items()}},
                    "digest": {n: files_digest(tmp / n) for n in names}}
        (tmp / MANIFEST).write_text(json.dumps(manifest))
        try:
            os.rename(tmp, entry)
        except OSError:
            if not (entry / MANIFEST).exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another grader's entry is in place
    except OSError as exc:  # a cache that cannot be written costs time, not a grade
        print(f"llmcourse: could not keep the prepared chapter ({exc})", file=sys.stderr)


def _add_gradebook(entry: Path, gradebook: Path) -> None:
    manifest = json.loads((entry / MANIFEST).read_text())
    if GRADEBOOK in manifest["digest"]:
        return
    tmp = entry / f"{GRADEBOOK}.tmp{os.getpid()}"
    shutil.copyfile(gradebook, tmp)
    os.replace(tmp, entry / GRADEBOOK)
    manifest["digest"][GRADEBOOK] = files_digest(entry / GRADEBOOK)
    (entry / f"{MANIFEST}.tmp{os.getpid()}").write_text(json.dumps(manifest))
    os.replace(entry / f"{MANIFEST}.tmp{os.getpid()}", entry / MANIFEST)

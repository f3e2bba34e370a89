"""The prepared chapter kept between batches (llmcourse.grading.prepared): a second batch
reuses it and grades the same, an entry that no longer matches its manifest is made again,
any change to the course makes a new key, and --unsafe-no-sandbox neither reads nor writes it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import filled_student_notebook, grade, sandbox_available, save

from llmcourse.grading import prepared
from llmcourse.grading.learner import LearnerBuild

CHAPTER, NOTEBOOK = "00-getting-started", "warmup"


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """A cache of this test's own (the suite's shared one is used by other workers)."""
    monkeypatch.setenv("LLMCOURSE_CACHE", str(tmp_path / "cache"))


def _entries(_course=None) -> list[Path]:
    folder = Path(os.environ["LLMCOURSE_CACHE"]) / "prepared"
    return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def _scores(rows) -> list[tuple[str, float, float]]:
    return [(r["notebook"], r["score"], r["max_score"]) for r in rows]


@pytest.mark.slow
@pytest.mark.skipif(not sandbox_available()[0], reason="no sandbox: the cache is off without one")
def test_second_batch_reuses_the_entry_and_a_tampered_one_is_made_again(tmp_path):
    path = save(tmp_path / "subs" / "ana" / f"{NOTEBOOK}.ipynb", filled_student_notebook(CHAPTER, NOTEBOOK))
    course = tmp_path / "course"
    proc, first = grade(path.parent, course, "--no-feedback")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert first and all(r["score"] == r["max_score"] > 0 for r in first)
    [entry] = _entries(course)
    manifest = json.loads((entry / "manifest.json").read_text())
    assert set(manifest["digest"]) >= {"library", "public"}
    stamp = {p: p.stat().st_mtime_ns for p in entry.rglob("*")}

    proc, second = grade(path.parent, course, "--no-feedback", "--regrade")
    assert proc.returncode == 0 and _scores(second) == _scores(first)
    assert {p: p.stat().st_mtime_ns for p in entry.rglob("*")} == stamp  # read, not written

    # an entry changed behind the grader's back (here: the learner build's checks) is not used
    victim = next((entry / "library").rglob("core.py"))
    victim.write_text(victim.read_text() + "\nRIGGED = True\n")
    proc, third = grade(path.parent, course, "--no-feedback", "--regrade")
    assert proc.returncode == 0 and _scores(third) == _scores(first)
    assert "discarded" in proc.stderr
    [again] = _entries(course)
    assert "RIGGED" not in next((again / "library").rglob("core.py")).read_text()


@pytest.mark.slow
def test_unsafe_mode_neither_reads_nor_writes_the_cache(tmp_path):
    path = save(tmp_path / "subs" / "bo" / f"{NOTEBOOK}.ipynb", filled_student_notebook(CHAPTER, NOTEBOOK))
    course = tmp_path / "course"
    proc, rows = grade(path.parent, course, "--no-feedback", "--unsafe-no-sandbox")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert rows and _entries(course) == []


def test_every_part_of_the_key_changes_it(monkeypatch):
    base = ("p" * 64, "s" * 64, CHAPTER, ["00.a", "00.b"])
    key = prepared.cache_key(*base)
    for i, other in enumerate(("q" * 64, "t" * 64, "01-ngram", ["00.a"])):
        changed = list(base)
        changed[i] = other
        assert prepared.cache_key(*changed) != key
    monkeypatch.setenv("LLMCOURSE_FULL_LEARNER_BUILD", "1")
    assert prepared.cache_key(*base) != key


def _entry(tmp_path: Path) -> tuple[Path, LearnerBuild]:
    lib, public = tmp_path / "build", tmp_path / "public"
    (lib / "llmcourse").mkdir(parents=True)
    (lib / "llmcourse" / "__init__.py").write_text("")
    public.mkdir()
    (public / "build.json").write_text("{}")
    build = LearnerBuild(lib, False, ["bpe"], {})
    entry = prepared.entry_dir("k")
    prepared.store(entry, {"00.a": {"kind": "function"}}, build, public)
    return entry, build


def test_an_entry_round_trips_and_a_symlink_in_it_is_refused(tmp_path):
    entry, build = _entry(tmp_path)
    got = prepared.restore(entry, tmp_path / "lib1", tmp_path / "pub1")
    assert got is not None and got.info == {"00.a": {"kind": "function"}}
    assert got.build.reference == ["bpe"] and (tmp_path / "lib1" / "llmcourse" / "__init__.py").exists()
    (entry / "library" / "llmcourse" / "escape").symlink_to("/etc/passwd")
    assert prepared.restore(entry, tmp_path / "lib2", tmp_path / "pub2") is None
    assert not entry.exists() and not (tmp_path / "lib2").exists()
    assert prepared.restore(entry, tmp_path / "lib3", tmp_path / "pub3") is None  # none: made again


def test_a_file_added_to_an_entry_is_refused(tmp_path):
    entry, _ = _entry(tmp_path)
    (entry / "library" / "llmcourse" / "extra.py").write_text("x = 1\n")
    assert prepared.restore(entry, tmp_path / "lib", tmp_path / "pub") is None

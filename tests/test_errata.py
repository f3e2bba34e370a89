"""The appendix "Errata of the source documents": every entry complete, every link valid.

The page lives in solutions/appendix/ (a folder of pages only, no assignment) and the release
copies it to chapters/appendix/, where the book shows it (listed last in _toc.yml).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "solutions" / "appendix" / "errata.md"
SOURCES_DIR = ROOT.parent / "shared" / "sources"  # the Chinese documents, next to the repository
SOURCES = ("000_2cc4fb38be20413f.txt", "001_95ab93885b02fdb4.txt", "002_24bad805e8b8bf93.txt",
           "003_720987026110a199.txt", "004_a9e8ed57317e3093.txt")
FIELDS = ("Source", "Kind", "What it says", "Correct", "Reference", "Taught in")
KINDS = {"error", "imprecise", "typesetting"}
LINK = re.compile(r"(?<!!)\[[^\]]+\]\(([^)\s]+)\)")
ENTRY = re.compile(r"^### (\d+)\. (.+)$", re.M)


def entries(text: str) -> list[tuple[int, str, str]]:
    """(number, title, body) of every numbered entry; a body ends at the next heading."""
    heads = list(ENTRY.finditer(text))
    out = []
    for m in heads:
        rest = text[m.end():]
        end = re.search(r"^#{1,3} ", rest, re.M)
        out.append((int(m.group(1)), m.group(2), rest[:end.start()] if end else rest))
    return out


def fields(body: str) -> dict[str, str]:
    """The '- **Name:** text' bullets of an entry (continuation lines joined)."""
    found = {}
    for m in re.finditer(r"^- \*\*([^*]+):\*\* (.*?)(?=^- \*\*|\Z)", body, re.M | re.S):
        found[m.group(1)] = " ".join(m.group(2).split())
    return found


def toc_files() -> set[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    files = {toc["root"]}

    def walk(items):
        for e in items or []:
            if "file" in e:
                files.add(e["file"])
            walk(e.get("sections"))
            walk(e.get("chapters"))

    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    return files


def check_link(page: Path, target: str) -> str | None:
    """None if `target`, written in `page`, resolves (file and anchor); else the problem."""
    if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
        return None
    path, _, anchor = target.partition("#")
    dest = (page.parent / path).resolve() if path else page
    if not dest.is_file():
        return f"{target}: no such file ({dest})"
    if anchor:
        text = dest.read_text(encoding="utf-8")
        labels = set(re.findall(r"^\(([^)\s]+)\)=\s*$", text, re.M))
        if anchor not in labels:
            return f"{target}: no target ({anchor})= in {dest.name}"
    return None


def test_every_entry_has_its_parts():
    text = PAGE.read_text(encoding="utf-8")
    found = entries(text)
    assert len(found) >= 20, "the appendix lists every error of the five sources"
    assert [n for n, _, _ in found] == list(range(1, len(found) + 1)), "entries numbered 1, 2, ..."
    problems = []
    for n, title, body in found:
        f = fields(body)
        if list(f) != list(FIELDS):
            problems.append(f"entry {n} ({title}): fields {list(f)}, want {list(FIELDS)}")
            continue
        if not any(name in f["Source"] for name in SOURCES):
            problems.append(f"entry {n}: Source names none of the five documents")
        if f["Kind"] not in KINDS:
            problems.append(f"entry {n}: Kind {f['Kind']!r} not in {sorted(KINDS)}")
        if not re.search(r"(19|20)\d\d", f["Reference"]) and "documentation" not in f["Reference"]:
            problems.append(f"entry {n}: Reference has no year (a paper) and no documentation")
        if not LINK.search(f["Taught in"]):
            problems.append(f"entry {n}: Taught in has no link to a course page")
        for field in ("What it says", "Correct"):
            if len(f[field]) < 30:
                problems.append(f"entry {n}: {field} is too short")
    assert not problems, "\n".join(problems)


def test_every_source_document_is_covered():
    text = PAGE.read_text(encoding="utf-8")
    for name in SOURCES:
        assert any(name in fields(body).get("Source", "") for _, _, body in entries(text)), name
    if SOURCES_DIR.is_dir():  # the documents themselves are not part of the repository
        assert sorted(p.name for p in SOURCES_DIR.glob("*.txt")) == sorted(SOURCES)


@pytest.mark.parametrize("side", ["solutions", "chapters"])
def test_links_resolve(side):
    page = ROOT / side / "appendix" / "errata.md"
    assert page.is_file(), f"{page} missing: run `llmcourse release --chapter appendix`"
    targets = LINK.findall(page.read_text(encoding="utf-8"))
    assert len(targets) >= 28
    problems = [p for t in targets if (p := check_link(page, t))]
    assert not problems, "\n".join(problems)
    if side == "chapters":  # what the book links to must be built, i.e. be in the TOC
        toc = toc_files()
        for t in targets:
            dest = (page.parent / t.partition("#")[0]).resolve()
            doc = dest.relative_to(ROOT).with_suffix("").as_posix()
            assert doc in toc, f"{t}: {doc} is not in _toc.yml"
        assert "chapters/appendix/errata" in toc


def test_check_link_catches_broken_links(tmp_path):
    (tmp_path / "a.md").write_text("(here)=\n# A\n", encoding="utf-8")
    page = tmp_path / "b.md"
    assert check_link(page, "a.md") is None
    assert check_link(page, "a.md#here") is None
    assert check_link(page, "https://example.org/x") is None
    assert "no such file" in check_link(page, "missing.md")
    assert "no target" in check_link(page, "a.md#elsewhere")


def test_release_copies_the_appendix(tmp_path):
    from llmcourse.grading.release import release

    out = tmp_path / "chapters"
    release(ROOT, out, log=lambda *a: None, only=["appendix"])
    assert sorted(p.name for p in out.iterdir()) == ["appendix"]
    assert (out / "appendix" / "errata.md").read_bytes() == PAGE.read_bytes()
    assert (ROOT / "chapters" / "appendix" / "errata.md").read_bytes() == PAGE.read_bytes(), \
        "chapters/appendix is stale: run `llmcourse release --chapter appendix`"

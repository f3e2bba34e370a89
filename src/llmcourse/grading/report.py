"""The instructor's report of a batch: what to look at before the next lecture.

One self-contained HTML page (no script, no network): per chapter and notebook, a histogram
of each graded cell's points and of the notebook total across learners, and the table
"mistake -> how many learners", made from the named diagnoses the verification wrote into
each cell's reason. Every name and line from a hand-in is escaped.
"""

from __future__ import annotations

import html
import re
from collections import Counter, defaultdict

EXERCISE = re.compile(r"(\d\d\.[A-Za-z0-9_]+): ")


def diagnoses(reason: str):
    """(exercise, mistake) pairs in a cell's reason ('00.x: message - diagnosis: name; ...')."""
    exid = None
    for seg in (reason or "").split("; "):
        m = EXERCISE.match(seg)
        exid = m.group(1) if m else exid
        if " - diagnosis: " in seg and exid:
            yield exid, seg.split(" - diagnosis: ", 1)[1].strip()


def _get(row, name):
    return row[name] if isinstance(row, dict) else getattr(row, name)


def _cells(row):
    return [c if isinstance(c, dict) else c.__dict__ for c in _get(row, "cells")]


def mistakes(rows) -> list[tuple[str, str, int]]:
    """(exercise, mistake, learners) for every named diagnosis, most learners first."""
    who: dict[tuple[str, str], set] = defaultdict(set)
    for r in rows:
        for c in _cells(r):
            for exid, name in diagnoses(c.get("reason") or ""):
                who[(exid, name.strip())].add(_get(r, "student"))
    return sorted(((e, m, len(s)) for (e, m), s in who.items()), key=lambda t: (-t[2], t[0], t[1]))


def _histogram(title: str, values: list[float], top: float) -> str:
    """An inline SVG bar chart of how many learners got each score (0..top)."""
    counts = Counter(round(v, 2) for v in values)
    keys = sorted(set(counts) | {0.0, round(top, 2)})
    width, height, pad = max(160, 34 * len(keys) + 20), 120, 18
    most = max(counts.values(), default=1)
    bar = (width - 20) / len(keys)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 2 * pad}" '
             f'role="img" aria-label="{html.escape(title)}">']
    for i, k in enumerate(keys):
        h = height * counts.get(k, 0) / most
        x = 10 + i * bar
        parts.append(f'<rect x="{x + 2:.1f}" y="{pad + height - h:.1f}" width="{bar - 4:.1f}" '
                     f'height="{h:.1f}" fill="#4a7ab5"><title>{counts.get(k, 0)} learners: '
                     f'{k:g}</title></rect>')
        parts.append(f'<text x="{x + bar / 2:.1f}" y="{pad + height + 14}" font-size="11" '
                     f'text-anchor="middle">{k:g}</text>')
        if counts.get(k):
            parts.append(f'<text x="{x + bar / 2:.1f}" y="{pad + height - h - 3:.1f}" font-size="11" '
                         f'text-anchor="middle">{counts[k]}</text>')
    parts.append("</svg>")
    return (f'<figure><figcaption>{html.escape(title)}</figcaption>{"".join(parts)}</figure>')


def report_html(rows, title: str = "Grading report") -> str:
    """The whole page, as text."""
    esc = html.escape
    by_nb: dict[tuple[str, str], list] = defaultdict(list)
    for r in rows:
        if _get(r, "notebook") != "-":
            by_nb[(_get(r, "assignment"), _get(r, "notebook"))].append(r)
    learners = sorted({_get(r, "student") for r in rows})
    out = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title>",
           "<style>body{font-family:sans-serif;max-width:70em;margin:2em auto}figure{display:inline-block;"
           "margin:.5em 1em}table{border-collapse:collapse}td,th{border:1px solid #bbb;padding:.2em .6em}"
           "</style></head><body>", f"<h1>{esc(title)}</h1>",
           f"<p>{len(learners)} learners, {len(rows)} rows.</p>"]
    for (assignment, notebook), group in sorted(by_nb.items()):
        out.append(f"<h2>{esc(assignment)} / {esc(notebook)}</h2>")
        top = max((_get(r, "max_score") for r in group), default=0)
        out.append(_histogram(f"total ({len(group)} learners)", [_get(r, "score") for r in group], top))
        cells: dict[str, list] = defaultdict(list)
        tops: dict[str, float] = {}
        for r in group:
            for c in _cells(r):
                cells[c["grade_id"]].append(c["points"])
                tops[c["grade_id"]] = c["max_points"]
        for gid, pts in cells.items():
            out.append(_histogram(gid, pts, tops[gid]))
    found = mistakes(rows)
    out.append("<h2>Most common mistakes</h2>")
    if found:
        out.append("<table><tr><th>exercise</th><th>mistake</th><th>learners</th></tr>")
        out += [f"<tr><td>{esc(e)}</td><td>{esc(m)}</td><td>{n}</td></tr>" for e, m, n in found]
        out.append("</table>")
    else:
        out.append("<p>No named mistake in this batch.</p>")
    problems = Counter(p for r in rows for p in _get(r, "problems"))
    if problems:
        out.append("<h2>Problems with hand-ins</h2><table><tr><th>problem</th><th>rows</th></tr>")
        out += [f"<tr><td>{esc(p)}</td><td>{n}</td></tr>" for p, n in problems.most_common(30)]
        out.append("</table>")
    out.append("<h2>Learners</h2><table><tr><th>learner</th><th>chapter</th><th>notebook</th>"
               "<th>score</th></tr>")
    out += [f"<tr><td>{esc(_get(r, 'student'))}</td><td>{esc(_get(r, 'assignment'))}</td>"
            f"<td>{esc(_get(r, 'notebook'))}</td><td>{_get(r, 'score'):g}/{_get(r, 'max_score'):g}</td></tr>"
            for r in sorted(rows, key=lambda r: (_get(r, "score"), _get(r, "student")))]
    out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out)

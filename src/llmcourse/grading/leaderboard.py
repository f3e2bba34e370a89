"""The challenge leaderboard of a batch: ``llmcourse grade ... --leaderboard board.html``.

One self-contained HTML page (no script, no network) that an instructor can publish. Per
challenge: every learner's figure, ranked best first, as a bar chart with the floor drawn as
the limit nobody can pass and the band limits marked, and the same figures as a table.
Learner ids can be replaced by aliases (``--hash-ids``: an HMAC of the id with a secret
salt, so an alias cannot be reversed by trying names); the instructor keeps the salt and
can tell each learner their alias. Every name from a hand-in is escaped.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import math
from collections import defaultdict

esc = html.escape


def alias(student: str, salt: str) -> str:
    return "learner-" + hmac.new(salt.encode(), student.encode("utf-8", "backslashreplace"),
                                 hashlib.sha256).hexdigest()[:10]


def entries(rows) -> dict[str, list[dict]]:
    """{challenge id: [{"student", "figure", "floor", "credit", "message", ...}]}, each
    learner once (their best figure when a batch holds several)."""
    found: dict[str, dict[str, dict]] = defaultdict(dict)
    for r in rows:
        student = r["student"] if isinstance(r, dict) else r.student
        cells = r["cells"] if isinstance(r, dict) else r.cells
        for c in cells:
            figures = c["figures"] if isinstance(c, dict) else c.figures
            for exid, f in (figures or {}).items():
                if f.get("figure") is None:
                    continue
                e = dict(f, student=student)
                old = found[exid].get(student)
                lower = f.get("lower_is_better", True)
                if old is None or ((e["figure"] < old["figure"]) if lower else (e["figure"] > old["figure"])):
                    found[exid][student] = e
    out = {}
    for exid, by in sorted(found.items()):
        vals = list(by.values())
        lower = vals[0].get("lower_is_better", True)
        out[exid] = sorted(vals, key=lambda e: (e["figure"] if lower else -e["figure"], e["student"]))
    return out


def students(rows, chapter: str) -> set[str]:
    """The learners of the batch graded in chapter ``NN``."""
    get = lambda r, k: r[k] if isinstance(r, dict) else getattr(r, k)  # noqa: E731
    return {get(r, "student") for r in rows if str(get(r, "assignment"))[:2] == chapter}


def _chart(exid: str, ranked: list[dict], names: list[str]) -> str:
    """Horizontal bars (one per learner) from 0 to the figure; the floor as a red line."""
    unit = ranked[0].get("unit", "")
    floor = ranked[0].get("floor")
    finite = [e["figure"] for e in ranked if math.isfinite(e["figure"])]
    top = max(finite + ([floor] if floor is not None else []) + [1e-9]) * 1.1
    left, width, bar, pad = 170, 520, 18, 30
    height = pad * 2 + bar * len(ranked) + 12
    x = lambda v: left + width * min(v, top) / top  # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 40}" height="{height}" '
             f'role="img" aria-label="{esc(exid)}: figures of {len(ranked)} learners">']
    for i, (e, name) in enumerate(zip(ranked, names)):
        y = pad + i * bar
        v = e["figure"]
        w = x(v) - left if math.isfinite(v) else width
        parts.append(f'<text x="{left - 6}" y="{y + bar - 5}" font-size="11" text-anchor="end">'
                     f'{i + 1}. {esc(name)}</text>')
        parts.append(f'<rect class="bar" x="{left}" y="{y + 2}" width="{w:.1f}" height="{bar - 4}" '
                     f'fill="#4a7ab5"><title>{esc(name)}: {v:.4g} {esc(unit)}</title></rect>')
        parts.append(f'<text x="{left + w + 4:.1f}" y="{y + bar - 5}" font-size="11">{v:.4g}</text>')
    for limit, name in ranked[0].get("limits", []):  # the band limits, dashed
        if 0 < limit < top:
            lx = x(limit)
            parts.append(f'<line class="band" x1="{lx:.1f}" y1="{pad - 4}" x2="{lx:.1f}" '
                         f'y2="{height - pad + 6}" stroke="#888" stroke-dasharray="3,3"/>')
            parts.append(f'<text x="{lx + 2:.1f}" y="{height - pad + 16}" font-size="10" '
                         f'fill="#666">{esc(str(name))}</text>')
    if floor is not None:
        fx = x(floor)
        parts.append(f'<line class="floor" x1="{fx:.1f}" y1="{pad - 12}" x2="{fx:.1f}" y2="{height - pad + 6}" '
                     f'stroke="#c0392b" stroke-width="2"/>')
        parts.append(f'<text x="{fx + 4:.1f}" y="{pad - 16}" font-size="11" fill="#c0392b">'
                     f'floor {floor:.4g} {esc(unit)}: nobody can pass it</text>')
    parts.append(f'<text x="{left}" y="{height - 6}" font-size="11">{esc(unit)} '
                 f'({"lower" if ranked[0].get("lower_is_better", True) else "higher"} is better)</text>')
    parts.append("</svg>")
    return "".join(parts)


def leaderboard_html(rows, hash_ids: bool = False, salt: str = "", title: str = "Challenge leaderboard") -> str:
    boards = entries(rows)
    out = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title>",
           "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:"
           "collapse}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left}</style></head><body>",
           f"<h1>{esc(title)}</h1>"]
    if hash_ids:
        out.append("<p>Learners appear under aliases; ask your instructor for yours.</p>")
    if not boards:
        out.append("<p>No challenge was graded in this batch.</p>")
    for exid, ranked in boards.items():
        missing = len(students(rows, exid[:2])) - len(ranked)
        names = [alias(e["student"], salt) if hash_ids else e["student"] for e in ranked]
        unit = ranked[0].get("unit", "")
        out.append(f"<section class='challenge' id='{esc(exid)}'><h2>{esc(exid)}</h2>")
        out.append(_chart(exid, ranked, names))
        out.append(f"<table><tr><th>rank</th><th>learner</th><th>{esc(unit)}</th><th>above the floor</th>"
                   "<th>credit</th></tr>")
        for i, (e, name) in enumerate(zip(ranked, names)):
            gap = "" if e.get("floor") is None else f"{e['figure'] - e['floor']:.4g}"
            out.append(f"<tr><td>{i + 1}</td><td>{esc(name)}</td><td>{e['figure']:.4g}</td><td>{gap}</td>"
                       f"<td>{float(e.get('credit', 0)):.0%}</td></tr>")
        out.append("</table>")
        if missing > 0:
            out.append(f"<p>{missing} more learner(s) had no measurable result (not implemented, "
                       "over the time budget, or output that could not be measured).</p>")
        out.append("</section>")
    out.append("</body></html>")
    return "".join(out)

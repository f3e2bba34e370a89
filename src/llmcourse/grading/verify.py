"""Verification outside the kernel.

1. ``python -m llmcourse.grading.verify SEED INPUTS EXERCISE...`` runs in a process of the
   grader's own (never the learner's): it makes each exercise's hidden cases from a seed
   chosen at grading time, writes the *inputs* to INPUTS (for the kernel) and prints the
   expected outputs, each known mistake's outputs and the forbidden-shortcut rules to stdout.
2. The kernel runs the learner's functions on those inputs (:mod:`.harness`).
3. :func:`judge` compares the kernel's outputs with the expected ones in the grader's
   process, using NumPy only, and names the mistake when one matches.

A learner who patches torch, numpy, ``check`` or the test cells inside the kernel changes
nothing here: the comparison and the expected values never pass through the kernel.
"""

from __future__ import annotations

import io
import json
import os
import time
import subprocess
import sys
import zlib
from dataclasses import dataclass

from ..checks.core import compare, exception_line
from . import codec
from .opsmode import forbidden_ops
from .protocol import (ProtocolError, challenge_outputs, expected_items, expected_key, key,
                       mistake_items, mistake_key, output_items, pack)


def case_seed(seed: int, exercise_id: str) -> int:
    return (seed + zlib.crc32(exercise_id.encode())) % (2**31)


def make_cases(seed: int, inputs_path: str, exercise_ids: list[str]) -> bytes:
    """Inputs -> ``inputs_path`` (written atomically); expected outputs -> returned npz bytes."""
    from ..checks.runner import _clone, get  # imports torch and the specs: trusted process only
    from ..checks.core import flatten, tolerance

    in_arrays, in_meta, ex_arrays, ex_meta = {}, {}, {}, {}
    for exid in exercise_ids:
        ex = get(exid)
        in_meta[exid], ex_meta[exid] = [], {"entry": ex.entry, "cases": [],
                                            "forbid": [[r.target, r.why, list(r.allow)] for r in ex.rules],
                                            "uses": [[d, get(d).entry] for d in getattr(ex, "uses", ())]}
        if getattr(ex, "kind", "") == "challenge":
            ex_meta[exid]["challenge"] = ex.describe()
        for ci, case in enumerate(ex.cases(case_seed(seed, exid), True)):
            in_meta[exid].append({"label": case.label,
                                  "args": codec.encode(tuple(case.args), in_arrays, key(exid, ci, "a")),
                                  "kwargs": codec.encode(case.kwargs, in_arrays, key(exid, ci, "k"))})
            expected = flatten(ex.expected(_clone(case)))
            rtol, atol = tolerance(case, expected)
            arrays, meta = pack(expected)
            ex_arrays.update({expected_key(exid, ci, k): v for k, v in arrays.items()})
            mistakes = []
            for mi, m in enumerate(ex.mistakes):
                try:
                    arrays, m_meta = pack(flatten(ex.call(m.impl, _clone(case))))
                except Exception as exc:  # a mistake that crashes is matched by its error
                    mistakes.append([mi, m.name, m.explain, exception_line(exc)])
                    continue
                ex_arrays.update({mistake_key(exid, ci, mi, k): v for k, v in arrays.items()})
                mistakes.append([mi, m.name, m.explain, m_meta])
            ex_meta[exid]["cases"].append({"label": case.label, "rtol": rtol, "atol": atol,
                                           "expected": meta, "mistakes": mistakes})
    tmp = inputs_path + ".tmp"
    codec.save(tmp, in_arrays, in_meta)
    os.replace(tmp, inputs_path)
    buf = io.BytesIO()
    codec.save(buf, ex_arrays, ex_meta)
    return buf.getvalue()


def make_public(public_dir: str, exercise_ids: list[str]) -> None:
    """The learner build's data: each exercise's public cases with their answers, one file
    per exercise, then ``build.json`` (how each is called; None = needs its spec module)."""
    from ..checks.runner import get
    from .learner_specs import public_data, spec_kind
    from .opsmode import op_rule
    from .protocol import safe_name

    os.makedirs(public_dir, exist_ok=True)
    info = {}
    for exid in exercise_ids:
        ex = get(exid)
        kind = spec_kind(ex)
        info[exid] = {"kind": kind, "allow_reference": list(ex.allow_reference)}
        if getattr(ex, "kind", "") == "challenge":
            info[exid]["budget_s"] = int(ex.budget_s)
            # recording slows per-element torch code ~6x: a challenge without operator rules
            # runs its budgeted step unrecorded (its rules are the static scan's)
            info[exid]["record_ops"] = any(op_rule(r.target) for r in ex.rules)
        if kind is not None:
            arrays, spec = public_data(ex, 0)
            codec.save(os.path.join(public_dir, safe_name(exid) + ".bin"), arrays, spec)
    tmp = os.path.join(public_dir, "build.json.tmp")
    with open(tmp, "w") as f:
        json.dump(info, f)
    os.replace(tmp, os.path.join(public_dir, "build.json"))


class CaseMaker:
    """Runs :func:`make_public` and :func:`make_cases` in a separate process of the grader's,
    from the pristine copy of the course (``library``), started before any learner code
    runs. Torch and the specs are imported there, never in the grader's own process, and
    the expected outputs come back through a pipe no sandbox can see."""

    def __init__(self, seed: int, inputs_path: str, exercise_ids: list[str],
                 public_dir: str = "", library: str = ""):
        self.inputs_path, self.public_dir = inputs_path, public_dir
        env = dict(os.environ)
        if library:
            env["PYTHONPATH"] = library
            env["LLMCOURSE_EXPECT_LIBRARY"] = library
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llmcourse.grading.verify", str(seed), inputs_path,
             public_dir or "-", *exercise_ids],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=library or None)
        self._result: tuple[dict, dict] | None = None

    def public(self, timeout: float = 300) -> dict:
        """Wait for the learner build's data; {exercise id: {"kind", "allow_reference"}}."""
        path = os.path.join(self.public_dir, "build.json")
        deadline = time.monotonic() + timeout
        while not os.path.exists(path):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.result(timeout=5)  # raises with the case maker's last line
                raise RuntimeError("could not make the public cases")
            time.sleep(0.02)
        with open(path) as f:
            return json.load(f)

    def result(self, timeout: float = 300) -> tuple[dict, dict]:
        if self._result is None:
            try:
                out, err = self.proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                raise RuntimeError("could not make the hidden cases in time") from None
            if self.proc.returncode != 0:
                last = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
                raise RuntimeError(f"could not make the hidden cases: {last[0]}")
            self._result = codec.loads(out, cap=2**31)
        return self._result


@dataclass
class Verdict:
    ok: bool
    message: str = ""
    mistake: str = ""
    credit: float = 1.0  # a challenge's band: the fraction of the points it earns
    figure: float | None = None  # a challenge's measured figure (for the leaderboard)
    floor: float | None = None
    unit: str = ""
    lower_is_better: bool = True
    limits: tuple = ()  # a challenge's band limits on the figure's own scale: ((x, name), ...)


def judge(expected: tuple[dict, dict], outputs_path: str, exercise_ids: list[str]) -> dict[str, Verdict]:
    """Compare the kernel's outputs with the expected ones, exercise by exercise."""
    ex_arrays, ex_meta = expected
    if not os.path.exists(outputs_path):
        return {e: Verdict(False, "the notebook never reached the grader's verification step "
                                  "(kernel died or ran out of time)") for e in exercise_ids}
    try:
        got_arrays, got_meta = codec.load(outputs_path)
    except ProtocolError as exc:
        return {e: Verdict(False, f"unreadable outputs ({exc})") for e in exercise_ids}
    verdicts = {}
    for exid in exercise_ids:
        try:
            arrays, meta = got_arrays, got_meta
            if "challenge" in ex_meta[exid]:  # measured from its own file (its own time budget)
                arrays, meta = _challenge_outputs(outputs_path, exid)
                verdicts[exid] = _judge_challenge(exid, ex_meta[exid], ex_arrays, meta, arrays)
            else:
                verdicts[exid] = _judge_one(exid, ex_meta[exid]["cases"], ex_arrays,
                                            got_meta.get(exid, []) if isinstance(got_meta, dict) else [],
                                            got_arrays)
            ops = meta.get("__ops__", {}) if isinstance(meta, dict) else {}
            names = ops.get(exid, []) if isinstance(ops, dict) else []
            if isinstance(names, list):
                hits = forbidden_ops([str(n) for n in names[:10_000]], ex_meta[exid]["forbid"])
                if hits:
                    op, target, why = hits[0]
                    verdicts[exid] = Verdict(False, f"forbidden shortcut reached at run time: "
                                                    f"`{op[:80]}` (counts as `{target}`) - {why}")
        except Exception as exc:  # hostile outputs must never stop the batch: fail closed
            verdicts[exid] = Verdict(False, f"malformed outputs ({type(exc).__name__})")
    for exid in exercise_ids:  # "uses your `f`, which fails NN.id: fix that first"
        v = verdicts[exid]
        for dep, entry in ex_meta[exid].get("uses", []):
            if not v.ok and dep in verdicts and not verdicts[dep].ok:
                v.message = (f"uses `{entry}`, which fails {dep} too: if yours calls your "
                             f"`{entry}`, fix that first. {v.message}")
                break
    return verdicts


def _challenge_outputs(outputs_path: str, exid: str) -> tuple[dict, object]:
    path = challenge_outputs(outputs_path, exid)
    if not os.path.lexists(path):
        return {}, None
    try:
        return codec.load(path)
    except ProtocolError:
        return {}, {}


def _judge_challenge(exid, meta, ex_arrays, got_meta, got_arrays) -> Verdict:
    """Measure a challenge's outputs here (NumPy only) and band the figure."""
    from ..checks.challenge import score

    budget = meta["challenge"]["budget_s"]
    if got_meta is None:
        return Verdict(False, f"no result: the run did not finish within its {budget} s budget "
                              "(or the kernel died)", credit=0.0)
    cases = meta["cases"]
    got_cases = got_meta.get(exid, []) if isinstance(got_meta, dict) else []
    truths, outputs = [], []
    for ci, case in enumerate(cases):
        truths.append(expected_items(ex_arrays, exid, ci, case["expected"]))
        got = got_cases[ci] if ci < len(got_cases) and isinstance(got_cases[ci], dict) else None
        if got is None:
            return Verdict(False, f"hidden case {ci + 1}: no output", credit=0.0)
        if got.get("error") == "not implemented yet":
            return Verdict(False, "not implemented yet", credit=0.0)
        if "error" in got:
            outputs.append(str(got["error"])[:300])
            continue
        try:
            outputs.append(output_items(got_arrays, exid, ci, got["items"]))
        except (KeyError, TypeError, ValueError):
            return Verdict(False, f"hidden case {ci + 1}: malformed output", credit=0.0)
    c = meta["challenge"]
    s = score(c, truths, outputs)
    shift = s.floor if (c["relative_to_floor"] and s.floor is not None) else 0.0
    limits = tuple((float(lim) + shift, str(name)) for lim, _, name in c["bands"])
    return Verdict(s.credit > 0, s.message, credit=s.credit, figure=s.figure, floor=s.floor,
                   unit=c["unit"], lower_is_better=c["lower_is_better"], limits=limits)


def _judge_one(exid, cases, ex_arrays, got_cases, got_arrays) -> Verdict:
    """The first failing hidden case, and the cataloged mistakes that reproduce the learner's
    outcome on EVERY case (issue 20): one is named, several are listed, none is guessed."""
    first, outcomes = None, []
    for ci, case in enumerate(cases):
        label = f"hidden case {ci + 1}/{len(cases)} '{case['label']}'"
        if ci >= len(got_cases) or not isinstance(got_cases[ci], dict):
            if first is None:
                return Verdict(False, f"{label}: no output")
            break
        got = got_cases[ci]
        if got.get("error") == "not implemented yet":
            return Verdict(False, "not implemented yet")
        if "error" in got:
            outcomes.append(str(got["error"]))
            first = first or (ci, f"{label} raised {got['error']}")
            continue
        try:
            g_items = output_items(got_arrays, exid, ci, got["items"])
        except (KeyError, TypeError, ValueError):
            if first is None:
                return Verdict(False, f"{label}: malformed output")
            break
        outcomes.append(g_items)
        e_items = expected_items(ex_arrays, exid, ci, case["expected"])
        problem = compare(e_items, g_items, case["rtol"], case["atol"])
        if problem and first is None:
            first = (ci, f"{label}: {problem}")
    if first is None:
        return Verdict(True)
    return Verdict(False, first[1], _named(exid, cases, ex_arrays, outcomes, first[0]))


def _named(exid, cases, ex_arrays, outcomes, first) -> str:
    def fits(ci, mi, m_meta) -> bool:
        got = outcomes[ci]
        if isinstance(m_meta, str) or isinstance(got, str):
            return m_meta == got
        items = mistake_items(ex_arrays, exid, ci, mi, m_meta)
        return compare(items, got, cases[ci]["rtol"], cases[ci]["atol"]) is None

    alive = {mi: (name, explain) for mi, name, explain, _ in cases[first]["mistakes"]}
    for ci in [first] + [c for c in range(len(outcomes)) if c != first]:
        metas = {mi: m_meta for mi, _, _, m_meta in cases[ci]["mistakes"]}
        alive = {mi: v for mi, v in alive.items() if mi in metas and fits(ci, mi, metas[mi])}
        if not alive:
            return ""
    found = list(alive.values())
    if len(found) == 1:
        return f"{found[0][0]}: {found[0][1]}"
    return "consistent with: " + ", or ".join(f"{n} ({e})" for n, e in found)


def entries_and_rules(expected: tuple[dict, dict]) -> dict[str, tuple[str, list]]:
    return {exid: (m["entry"], m["forbid"]) for exid, m in expected[1].items()}


def _main(argv: list[str]) -> None:
    seed, inputs, public_dir, exercise_ids = int(argv[0]), argv[1], argv[2], argv[3:]
    expect = os.environ.get("LLMCOURSE_EXPECT_LIBRARY")
    if expect:  # the truth comes from the pristine copy, not from an editable install
        import llmcourse

        here = os.path.realpath(os.path.dirname(llmcourse.__file__))
        if not here.startswith(os.path.realpath(expect) + os.sep):
            raise SystemExit(f"case maker imported llmcourse from {here}, not from {expect}")
    if public_dir != "-":
        make_public(public_dir, exercise_ids)
    sys.stdout.buffer.write(make_cases(seed, inputs, exercise_ids))


if __name__ == "__main__":
    _main(sys.argv[1:])

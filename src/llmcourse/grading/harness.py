"""Runs INSIDE the learner's kernel at the end of grading: call each exercise's function on
the grader's inputs and write the raw outputs to a file. Nothing here decides a grade - the
grader compares the outputs in its own process - so tampering with this module, with
torch or with the checks can only change what is reported, never how it is judged."""

from __future__ import annotations

from ..checks import get
from ..checks.core import Case, exception_line, flatten
from . import codec
from .protocol import output_key, pack


def dump(inputs_path: str, out_path: str, entries: dict[str, str], record_ops: bool = True) -> None:
    try:
        namespace = get_ipython().user_ns  # type: ignore[name-defined]  # noqa: F821
    except NameError:
        import __main__

        namespace = vars(__main__)
    arrays, meta = codec.load(inputs_path)
    out_arrays, out_meta = {}, {}
    ops: dict[str, list[str]] = {}
    for exid, entry in entries.items():
        results = []
        fn = namespace.get(entry)
        seen: set[str] = set()
        for ci, case in enumerate(meta.get(exid, [])):
            if fn is None:
                results.append({"error": f"`{entry}` is not defined"})
                continue
            try:
                ex = get(exid)
                c = Case(case["label"], tuple(codec.decode(case["args"], arrays)),
                         codec.decode(case["kwargs"], arrays))
                if record_ops:
                    from .opsmode import recorder

                    with recorder() as rec:
                        value = ex.call(fn, c)
                    seen |= rec.names
                else:
                    value = ex.call(fn, c)
                items = flatten(value)
                got, items_meta = pack(items)
            except NotImplementedError:
                results.append({"error": "not implemented yet"})
                continue
            except Exception as exc:  # reported, judged outside
                results.append({"error": exception_line(exc)})
                continue
            for i, arr in got.items():
                out_arrays[output_key(exid, ci, i)] = arr
            results.append({"items": items_meta})
        out_meta[exid] = results
        ops[exid] = sorted(seen)
    out_meta["__ops__"] = ops
    codec.save(out_path, out_arrays, out_meta)

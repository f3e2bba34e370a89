"""Which torch operators a learner's function reached (runs in the sandbox, with the harness).

:class:`Recorder` is a ``TorchFunctionMode`` (the Python-level API: ``torch.softmax``,
``F.softmax``, ``Tensor.softmax``, ``torch._log_softmax``...) and a ``TorchDispatchMode`` (the
ATen operators everything lowers to: ``aten::_softmax``...), active only while the learner's
function runs on the hidden cases. The names go to the grader with the outputs; the grader
matches them against the exercise's forbidden shortcuts (:func:`forbidden_ops`), so a
built-in reached by any spelling - a nested helper, a name made at run time, ``F.softmin(-x)``
- is found whatever the source looks like. (Inside the sandbox the learner could switch the
recorder off: it adds evidence, the static scan and the hidden cases stay in force.)
"""

from __future__ import annotations


def _name(func) -> str:
    qual = getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)
    mod = getattr(func, "__module__", None) or ""
    if "." in qual and qual.split(".")[0] in ("Tensor", "TensorBase", "_TensorBase"):
        return "torch.Tensor." + qual.split(".", 1)[1]
    if qual.startswith("_VariableFunctionsClass."):
        return "torch." + qual.split(".", 1)[1]
    return f"{mod}.{qual}" if mod else qual


def recorder():
    """A context manager recording op names into its ``.names`` set (torch imported lazily)."""
    from torch.overrides import TorchFunctionMode
    from torch.utils._python_dispatch import TorchDispatchMode

    names: set[str] = set()

    class _Functions(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            names.add(_name(func))
            return func(*args, **(kwargs or {}))

    class _Dispatch(TorchDispatchMode):
        @classmethod
        def _should_skip_dynamo(cls) -> bool:
            # torch >= 2.8 wraps __torch_dispatch__ in torch._disable_dynamo, whose first call
            # imports torch._dynamo: 1.5 s in every graded notebook. The recorder never runs
            # under torch.compile's tracing, so the wrapper is not needed.
            return False

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            try:
                names.add(func._schema.name)
            except AttributeError:
                names.add(str(func))
            return func(*args, **(kwargs or {}))

    class Recorder:
        def __init__(self):
            self.names = names

        def __enter__(self):
            self._f, self._d = _Functions(), _Dispatch()
            self._f.__enter__()
            self._d.__enter__()
            return self

        def __exit__(self, *exc):
            self._d.__exit__(*exc)
            self._f.__exit__(*exc)
            return False

    return Recorder()


def _base(name: str) -> str:
    """``aten::_log_softmax`` -> ``log_softmax``; ``torch.nn.functional.softmax`` -> ``softmax``."""
    return name.split("::")[-1].rsplit(".", 1)[-1].lstrip("_")


def op_rule(target: str) -> bool:
    """Whether a rule's target is a torch operator the run-time record can find."""
    if not (target.startswith("torch") or target.startswith(".")):
        return False
    leaf = target.rsplit(".", 1)[-1]
    return bool(leaf) and not leaf[0].isupper()  # a class (nn.MultiheadAttention): static only


def forbidden_ops(names, rules) -> list[tuple[str, str, str]]:
    """(op, rule target, why) for each forbidden torch operator in ``names``.

    A rule ``torch.X.f`` (or ``.f``) forbids the function itself, any ``Tensor.f`` method and
    the ATen operator ``aten::f``/``aten::_f``. Module rules (``llmcourse.reference``) are
    the static scan's business."""
    found = []
    for target, why, _allow in rules:
        if not op_rule(target):
            continue
        leaf = target.rsplit(".", 1)[-1]
        for name in sorted(names):
            if name == target or (name.startswith("aten::") and _base(name) == leaf.lstrip("_")) \
                    or name.rsplit(".", 1)[-1] == leaf and name.startswith(("torch.", "aten::")):
                found.append((name, target, why))
                break
    return found

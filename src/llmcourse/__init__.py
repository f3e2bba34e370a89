"""LLM Foundations & Frontiers: the course library.

Learners call :func:`check` and :func:`check_all` from their notebooks; instructors use the
``llmcourse`` command (``llmcourse grade``, ``llmcourse check``, ``llmcourse release``).
"""

__version__ = "0.1.0"

__all__ = ["check", "check_all", "budget", "__version__"]


def budget(full, quick):
    """``full`` normally; ``quick`` when ``LLMCOURSE_QUICK=1`` is set.

    Training notebooks size their loops with it (``steps = budget(2000, 20)``) so that the
    project's own tests can grade them end to end in seconds; learners and the benchmark
    always run the full budget.
    """
    import os

    return quick if os.environ.get("LLMCOURSE_QUICK", "") not in ("", "0") else full


def __getattr__(name):  # lazy: importing llmcourse must stay cheap
    if name in ("check", "check_all"):
        from . import checks

        return getattr(checks, name)
    raise AttributeError(f"module 'llmcourse' has no attribute {name!r}")

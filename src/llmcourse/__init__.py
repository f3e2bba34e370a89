"""LLM Foundations & Frontiers: the course library.

Learners call :func:`check` and :func:`check_all` from their notebooks; instructors use the
``llmcourse`` command (``llmcourse grade``, ``llmcourse check``, ``llmcourse release``).
"""

__version__ = "0.1.0"

__all__ = ["check", "check_all", "__version__"]


def __getattr__(name):  # lazy: importing llmcourse must stay cheap
    if name in ("check", "check_all"):
        from . import checks

        return getattr(checks, name)
    raise AttributeError(f"module 'llmcourse' has no attribute {name!r}")

"""What notebook test cells call: ``check("00.softmax", softmax)`` and ``check_all()``.

The runner lives in :mod:`.runner`, the spec machinery in :mod:`.core` and :mod:`.kit`, and
each chapter's exercises in a ``chNN`` package (one module per notebook).
"""

from __future__ import annotations

from .core import Case, Exercise, Mistake, Rule
from .runner import (CHAPTERS, CheckFailed, Result, all_exercises, check, check_all, get,
                     register, run)

__all__ = ["check", "check_all", "get", "CheckFailed", "Result", "run", "all_exercises",
           "register", "CHAPTERS", "Exercise", "Case", "Mistake", "Rule"]

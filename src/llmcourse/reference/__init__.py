"""Reference implementations, one module per topic.

Clear, vectorised and documented; later chapters import earlier components from here so
that a learner stuck in one chapter can still do the next. Exercises forbid calling this
package from the learner's own solution.
"""

from .basics import cross_entropy, log_softmax, softmax

__all__ = ["softmax", "log_softmax", "cross_entropy"]

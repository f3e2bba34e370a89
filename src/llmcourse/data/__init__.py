"""The course's data (design section 5): generated or shipped, never downloaded by default.

- :mod:`~llmcourse.data.synthetic`: a multi-domain language (stories, arithmetic, reviews)
  whose exact log-probabilities, hence its entropy floor, the library computes.
- :mod:`~llmcourse.data.code`: Python's standard-library source, read from this Python.
- :mod:`~llmcourse.data.public`: optional loaders for Tiny Shakespeare and TinyStories.
"""

from .code import python_stdlib, stdlib_files
from .public import DatasetNotAvailable, parse_shakespeare, parse_tinystories, tiny_shakespeare, tinystories
from .synthetic import (EntropyFloor, Language, corpus, document_log_prob, documents, entropy_floor,
                        exact_entropy_rate, log_prob, sample_documents)

__all__ = ["Language", "corpus", "documents", "sample_documents", "log_prob", "document_log_prob",
           "entropy_floor", "exact_entropy_rate", "EntropyFloor", "python_stdlib", "stdlib_files",
           "tiny_shakespeare", "tinystories", "parse_shakespeare", "parse_tinystories",
           "DatasetNotAvailable"]

"""Chapter 01, language models: one module per notebook."""

from . import bpe, ngram_lm  # noqa: F401

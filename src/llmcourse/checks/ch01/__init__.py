"""Chapter 01, language models: one module per notebook."""

from . import bpe, challenge, ngram_lm  # noqa: F401

"""Chapter 03, efficient Transformers: one module per notebook."""

from . import challenge, flash, modern_block, primer, search  # noqa: F401

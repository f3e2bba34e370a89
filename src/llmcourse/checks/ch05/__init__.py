"""Chapter 05, fine-tuning: one module per notebook."""

from . import challenge, classification, early_stopping, instruction  # noqa: F401

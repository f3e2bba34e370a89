"""Chapter 05, fine-tuning: one module per notebook."""

from . import classification, instruction  # noqa: F401

"""Chapter 06, knowledge distillation: one module per notebook."""

from . import distill_gpt, losses  # noqa: F401

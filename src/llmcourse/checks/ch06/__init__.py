"""Chapter 06, knowledge distillation: one module per notebook."""

from . import challenge, distill_gpt, losses  # noqa: F401

"""Chapter 09, the GPU timing lab: one module per notebook."""

from . import challenge, lab  # noqa: F401

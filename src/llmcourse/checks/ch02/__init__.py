"""Chapter 02, attention and the Transformer: one module per notebook."""

from . import bridge, multihead, sdpa, transformer  # noqa: F401

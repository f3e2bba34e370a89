"""Chapter 02, attention and the Transformer: one module per notebook."""

from . import bridge, challenge, multihead, sdpa, transformer  # noqa: F401

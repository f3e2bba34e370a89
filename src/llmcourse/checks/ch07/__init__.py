"""Chapter 07, scaling: one module per notebook."""

from . import challenge, compression, counting, parallel, sweep  # noqa: F401

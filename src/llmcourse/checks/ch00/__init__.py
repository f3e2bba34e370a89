"""Chapter 00, getting started: one module per notebook."""

from . import warmup  # noqa: F401

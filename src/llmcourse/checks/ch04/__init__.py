"""Chapter 04, pre-training: one module per notebook."""

from . import objectives, optim, pretrain  # noqa: F401

"""Chapter 04, pre-training: one module per notebook (objectives.ipynb's in two, by size)."""

from . import challenge, objectives, objectives_prefix_electra, optim, pretrain, xlnet  # noqa: F401

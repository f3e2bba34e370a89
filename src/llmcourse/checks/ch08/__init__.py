"""Chapter 08, domain experts and mixtures of experts: one module per notebook, every module
of this package imported (so a notebook's specs need no edit here)."""

import importlib
import pkgutil

for _info in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_info.name}")

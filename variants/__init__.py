"""Importing this package registers every variant: each module in variants/ plus the top-level
adaptive_attention_span.py. Entry points import it, then look a variant up by name (model.get_variant)."""
import importlib
import pkgutil

import model  # noqa: F401  (registers the baseline "gpt")

for _info in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_info.name}")
try:
    importlib.import_module("adaptive_attention_span")
except ModuleNotFoundError as e:
    if e.name != "adaptive_attention_span":
        raise

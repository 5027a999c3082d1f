"""Importing this package registers every variant: each module in variants/ plus the top-level
adaptive_attention_span.py. Entry points import it and look a variant up by name: variants.get("llama")."""
import importlib
import pkgutil

from variants.registry import VARIANTS, Variant, get, names, register  # noqa: F401

for _info in pkgutil.iter_modules(__path__):
    if _info.name != "registry":
        importlib.import_module(f"{__name__}.{_info.name}")
importlib.import_module("adaptive_attention_span")

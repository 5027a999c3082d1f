"""The variant registry: a name -> (model class, objective). Variant files register themselves; entry points import
the variants package and look a variant up by name."""
import difflib
from dataclasses import dataclass

from objectives import NextTokenLM


@dataclass(frozen=True)
class Variant:
    name: str
    model_class: type
    objective: object

    @property
    def config_class(self):
        return self.model_class.config_class

    def build(self, config):
        return self.model_class(config)


VARIANTS = {}


def register(name, objective=None):
    """Class decorator: the model class becomes variant `name`, trained with `objective` (next-token LM by default)."""
    def wrap(cls):
        if name in VARIANTS:
            raise ValueError(f"variant {name!r} registered twice")
        VARIANTS[name] = Variant(name, cls, NextTokenLM() if objective is None else objective)
        return cls
    return wrap


def get(name):
    if name not in VARIANTS:
        close = difflib.get_close_matches(name, VARIANTS, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown variant {name!r}{hint} (known: {', '.join(sorted(VARIANTS))})")
    return VARIANTS[name]


def names():
    return sorted(VARIANTS)

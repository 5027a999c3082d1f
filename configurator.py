"""
One config surface for train.py, sample.py and bench.py (DESIGN principle 7).

    python train.py config/train_shakespeare_char.py --n_layer=4 --compile=False

Positional arguments are python config files (plain assignments, applied in order; `base = "x.py"` in one applies
x.py first); `--key=value` overrides come after and are parsed with ast.literal_eval (a value that is not a python
literal is taken as a string). Every key
must be a declared field: the entry point's own dataclass, plus, when it builds a model, GPTConfig and the chosen
variant's fields. Unknown keys and wrong types raise ConfigError naming the key.
"""
import ast
import difflib
import types
import typing
from dataclasses import fields
from pathlib import Path



class ConfigError(ValueError):
    pass


def read_config_file(path, _seen=()):
    """{key: value} of a config file's assignments. `base = "other.py"` (a path relative to this file's folder) reads
    that file first and lets this one override it, so a twin states only how it differs from its recipe."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {path} not found")
    if p.resolve() in _seen:
        raise ConfigError(f"config file {path} includes itself through `base`")
    scope = {}
    try:
        exec(compile(p.read_text(), str(p), "exec"), scope)
    except Exception as e:  # a config file is user code: report its error as one line
        raise ConfigError(f"config file {path} failed: {type(e).__name__}: {e}") from None
    values = {k: v for k, v in scope.items()
              if not k.startswith("_") and not isinstance(v, (types.ModuleType, types.FunctionType, type))}
    base = values.pop("base", None)
    if base is None:
        return values
    if not isinstance(base, str):
        raise ConfigError(f"config file {path}: base must be a path string, got {base!r}")
    return {**read_config_file(p.parent / base, (*_seen, p.resolve())), **values}


def parse_args(argv):
    """Split argv into an ordered {key: value} from config files then --key=value overrides."""
    values = {}
    for arg in argv:
        if arg.startswith("--"):
            key, sep, raw = arg[2:].partition("=")
            if not sep or not key:
                raise ConfigError(f"expected --key=value, got {arg!r}")
            try:
                values[key] = ast.literal_eval(raw)
            except (ValueError, SyntaxError):
                values[key] = raw
        else:
            values.update(read_config_file(arg))
    return values


def _check_type(key, value, annotation):
    """Return value coerced to the annotation, or raise ConfigError naming key and the expected type."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(annotation):
            try:
                return _check_type(key, value, option)
            except ConfigError:
                pass
        raise ConfigError(f"{key} expects {_type_name(annotation)}, got {value!r} ({type(value).__name__})")
    if annotation is type(None):
        if value is None:
            return None
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)  # an int for a float field is fine
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation in (bool, str):
        if isinstance(value, annotation):
            return value
    elif origin in (list, tuple) or annotation in (list, tuple):
        if isinstance(value, (list, tuple)):
            item_types = [a for a in typing.get_args(annotation) if a is not Ellipsis]
            if item_types:
                value = [_check_type(key, v, item_types[0]) for v in value]
            return (origin or annotation)(value)
    elif annotation is typing.Any:
        return value
    raise ConfigError(f"{key} expects {_type_name(annotation)}, got {value!r} ({type(value).__name__})")


def _type_name(annotation):
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def build(cls, values, key_owner=None):
    kwargs = {}
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        if f.name in values:
            kwargs[f.name] = _check_type(f.name, values[f.name], hints[f.name])
            if key_owner is not None:
                key_owner.add(f.name)
    return cls(**kwargs)


def resolve(argv, entry_cls, model_configs=None, validate_model=True):
    """Build (entry config, model config or None, keys the user set) from argv. With model_configs (a function from a
    variant name to its config dataclass), the entry dataclass declares a `variant` field whose value picks the
    dataclass that receives the model fields; validate_model=False leaves checking it to the caller (pretrained
    weights decide the architecture first)."""
    values = parse_args(argv)
    used = set()
    entry = build(entry_cls, values, used)
    model_cfg = None
    allowed = {f.name for f in fields(entry_cls)}
    if model_configs is not None:
        config_class = model_configs(entry.variant)
        model_cfg = build(config_class, values, used)
        allowed |= {f.name for f in fields(config_class)}
    unknown = [k for k in values if k not in allowed]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, allowed, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        scope = f" for variant {entry.variant!r}" if model_configs is not None else ""
        raise ConfigError(f"unknown config key {key!r}{scope}{hint}")
    if model_cfg is not None and validate_model:
        try:
            model_cfg.validate()
        except ValueError as e:
            raise ConfigError(str(e)) from None
    return entry, model_cfg, set(values)

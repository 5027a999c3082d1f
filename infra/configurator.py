"""
One config surface for train.py, sample.py and bench.py (docs/design.md principle 7).

    python train.py config/train_shakespeare_char.py --n_layer=4 --compile=False

Positional arguments are python config files (plain assignments, applied in order; `base = "x.py"` in one applies
x.py first); `--key=value` overrides come after and are parsed with ast.literal_eval (a value that is not a python
literal is taken as a string). Every key
must be a declared field: the entry point's own dataclass, plus, when it builds a model, GPTConfig and the chosen
variant's fields. Unknown keys and wrong types raise ConfigError naming the key.

`--help` or `-h` anywhere in argv prints every key the command accepts and exits 0 (help_text says what it shows).
"""
import ast
import difflib
import functools
import inspect
import io
import os
import re
import sys
import textwrap
import tokenize
import types
import typing
from dataclasses import MISSING, fields, is_dataclass
from pathlib import Path

HELP_FLAGS = ("--help", "-h")

REPO = Path(__file__).resolve().parents[1]


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
    except SystemExit as e:  # sys.exit() in a config file must not end the run as if it had succeeded
        raise ConfigError(f"config file {path} called sys.exit({e.code!r}); a config file only assigns "
                          f"settings") from None
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
    """An annotation as it is written in the code: int, int | None, list[int] | None, tuple[int, ...] | int | None."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if annotation is type(None):
        return "None"
    if annotation is Ellipsis:
        return "..."
    if origin is not None and args:
        return f"{_type_name(origin)}[{', '.join(_type_name(a) for a in args)}]"
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
    weights decide the architecture first). With --help or -h in argv it prints help_text to stdout (its notes on
    arguments it could not read to stderr) and raises SystemExit(0) instead, whatever the other arguments are."""
    if any(arg in HELP_FLAGS for arg in argv):
        text, notes = help_text(argv, entry_cls, model_configs)
        try:
            print(text, flush=True)
        except BrokenPipeError:  # the reader stopped early (`--help | head`): the rest goes to /dev/null, exit 0
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        raise SystemExit(0)
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


# --------------------------------------------------------------------------------------------------------------
# --help: every key with its type, default and the comment on its line in the dataclass source, so it cannot drift.

@functools.cache
def field_comments(cls):
    """{field name: text of the trailing `# comment` on the line(s) of its declaration in cls's own body}. A field
    declared without one is absent; so is every field of a class whose source cannot be read."""
    try:
        source = textwrap.dedent("".join(inspect.getsourcelines(cls)[0]))
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
        body = ast.parse(source).body[0].body
    except (OSError, TypeError, SyntaxError, tokenize.TokenError):
        return {}
    trailing = {}  # line number -> comment text, for comments that follow code on their line
    for tok in tokens:
        if tok.type == tokenize.COMMENT and tok.line[:tok.start[1]].strip():
            trailing.setdefault(tok.start[0], tok.string.lstrip("#").strip())
    comments = {}
    for node in body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            rows = [trailing[r] for r in range(node.lineno, node.end_lineno + 1) if r in trailing]
            if rows:
                comments[node.target.id] = rows[0]
    return comments


def _summary(doc):
    """A module docstring's first paragraph and, when that ends with a colon, the indented block it introduces (the
    usage examples); "" without a docstring."""
    paragraphs = re.split(r"\n[ \t]*\n", inspect.cleandoc(doc or "").strip())
    if len(paragraphs) > 1 and paragraphs[0].endswith(":") and paragraphs[1].startswith(" "):
        return "\n\n".join(paragraphs[:2])
    return paragraphs[0]


def _default(f):
    if f.default is not MISSING:
        return repr(f.default)
    if f.default_factory is not MISSING:
        return repr(f.default_factory())
    return "(required)"


def _declaring_class(cls, name):
    """The class in cls's MRO whose own body declares field `name`: the line its default and comment come from."""
    return next(k for k in cls.__mro__ if is_dataclass(k) and name in inspect.get_annotations(k))


def _rows(cls, names):
    """[(name, type, default, description)] for the given fields of cls, in declaration order. A field that
    re-declares an inherited one with a different default says so after its comment."""
    hints = typing.get_type_hints(cls)
    rows = []
    for f in fields(cls):
        if f.name not in names:
            continue
        owner = _declaring_class(cls, f.name)
        description = field_comments(owner).get(f.name, "")
        base = next((k for k in owner.__mro__[1:] if is_dataclass(k) and f.name in inspect.get_annotations(k)), None)
        if base is not None:
            inherited = _default(next(g for g in fields(base) if g.name == f.name))
            if inherited != _default(f):
                description = f"{description} [overrides {base.__name__}'s default {inherited}]".lstrip()
        rows.append((f.name, _type_name(hints[f.name]), _default(f), description))
    return rows


def help_text(argv, entry_cls, model_configs=None):
    """(the --help page, notes on arguments it could not read) for a command that resolves entry_cls (and, with
    model_configs, a model config picked by the `variant` key). The page: the command's module docstring summary,
    then every key under the class that declares it (entry_cls's keys under the script's name), each as name, type,
    the code's default and the trailing comment of its line in the source (nothing where the line has none).
    Model keys are grouped by the dataclasses of the variant's config, base first: the root one (GPTConfig), from
    which every variant's config derives, as "every model". argv's config files and --key=value overrides only
    choose the variant: shown defaults are the code's, not theirs. An argument that cannot be read, or an unknown
    variant (then the entry's default variant is listed), becomes a note rather than an error."""
    module = sys.modules.get(entry_cls.__module__)
    path = Path(getattr(module, "__file__", None) or entry_cls.__module__).resolve()
    script = path.relative_to(REPO).as_posix() if path.is_relative_to(REPO) else path.name  # as the user types it
    values, notes = {}, []
    for arg in argv:
        if arg not in HELP_FLAGS:
            try:
                values.update(parse_args([arg]))
            except ConfigError as e:
                notes.append(f"ignored {arg!r}: {e}")
    groups = [(script, _rows(entry_cls, {f.name for f in fields(entry_cls)}))]
    lead = []
    if model_configs is not None:
        default = next(f.default for f in fields(entry_cls) if f.name == "variant")
        requested, variant, config_class = values.get("variant", default), None, None
        for name in [requested] if requested == default else [requested, default]:
            try:
                config_class, variant = model_configs(name), name
                break
            except (ValueError, KeyError, TypeError) as e:
                notes.append(f"variant {name!r} not listed: {e}")
        if config_class is not None:
            lead = ["", f"Model keys of variant {variant!r}; --variant=NAME (here or in a config file) lists another "
                        f"variant's."]
            chain = [k for k in reversed(config_class.__mro__) if is_dataclass(k)]
            for k in chain:
                names = {f.name for f in fields(config_class) if _declaring_class(config_class, f.name) is k}
                if k is chain[0]:
                    label = "every model"
                elif k is config_class:
                    label = f"variant {variant}"
                else:
                    label = f"variant {variant}, inherited"
                if names:
                    groups.append((f"{k.__name__} ({label})", _rows(config_class, names)))
    rows = [row for _, group in groups for row in group]
    widths = [max((len(row[i]) for row in rows), default=0) for i in range(3)]
    widths[2] = min(widths[2], 30)  # a longer default pushes only its own description to the right
    lines = [f"usage: python {script} [CONFIG_FILE.py ...] [--key=value ...]", ""]
    summary = _summary(getattr(module, "__doc__", None))
    if summary:
        lines += [summary, ""]
    lines += [
        "Keys, set in a config file (key = value) or as --key=value, each under the class that declares it, with its",
        "type, default and the comment on its line in the code. Defaults are the code's: config files and --key=value",
        "given with --help only choose the variant." if model_configs else "given with --help do not change them.",
        *lead]
    for header, group in groups:
        lines += ["", f"{header}:"]
        for name, type_name, default, description in group:
            cells = f"{name:<{widths[0]}}  {type_name:<{widths[1]}}  {default:<{widths[2]}}  {description}"
            lines.append(f"  {cells}".rstrip())
    return "\n".join(lines), notes

"""--help / -h on every entry point (every top-level module that calls configurator.resolve): exit 0 and list every
key the command accepts with its type, default and the comment on its line in the code, grouped by declaring class."""
import ast
import functools
import importlib
import typing
from dataclasses import MISSING, fields, is_dataclass

import pytest

from infra import configurator
import variants
from conftest import REPO, run
from model import GPTConfig
from variants.layerwise_window import LayerwiseConfig


def find_entry_points():
    """{script path: its entry dataclass} for each top-level or tools/ module whose code calls
    configurator.resolve(argv, Cls)."""
    found = {}
    for path in sorted([*REPO.glob("*.py"), *REPO.glob("tools/*.py")]):
        # the first call in the file is the command's own (bench.py's planner, `bench.py plan`, comes after it)
        for node in sorted((n for n in ast.walk(ast.parse(path.read_text())) if hasattr(n, "lineno")),
                           key=lambda n: n.lineno, reverse=True):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "resolve"
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "configurator"):
                arg = node.args[1] if len(node.args) > 1 else next(k.value for k in node.keywords
                                                                   if k.arg == "entry_cls")
                script = path.relative_to(REPO).as_posix()
                found[script] = getattr(importlib.import_module(script[:-3].replace("/", ".")), arg.id)
    return found


ENTRY_POINTS = find_entry_points()


@functools.cache
def help_output(*args):
    """stdout of `python <args>` as a real process, which must exit 0."""
    return run(list(args)).stdout


def group(out, header):
    """{key: its whole line} of the help group headed `header:`."""
    lines = out.splitlines()
    assert f"{header}:" in lines, f"no group {header!r} in:\n{out}"
    rows = {}
    for line in lines[lines.index(f"{header}:") + 1:]:
        if not line.startswith("  "):
            break
        rows[line.split()[0]] = line
    return rows


def default_text(f):
    return repr(f.default_factory() if f.default is MISSING else f.default)


def test_every_known_entry_point_is_found():
    assert {"train.py", "sample.py", "tools/eval.py", "bench.py", "tools/analysis.py"} <= ENTRY_POINTS.keys()
    assert all(is_dataclass(cls) for cls in ENTRY_POINTS.values())


@pytest.mark.parametrize("script,key", [(s, f.name) for s, cls in ENTRY_POINTS.items() for f in fields(cls)])
def test_entry_help_lists_every_key_with_its_type_and_default(script, key):
    f = next(f for f in fields(ENTRY_POINTS[script]) if f.name == key)
    line = group(help_output(script, "--help"), script)[key]
    assert line.split()[0] == key and default_text(f) in line
    assert f"  {configurator._type_name(typing.get_type_hints(ENTRY_POINTS[script])[key])}  " in line


@pytest.mark.parametrize("script", sorted(ENTRY_POINTS))
def test_dash_h_is_help_and_other_arguments_do_not_matter(script):
    out = help_output(script, "--help")
    assert out.startswith(f"usage: python {script}")
    assert help_output(script, "-h") == out
    proc = run([script, "missing_config.py", "--no_such_key=1", "--not-key-value", "--help"])
    assert proc.stdout == out and "missing_config.py" in proc.stderr


@pytest.mark.parametrize("key", [f.name for f in fields(GPTConfig)])
def test_train_help_lists_gpt_config_keys(key):
    f = next(f for f in fields(GPTConfig) if f.name == key)
    assert default_text(f) in group(help_output("train.py", "--help"), "GPTConfig (every model)")[key]


def test_variant_keys_only_with_that_variant():
    own = [f for f in fields(LayerwiseConfig) if f.name not in {g.name for g in fields(GPTConfig)}]
    assert {"schedule", "windows"} <= {f.name for f in own}
    out = help_output("train.py", "--variant=layerwise", "--help")
    rows = group(out, "LayerwiseConfig (variant layerwise)")
    assert set(rows) == {f.name for f in own}
    for f in own:
        assert default_text(f) in rows[f.name]
    assert "list[int] | None" in rows["windows"]
    assert group(out, "GPTConfig (every model)").keys() == {f.name for f in fields(GPTConfig)}
    plain = help_output("train.py", "--help")
    assert "LayerwiseConfig" not in plain
    assert not any(line.split()[:1] in (["schedule"], ["windows"]) for line in plain.splitlines())


def test_a_config_file_naming_a_variant_lists_its_keys_and_the_code_defaults():
    out = help_output("train.py", "config/train_enwik8.py", "--help")
    rows = group(out, "AdaptiveSpanConfig (variant adaptive_span)")
    assert {"use_adaptive_attention", "use_triangle_wave_masking", "span_reg", "max_span"} <= rows.keys()
    assert "int | None" in rows["max_span"]
    # the file sets out_dir = "out-enwik8"; the page shows the code's default
    assert "'out'" in group(out, "train.py")["out_dir"] and "out-enwik8" not in out


@pytest.mark.parametrize("script,header,key,comment", [
    ("train.py", "train.py", "overwrite",
     "a scratch run refuses to replace an existing out_dir/ckpt.pt unless this is set"),
    ("sample.py", "sample.py", "temperature", "0 = greedy"),
    ("bench.py", "bench.py", "gen_tokens", "new tokens for the cached vs uncached generation comparison (0 skips it)"),
    ("train.py", "GPTConfig (every model)", "bias", "biases in Linears and LayerNorms, as GPT-2"),
])
def test_descriptions_are_the_comments_on_the_field_lines(script, header, key, comment):
    assert group(help_output(script, "--help"), header)[key].endswith(comment)


def test_a_field_without_a_comment_has_no_description():
    rows = group(help_output("train.py", "--help"), "train.py")
    assert rows["wandb_project"].split() == ["wandb_project", "str", "'attention-variants'"]
    assert group(help_output("tools/eval.py", "--help"), "tools/eval.py")["split"].split() == ["split", "str", "'val'"]


def test_readable_types():
    assert configurator._type_name(int) == "int"
    assert configurator._type_name(int | None) == "int | None"
    assert configurator._type_name(list[int] | None) == "list[int] | None"
    assert configurator._type_name(tuple[int, ...] | int | None) == "tuple[int, ...] | int | None"


def test_every_variant_config_derives_from_gpt_config():
    """What labels GPTConfig's group "every model"."""
    for name in variants.names():
        chain = [k for k in variants.get(name).config_class.__mro__ if is_dataclass(k)]
        assert chain[-1] is GPTConfig, name


@pytest.mark.parametrize("name", variants.names())
def test_every_variant_key_is_listed_once_under_its_declaring_class(name):
    """In-process, for speed: the page of `train.py --variant=NAME --help`."""
    import train
    cls = variants.get(name).config_class
    with pytest.raises(SystemExit) as exit_info:
        configurator.resolve([f"--variant={name}", "--help"], train.TrainConfig, lambda n: variants.get(n).config_class)
    assert exit_info.value.code == 0
    out, notes = configurator.help_text([f"--variant={name}"], train.TrainConfig,
                                        lambda n: variants.get(n).config_class)
    assert notes == []
    listed = [line.split()[0] for line in out.split("\n\nGPTConfig (every model):\n", 1)[1].splitlines()
              if line.startswith("  ")]
    assert sorted(listed) == sorted(f.name for f in fields(cls))
    for f in fields(cls):
        owner = next(k for k in cls.__mro__ if f.name in k.__dict__.get("__annotations__", {}))
        label = ("every model" if owner is GPTConfig else f"variant {name}" if owner is cls
                 else f"variant {name}, inherited")
        assert default_text(f) in group(out, f"{owner.__name__} ({label})")[f.name]


def test_unknown_variant_is_a_note_and_the_default_variant_is_listed():
    proc = run(["train.py", "--variant=no_such_variant", "--help"])
    assert "unknown variant 'no_such_variant'" in proc.stderr
    assert "Model keys of variant 'gpt'" in proc.stdout and "GPTConfig (every model):" in proc.stdout

"""The config surface: files + --key=value overrides, checked against the declared fields."""
from dataclasses import dataclass

import pytest

from infra import configurator
import variants
from conftest import REPO
from infra.configurator import ConfigError, resolve
from model import GPTConfig
from variants.layerwise_window import LayerwiseConfig


def model_configs(name):
    return variants.get(name).config_class


@dataclass
class Entry:
    variant: str = "gpt"
    learning_rate: float = 1e-3
    max_iters: int = 10
    compile: bool = False
    device: str = "cpu"
    top_k: int | None = 5
    windows: list[int] | None = None


def test_overrides_are_literals_or_strings():
    entry, model, keys = resolve(["--learning_rate=3e-4", "--max_iters=7", "--compile=True", "--device=cuda:1",
                                  "--n_layer=3", "--n_embd=48", "--n_head=4", "--top_k=None"], Entry, model_configs)
    assert (entry.learning_rate, entry.max_iters, entry.compile, entry.device, entry.top_k) == (3e-4, 7, True,
                                                                                               "cuda:1", None)
    assert (model.n_layer, model.n_embd, model.n_head) == (3, 48, 4)
    assert {"learning_rate", "n_layer"} <= keys


def test_int_for_float_is_fine_and_lists_are_checked():
    entry, _, _ = resolve(["--learning_rate=1", "--windows=[4, 8]"], Entry, model_configs)
    assert entry.learning_rate == 1.0 and isinstance(entry.learning_rate, float)
    assert entry.windows == [4, 8]
    with pytest.raises(ConfigError, match="windows expects"):
        resolve(["--windows=[4, 'x']"], Entry, model_configs)


def test_unknown_key_names_close_matches():
    with pytest.raises(ConfigError, match="unknown config key 'learning_rat'.*did you mean learning_rate"):
        resolve(["--learning_rat=1e-3"], Entry, model_configs)
    with pytest.raises(ConfigError, match="unknown config key 'n_layers'.*n_layer"):
        resolve(["--n_layers=2"], Entry, model_configs)


@pytest.mark.parametrize("arg,message", [
    ("--max_iters=1.5", "max_iters expects int, got 1.5"),
    ("--compile=1", "compile expects bool, got 1"),
    ("--n_layer=two", "n_layer expects int, got 'two'"),
    ("--learning_rate=True", "learning_rate expects float"),
    ("--max_iters", "expected --key=value"),
])
def test_wrong_types_name_the_key(arg, message):
    with pytest.raises(ConfigError, match=message):
        resolve([arg], Entry, model_configs)


def test_config_files_then_overrides(tmp_path):
    f = tmp_path / "cfg.py"
    f.write_text("import math\nmax_iters = 3\nlearning_rate = math.sqrt(4e-6)\nn_layer = 5\n")
    entry, model, _ = resolve([str(f), "--max_iters=9"], Entry, model_configs)
    assert (entry.max_iters, entry.learning_rate, model.n_layer) == (9, 2e-3, 5)
    bad = tmp_path / "bad.py"
    bad.write_text("max_iters = 1/0\n")
    with pytest.raises(ConfigError, match="bad.py failed: ZeroDivisionError"):
        resolve([str(bad)], Entry, model_configs)
    with pytest.raises(ConfigError, match="config file nope.py not found"):
        resolve(["nope.py"], Entry, model_configs)


def test_model_validation_and_unknown_variant():
    with pytest.raises(ConfigError, match="n_head=5 must divide n_embd=768"):
        resolve(["--n_head=5"], Entry, model_configs)
    with pytest.raises(ValueError, match="unknown variant 'gtp'"):
        resolve(["--variant=gtp"], Entry, model_configs)


def test_entry_without_model_rejects_model_keys():
    entry, model, keys = configurator.resolve(["--max_iters=4"], Entry)
    assert (entry.max_iters, model, keys) == (4, None, {"max_iters"})
    with pytest.raises(ConfigError, match="unknown config key 'n_layer'"):
        configurator.resolve(["--n_layer=2"], Entry)


def test_variant_picks_the_model_config_class():
    _, model, _ = resolve(["--variant=layerwise", "--schedule=half", "--n_layer=6"], Entry, model_configs)
    assert type(model) is LayerwiseConfig and (model.schedule, model.n_layer) == ("half", 6)
    _, model, _ = resolve([], Entry, model_configs)
    assert type(model) is GPTConfig and model == GPTConfig()
    with pytest.raises(ConfigError, match="unknown config key 'schedule' for variant 'gpt'"):
        resolve(["--schedule=half"], Entry, model_configs)
    with pytest.raises(ConfigError, match="windows lists 2 layers but n_layer=12"):  # the model config is validated
        resolve(["--variant=layerwise", "--windows=[4, 8]"], Entry, model_configs)


def test_build_checks_types_and_records_the_keys_it_used():
    used = set()
    config = configurator.build(GPTConfig, {"n_layer": 2, "dropout": 0, "learning_rate": 1.0}, used)
    assert (config.n_layer, config.dropout, used) == (2, 0.0, {"n_layer", "dropout"})
    assert isinstance(config.dropout, float)
    assert configurator.build(Entry, {"top_k": None}).top_k is None
    with pytest.raises(ConfigError, match="n_embd expects int, got '64'"):
        configurator.build(GPTConfig, {"n_embd": "64"})


@pytest.mark.parametrize("path", sorted(str(p) for p in (REPO / "config").glob("*.py")))
def test_every_shipped_config_resolves(path):
    import train
    entry, model, _ = resolve([path], train.TrainConfig, model_configs)
    entry.validate()
    assert type(model) is variants.get(entry.variant).config_class
    # every assignment in the file lands, with its value, in the train config or the variant's model config
    values = configurator.read_config_file(path)
    assert values
    for key, value in values.items():
        landed = [getattr(c, key) for c in (entry, model) if hasattr(c, key)]
        assert landed and all(v == value for v in landed), (key, value, landed)


def test_base_includes_apply_the_base_first_relative_to_the_including_file(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "recipe.py").write_text('learning_rate = 1e-3\nmax_iters = 10\ndevice = "cpu"\n')
    (tmp_path / "sub" / "twin.py").write_text('base = "../recipe.py"\nmax_iters = 20\n')
    (tmp_path / "sub" / "twin2.py").write_text('base = "twin.py"\ndevice = "cuda"\n')
    assert configurator.read_config_file(tmp_path / "sub" / "twin2.py") == {
        "learning_rate": 1e-3, "max_iters": 20, "device": "cuda"}
    entry, _, keys = resolve([str(tmp_path / "sub" / "twin2.py"), "--max_iters=5"], Entry)
    assert (entry.learning_rate, entry.max_iters, entry.device) == (1e-3, 5, "cuda") and "base" not in keys


def test_base_errors_are_clear(tmp_path):
    (tmp_path / "a.py").write_text('base = "b.py"\n')
    (tmp_path / "b.py").write_text('base = "a.py"\n')
    (tmp_path / "c.py").write_text('base = "missing.py"\n')
    (tmp_path / "d.py").write_text('base = 3\n')
    with pytest.raises(ConfigError, match="includes itself"):
        configurator.read_config_file(tmp_path / "a.py")
    with pytest.raises(ConfigError, match="missing.py not found"):
        configurator.read_config_file(tmp_path / "c.py")
    with pytest.raises(ConfigError, match="base must be a path string"):
        configurator.read_config_file(tmp_path / "d.py")

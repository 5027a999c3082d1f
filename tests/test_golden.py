"""The refactor guard: every case of tests/golden/golden.py reproduces the recorded initial weights, logits,
generations, fill-mask predictions, 20 train.py steps and checkpoint outputs bit for bit."""
import sys
from pathlib import Path

import pytest
import torch

from conftest import need_shared

GOLDEN = Path(__file__).resolve().parent / "golden"
sys.path.insert(0, str(GOLDEN))
import golden  # noqa: E402


def assert_identical(new, old, where):
    """Exact equality of nested tensors, numbers, strings, lists and dicts."""
    if isinstance(old, torch.Tensor):
        assert isinstance(new, torch.Tensor) and new.shape == old.shape and new.dtype == old.dtype, where
        assert torch.equal(new, old), f"{where}: max diff {(new.double() - old.double()).abs().max().item():.3g}"
    elif isinstance(old, dict):
        assert isinstance(new, dict) and set(new) == set(old), f"{where}: keys {sorted(new)} vs {sorted(old)}"
        for k in old:
            assert_identical(new[k], old[k], f"{where}.{k}")
    elif isinstance(old, (list, tuple)):
        assert isinstance(new, (list, tuple)) and len(new) == len(old), f"{where}: length"
        for i, (a, b) in enumerate(zip(new, old)):
            assert_identical(a, b, f"{where}[{i}]")
    else:
        assert new == old or (new != new and old != old), f"{where}: {new!r} vs {old!r}"


def assert_same_distribution(new, old):
    """Fresh weights of a rebuilt model: same tensors; constant ones equal, random ones of the same spread."""
    assert set(new) == set(old)
    for k, o in old.items():
        n = new[k]
        assert n.shape == o.shape and n.dtype == o.dtype, k
        if o.numel() < 2 or torch.all(o == o.reshape(-1)[0]):
            assert torch.equal(n, o), k
            continue
        ratio = n.float().std() / o.float().std()
        assert 0.8 < ratio < 1.25, f"{k}: std ratio {ratio:.3f}"
        assert abs(n.float().mean() - o.float().mean()) < 5 * o.float().std() / o.numel() ** 0.5 + 1e-6, k


def compare_case(name, data_dir, tmp):
    old = torch.load(GOLDEN / f"{name}.pt", weights_only=False)
    fresh = golden.build(name).state_dict()
    if name in golden.REBUILT:
        assert_same_distribution(fresh, old["init"])
    else:
        assert_identical(fresh, old["init"], f"{name}.init")
    new = golden.model_outputs(name, data_dir, state=old["init"])
    for key in ("batch_logits", "batch_loss", "batch_metrics", "logits", "greedy_cached", "greedy_uncached", "fill"):
        if key in old:
            assert_identical(new.get(key), old[key], f"{name}.{key}")
    records, ckpt = golden.train_run(name, data_dir, tmp / name,
                                     init_state=old["train_init"] if name in golden.REBUILT else None)
    assert_identical(records, old["train"], f"{name}.train")
    assert_identical(ckpt["model"], old["checkpoint"]["model"], f"{name}.checkpoint")
    assert_identical(golden.checkpoint_outputs(old["checkpoint"], data_dir), old["checkpoint_outputs"],
                     f"{name}.old_checkpoint")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    need_shared("data", "shakespeare", "input.txt")
    return golden.shakespeare_dir(tmp_path_factory.mktemp("golden"))


@pytest.mark.parametrize("name", list(golden.CASES))
def test_golden(name, data_dir, tmp_path):
    torch.set_num_threads(1)
    try:
        compare_case(name, data_dir, tmp_path)
    finally:
        torch.set_num_threads(2)

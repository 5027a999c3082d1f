"""eval.py: every token scored exactly once with the most left context the window allows."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import checkpoint
import variants
from conftest import run
from eval import window_plan


@pytest.mark.parametrize("n,T,stride", [(100, 16, 16), (100, 16, 5), (17, 16, 3), (10, 16, 4), (1000, 64, 1)])
def test_window_plan_scores_every_target_once(n, T, stride):
    plan, T_eff = window_plan(n, T, stride)
    hits = np.zeros(n, dtype=int)
    for start, first in plan:
        assert start + T_eff <= n - 1
        hits[start + 1 + first:start + 1 + T_eff] += 1
    assert hits[0] == 0 and (hits[1:] == 1).all()


@pytest.fixture(scope="module")
def trained(shakespeare_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    run(["train.py", f"--data_dir={shakespeare_dir}", f"--out_dir={out}", "--device=cpu", "--n_layer=2",
         "--n_head=2", "--n_embd=32", "--block_size=16", "--batch_size=8", "--max_iters=40", "--eval_interval=40",
         "--eval_iters=2", "--learning_rate=3e-3", "--warmup_iters=2", "--lr_decay_iters=40"])
    return out


def test_stride_one_equals_brute_force_full_context(trained, shakespeare_dir):
    run(["eval.py", f"--out_dir={trained}", "--stride=1", "--max_tokens=120", "--device=cpu"])
    result = json.loads((trained / "eval_val.json").read_text())
    ckpt = checkpoint.load(trained / "ckpt.pt")
    model = checkpoint.build_model(ckpt, variants.get).eval()
    data = np.fromfile(shakespeare_dir / "val.bin", dtype=np.uint16)[:120].astype(np.int64)
    losses = []
    with torch.no_grad():  # each target predicted from its last (up to) block_size tokens, one forward each
        for t in range(1, len(data)):
            ctx = torch.from_numpy(data[max(0, t - 16):t])[None]
            logits = model(ctx)
            losses.append(F.cross_entropy(logits[0, -1], torch.tensor(data[t])).item())
    assert result["tokens_scored"] == 119
    assert result["loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-5)
    assert result["bpc"] == pytest.approx(result["loss"] / math.log(2))


def test_full_split_is_scored_once_with_bytes_reported(trained):
    for stride in (16, 5):
        run(["eval.py", f"--out_dir={trained}", f"--stride={stride}", "--device=cpu", "--batch_size=64"])
        r = json.loads((trained / "eval_val.json").read_text())
        assert r["tokens_scored"] == 111540 - 1
        # Shakespeare is ASCII (1 char = 1 byte); bits per byte divides by every byte, incl. the unscored first one
        assert r["bits_per_byte"] == pytest.approx(r["bpc"] * (111540 - 1) / 111540, rel=1e-9)


def test_eval_bad_input(trained, tmp_path):
    proc = run(["eval.py", f"--out_dir={tmp_path}"], check=False)
    assert proc.returncode == 1 and "not found" in proc.stderr
    proc = run(["eval.py", f"--out_dir={trained}", "--stride=99"], check=False)
    assert proc.returncode == 2 and "stride=99 exceeds block_size 16" in proc.stderr

"""train.py as a real process: a bad init_from is one `error:` line and exit 2 before anything is written (the bad
optimizer settings are in tests/bad_inputs.py's matrix), a seed of any size trains, and a run whose steps can no
longer be applied stops with exit 1."""
import hashlib
import json
import math
import re
import time

import pytest
import torch

from infra import checkpoint, hf_import
import train
from conftest import run

BASE = ["--device=cpu", "--n_layer=2", "--n_head=2", "--n_embd=48", "--block_size=32", "--batch_size=4",
        "--dropout=0.0", "--bias=True", "--learning_rate=2e-3", "--warmup_iters=2", "--lr_decay_iters=20",
        "--min_lr=2e-4", "--eval_interval=1000", "--eval_iters=2", "--log_interval=1"]
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}  # a regression must not reach for the network


def args_for(data_dir, out_dir, *extra):
    return ["train.py", f"--data_dir={data_dir}", f"--out_dir={out_dir}", *BASE, *extra]


def digests(out_dir):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out_dir.iterdir())}


def records(out_dir, kind):
    lines = (out_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def one_error_line(proc):
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def finished_run(shakespeare_dir, tmp_path_factory):
    """A finished run: ckpt.pt, config.json and metrics.jsonl that no rejected command may touch."""
    out = tmp_path_factory.mktemp("finished")
    run(args_for(shakespeare_dir, out, "--max_iters=4", "--ckpt_interval=2"))
    assert {"ckpt.pt", "config.json", "metrics.jsonl"} <= set(digests(out))
    return out


@pytest.mark.parametrize("init_from,hint", [
    ("resum", "did you mean 'resume'?"),
    ("scrach", "did you mean 'scratch'?"),
    ("gpt2-mediun", "did you mean 'gpt2-medium'?"),
    ("openai-community/gpt2-xxl", "did you mean 'openai-community/gpt2-xl'?"),
    ("/nonexistent/hf_weights", ""),
])
def test_unknown_init_from_fails_at_once_with_the_valid_values(finished_run, shakespeare_dir, init_from, hint):
    before = digests(finished_run)
    t = time.time()
    proc = run(args_for(shakespeare_dir, finished_run, f"--init_from={init_from}", "--max_iters=8"), check=False,
               env=OFFLINE, timeout=120)
    assert proc.returncode == 2, proc.stderr
    line = one_error_line(proc)
    assert f"init_from={init_from!r} is not scratch, resume, an existing directory" in line
    assert "gpt2, gpt2-medium, gpt2-large, gpt2-xl" in line and hint in line
    assert digests(finished_run) == before
    assert time.time() - t < 60  # no network retries


def test_init_from_accepts_every_valid_kind_and_nothing_near_it(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"")
    for value in ("scratch", "resume", "gpt2", "gpt2-xl", "openai-community/gpt2-large", str(tmp_path)):
        assert hf_import.check_init_from(value) is None
    for value in ("gpt3", "gpt2-xxl", "community/gpt2", "Resume", str(tmp_path / "weights.bin"), str(tmp_path / "no")):
        with pytest.raises(ValueError, match="is not scratch, resume"):
            hf_import.check_init_from(value)
    with pytest.raises(ValueError, match="is not resume, an existing directory"):  # sample.py's own words
        hf_import.check_init_from("scratch", ("resume",))


def test_huge_seeds_train_and_are_reproducible(shakespeare_dir, tmp_path):
    losses = {}
    for name, seed in [("a", 10 ** 30), ("b", 10 ** 30), ("c", 10 ** 30 + 1), ("d", 20000), ("e", -(10 ** 30))]:
        out = tmp_path / name
        run(args_for(shakespeare_dir, out, f"--seed={seed}", "--max_iters=3"))
        losses[name] = [r["loss"] for r in records(out, "train")]
        assert len(losses[name]) == 3 and all(math.isfinite(x) for x in losses[name])
        assert json.loads((out / "config.json").read_text())["seed"] == seed
    assert losses["a"] == losses["b"]  # the same huge seed draws the same batches
    assert losses["a"] != losses["c"]  # a neighbouring one does not


# sha256 (first 12 hex digits) of the block_size 32, batch 4 input batches that BatchSampler draws for a seed, in the
# order train 0, 1, 12345, val 0, 1, 12345: a run resumed or repeated with a recorded seed sees the same data
BATCH_DIGESTS = {
    0: ["975745c93ca7", "241cee672521", "b96d745a802e", "112bfdbb4ddc", "6d41cde63b9b", "adc33d527f0d"],
    7: ["ecdc927d73d2", "fc4bf3a40284", "133bbc0ca632", "cf77c306d885", "5a93a1303e65", "07a2a3a8ad61"],
    1337: ["0a9c2280b561", "a5b8e9828638", "b1064a55ba77", "cfbfcc811b8a", "fd7dc27c1e5e", "f6a29875cbf3"],
    18446: ["c57c97cd1fd4", "c6b460dda173", "57d4153cbe05", "3951782dddb4", "25cb1a100bd7", "608bd347591e"],
    -1: ["bac9ec1872e1", "49c4d934013b", "3c91072e72d3", "2ff7d1f35867", "40737c6940b7", "bf8c04410497"],
    -9000: ["e428e2986d1b", "69ec64d7463d", "e1fcbb6b5d46", "13b9c1d84245", "2ccbaff2735a", "0beb57257979"],
}


@pytest.mark.parametrize("seed", list(BATCH_DIGESTS))
def test_seeds_in_torch_range_draw_the_batches_they_always_drew(shakespeare_dir, seed):
    meta = json.loads((shakespeare_dir / "meta.json").read_text())
    sampler = train.BatchSampler(shakespeare_dir, meta, 32, 4, seed, torch.device("cpu"))
    drawn = [hashlib.sha256(sampler.get(split, index)[0].numpy().tobytes()).hexdigest()[:12]
             for split in ("train", "val") for index in (0, 1, 12345)]
    assert drawn == BATCH_DIGESTS[seed]


NONFINITE = ["--on_nonfinite=skip", "--grad_clip=0", "--decay_lr=False", "--max_iters=30"]


def test_skip_stops_when_every_step_is_skipped(shakespeare_dir, tmp_path):
    out = tmp_path / "run"
    proc = run(args_for(shakespeare_dir, out, *NONFINITE, "--learning_rate=1e6", "--min_lr=0"), check=False)
    assert proc.returncode == 1, proc.stderr
    line = one_error_line(proc)
    assert "10 steps in a row had a non-finite loss or gradient" in line and "max_skipped_steps=10" in line
    first, last = map(int, re.search(r"\(iters (\d+)-(\d+);", line).groups())
    assert last - first + 1 == 10 and last < 29  # it did not run on to max_iters
    # the step that ends the run is not logged; the nine before it are, as skipped
    assert [r["iter"] for r in records(out, "train") if r["skipped"]] == list(range(first, last))


def test_skip_stops_at_once_when_the_weights_are_not_finite(finished_run, shakespeare_dir, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    state = checkpoint.load(finished_run / "ckpt.pt")
    # a broken weight, saved with a valid checksum
    state["model"]["transformer.h.0.attn.c_attn.weight"][0, 0] = float("nan")
    checkpoint.save(state, out / "ckpt.pt")
    before = digests(out)
    proc = run(args_for(shakespeare_dir, out, "--init_from=resume", *NONFINITE), check=False)
    assert proc.returncode == 1, proc.stderr
    assert "the model's parameters are non-finite at iter 4" in one_error_line(proc)
    assert records(out, "train") == []  # it stopped in the first step
    assert digests(out)["ckpt.pt"] == before["ckpt.pt"]

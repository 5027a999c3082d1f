"""Training that survives faults, shown with real processes: exact resume after SIGTERM and SIGKILL, a kill while a
checkpoint is being written, the bad-input matrix, non-finite values, and a DDP rank that dies."""
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import checkpoint
from conftest import REPO, run

BASE = ["--device=cpu", "--n_layer=2", "--n_head=2", "--n_embd=48", "--block_size=32", "--batch_size=4",
        "--dropout=0.1", "--bias=True", "--learning_rate=2e-3", "--warmup_iters=3", "--lr_decay_iters=30",
        "--min_lr=2e-4", "--max_iters=30", "--eval_interval=1000", "--eval_iters=3", "--log_interval=1",
        "--gradient_accumulation_steps=2"]


def args_for(data_dir, out_dir, *extra):
    return ["train.py", f"--data_dir={data_dir}", f"--out_dir={out_dir}", *BASE, *extra]


def train_losses(out_dir):
    """{iter: loss} of the training log; a resumed run's later lines replace the killed run's."""
    losses = {}
    for line in (out_dir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["kind"] == "train":
            losses[r["iter"]] = r["loss"]
    return losses


def run_until(args, pattern, sig):
    """Start a command, wait until its output shows `pattern`, send `sig`; return (returncode, output)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    proc = subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    out = []
    for line in proc.stdout:
        out.append(line)
        if pattern in line:
            proc.send_signal(sig)
            break
    out.append(proc.stdout.read())
    return proc.wait(timeout=120), "".join(out)


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def reference(shakespeare_dir, tmp_path_factory):
    """The uninterrupted run every interrupted one is compared with."""
    out = tmp_path_factory.mktemp("reference")
    run(args_for(shakespeare_dir, out), env={"OMP_NUM_THREADS": "2"})
    return train_losses(out)


def test_sigterm_checkpoints_and_resume_is_exact(shakespeare_dir, tmp_path, reference):
    out = tmp_path / "run"
    code, output = run_until(args_for(shakespeare_dir, out), "iter 12:", signal.SIGTERM)
    assert code == 0, output
    stopped = re.search(r"preempted by SIGTERM: checkpoint of iter (\d+) written to", output)
    assert stopped, output
    assert max(train_losses(out)) == int(stopped[1]) - 1 < 29  # it finished the step it was in, then stopped
    run(args_for(shakespeare_dir, out, "--init_from=resume"), env={"OMP_NUM_THREADS": "2"})
    resumed = train_losses(out)
    assert sorted(resumed) == sorted(reference) == list(range(30))
    assert resumed == reference  # bit-identical, step by step


def test_sigkill_resumes_exactly_from_the_last_interval_checkpoint(shakespeare_dir, tmp_path, reference):
    out = tmp_path / "run"
    code, _ = run_until(args_for(shakespeare_dir, out, "--ckpt_interval=5", "--keep_last=2"), "iter 17:",
                        signal.SIGKILL)
    assert code == -signal.SIGKILL
    last = torch.load(out / "ckpt.pt", weights_only=True)["iter_num"]
    assert last % 5 == 0 and 15 <= last < 30
    assert sorted(p.name for p in out.glob("ckpt_*.pt")) == [f"ckpt_{last - 5:08d}.pt", f"ckpt_{last:08d}.pt"]
    run(args_for(shakespeare_dir, out, "--init_from=resume", "--ckpt_interval=5", "--keep_last=2"),
        env={"OMP_NUM_THREADS": "2"})
    assert train_losses(out) == reference


def test_kill_during_checkpoint_write_keeps_the_previous_one(shakespeare_dir, tmp_path):
    out = tmp_path / "run"
    proc = run(["tests/fault_injection.py", "kill-during-save", "2", "--",
                *args_for(shakespeare_dir, out, "--ckpt_interval=5")[1:]], check=False)
    assert proc.returncode == -signal.SIGKILL
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".ckpt.pt.tmp")]
    assert leftovers  # the half-written file is there, under its temporary name only
    ckpt = checkpoint.load(out / "ckpt.pt")  # the previous checkpoint is intact and verifies
    assert ckpt["iter_num"] == 5
    run(args_for(shakespeare_dir, out, "--init_from=resume", "--max_iters=12", "--ckpt_interval=5"))
    assert torch.load(out / "ckpt.pt", weights_only=True)["iter_num"] == 12


def test_corrupt_checkpoint_is_named(shakespeare_dir, tmp_path):
    out = tmp_path / "run"
    run(args_for(shakespeare_dir, out, "--max_iters=5", "--ckpt_interval=5"))
    state = torch.load(out / "ckpt.pt", weights_only=True)
    state["model"]["lm_head.weight"][0, 0] += 1.0  # a flipped weight that still unpickles
    torch.save(state, out / "ckpt.pt")
    proc = run(args_for(shakespeare_dir, out, "--init_from=resume"), check=False)
    assert proc.returncode == 1 and "fails its checksum: the weights are corrupt" in proc.stderr
    (out / "ckpt.pt").write_bytes(b"not a checkpoint")
    proc = run(args_for(shakespeare_dir, out, "--init_from=resume"), check=False)
    assert proc.returncode == 1 and "is unreadable" in proc.stderr


@pytest.fixture(scope="module")
def finished_run(shakespeare_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("finished")
    run(args_for(shakespeare_dir, out, "--max_iters=4", "--ckpt_interval=2"))
    return out


@pytest.fixture(scope="module")
def broken_data(shakespeare_dir, tmp_path_factory):
    """Copies of the prepared data with one fault each."""
    root = tmp_path_factory.mktemp("broken")
    for name in ("missing_val", "truncated", "bad_meta"):
        shutil.copytree(shakespeare_dir, root / name)
    (root / "missing_val" / "val.bin").unlink()
    with open(root / "truncated" / "train.bin", "r+b") as f:
        f.truncate(1000)
    meta = json.loads((root / "bad_meta" / "meta.json").read_text())
    meta["dtype"] = "uint32"
    (root / "bad_meta" / "meta.json").write_text(json.dumps(meta))
    return root


BAD_TRAIN = [
    ([], ["--n_layers=3"], 2, "unknown config key 'n_layers' for variant 'gpt'; did you mean n_layer"),
    ([], ["--learning_rate=fast"], 2, "learning_rate expects float, got 'fast'"),
    ([], ["--n_head=5"], 2, "n_head=5 must divide n_embd=48"),
    ([], ["--variant=parallel", "--n_layer=3"], 2, "n_layer must be even, got 3"),
    ([], ["--init_from=resume", "--block_size=64"], 2, "block_size=64 exceeds the checkpoint's 32"),
    ([], ["--init_from=resume", "--n_embd=64", "--n_head=2"], 2, "n_embd=64 differs from the checkpoint's 48"),
    ([], ["--init_from=resume", "--variant=parallel"], 2, "is a 'gpt' checkpoint but variant='parallel'"),
    ([], ["--init_from=scratch"], 2, "ckpt.pt exists; use --init_from=resume"),
    ("missing_val", ["--init_from=resume"], 1, "val.bin not found but meta.json lists split 'val'"),
    ("truncated", ["--init_from=resume"], 1, "train.bin has 1000 bytes but meta.json says"),
    ("bad_meta", ["--init_from=resume"], 1, "dtype must be one of"),
]


@pytest.mark.parametrize("data,extra,code,message", BAD_TRAIN)
def test_bad_train_input_is_one_line_and_changes_nothing(finished_run, shakespeare_dir, broken_data, data, extra,
                                                        code, message):
    if "--variant=parallel" in extra:
        pytest.importorskip("variants.parallel")
    before = {p.name: digest(p) for p in finished_run.iterdir()}
    data_dir = broken_data / data if data else shakespeare_dir
    proc = run(args_for(data_dir, finished_run, *extra), check=False)
    assert proc.returncode == code, proc.stderr
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert {p.name: digest(p) for p in finished_run.iterdir()} == before


@pytest.mark.parametrize("start,message", [
    ("", "the prompt is empty"),
    ("Zeus ⚡", "'⚡' (U+26A1) is not in this dataset's 65-character vocabulary"),
    ("a" * 33, "the prompt is 33 tokens but the model's context is 32"),
])
def test_bad_sample_input(finished_run, start, message):
    proc = run(["sample.py", f"--out_dir={finished_run}", f"--start={start}"], check=False)
    assert proc.returncode == 1 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(finished_run, tmp_path, shakespeare_dir):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    good = digest(out / "ckpt.pt")
    # an absurd learning rate blows the weights up: the loss turns inf/nan within a few steps
    blowup = ["--init_from=resume", "--learning_rate=1e30", "--decay_lr=False", "--max_iters=20", "--grad_clip=0"]
    proc = run(args_for(shakespeare_dir, out, *blowup), check=False)
    assert proc.returncode == 1 and "non-finite loss" in proc.stderr
    assert digest(out / "ckpt.pt") == good
    proc = run(args_for(shakespeare_dir, out, *blowup, "--on_nonfinite=skip"), check=False)
    assert proc.returncode == 1 and "steps in a row had a non-finite loss or gradient" in proc.stderr
    assert "non-finite loss or gradient, step skipped" in proc.stdout
    assert digest(out / "ckpt.pt") == good
    skipped = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r.get("skipped")]
    assert skipped


def test_a_dead_rank_ends_the_job_instead_of_hanging(shakespeare_dir, tmp_path):
    t = time.time()
    proc = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                "tests/fault_injection.py", "die-on-rank", "1", "3", "--",
                *args_for(shakespeare_dir, tmp_path / "ddp", "--ddp_timeout_s=30")[1:]], check=False, timeout=300)
    assert proc.returncode != 0
    assert time.time() - t < 240

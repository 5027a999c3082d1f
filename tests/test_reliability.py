"""Training that survives faults, shown with real processes: exact resume after SIGTERM and SIGKILL, a kill while a
checkpoint is being written, non-finite values, and a DDP rank that dies."""
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

from infra import checkpoint
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


# every part of a comparison runs with the same threads (the environment's, else 2): bits depend on them
THREADS = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}


def run_until(args, pattern, sig):
    """Start a command, wait until its output shows `pattern`, send `sig`; return (returncode, output)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **THREADS)
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
    run(args_for(shakespeare_dir, out), env=THREADS)
    return train_losses(out)


def test_sigterm_checkpoints_and_resume_is_exact(shakespeare_dir, tmp_path, reference):
    out = tmp_path / "run"
    code, output = run_until(args_for(shakespeare_dir, out), "iter 12:", signal.SIGTERM)
    assert code == 0, output
    stopped = re.search(r"preempted by SIGTERM: checkpoint of iter (\d+) written to", output)
    assert stopped, output
    assert max(train_losses(out)) == int(stopped[1]) - 1 < 29  # it finished the step it was in, then stopped
    run(args_for(shakespeare_dir, out, "--init_from=resume"), env=THREADS)
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
        env=THREADS)
    assert train_losses(out) == reference
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # the steps the killed run logged after its last checkpoint were dropped, not repeated
    assert [r["iter"] for r in records if r["kind"] == "train"] == list(range(30))
    assert [r["iter"] for r in records if r["kind"] == "eval"] == [0, 30]


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

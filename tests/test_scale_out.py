"""train.py past one process, as real processes on CPU/gloo: FSDP gives the records of DDP, a preempted FSDP run
resumes record by record, a sharded checkpoint of 2 ranks continues in 1 process, activation checkpointing changes
no loss, and a two-"node" launch on localhost trains like one node. infra/scaling.py and infra/memory.py have their
own tests."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys

import pytest

from conftest import REPO, run

T = ["--device=cpu", "--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=4",
     "--dropout=0.1", "--learning_rate=2e-3", "--warmup_iters=2", "--lr_decay_iters=20", "--min_lr=2e-4",
     "--max_iters=8", "--eval_interval=4", "--eval_iters=3", "--log_interval=1", "--gradient_accumulation_steps=4"]
LAUNCH = ["launch.py", "--standalone", "--nproc_per_node=2"]


def train(data, out, *extra, launcher=LAUNCH):
    return [*launcher, "train.py", *T, f"--data_dir={data}", f"--out_dir={out}", *extra]


def records(out):
    """[(iter, kind, loss)] of a run's metrics.jsonl."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["iter"], r["kind"], r["loss"] if r["kind"] == "train" else r["val/loss"]) for r in rows]


def assert_same_records(a, b, tol=1e-5):
    assert [r[:2] for r in a] == [r[:2] for r in b]
    for x, y in zip(a, b):
        assert abs(x[2] - y[2]) <= tol, (x, y)


@pytest.fixture(scope="module")
def fsdp_run(shakespeare_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp") / "run"
    run(train(shakespeare_dir, out, "--parallelism=fsdp"))
    return out


@pytest.fixture(scope="module")
def ddp_run(shakespeare_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "run"
    run(train(shakespeare_dir, out))
    return out


def test_fsdp_logs_the_records_of_ddp_and_writes_a_sharded_checkpoint(fsdp_run, ddp_run):
    assert (fsdp_run / "ckpt" / "manifest.json").is_file() and not (fsdp_run / "ckpt.pt").exists()
    assert len(records(fsdp_run)) == 8 + 3
    assert_same_records(records(fsdp_run), records(ddp_run))


def test_fsdp_preempted_then_resumed_repeats_the_uninterrupted_run(shakespeare_dir, tmp_path, fsdp_run):
    out = tmp_path / "run"
    args = [sys.executable, *train(shakespeare_dir, out, "--parallelism=fsdp", "--max_iters=100000",
                                   "--lr_decay_iters=20")]
    proc = subprocess.Popen(args, cwd=REPO, env=dict(os.environ, PYTHONUNBUFFERED="1"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    output = []
    for line in proc.stdout:
        output.append(line)
        if line.startswith("iter 2:"):
            proc.send_signal(signal.SIGTERM)
            break
    output.append(proc.stdout.read())
    assert proc.wait(timeout=120) == 0, "".join(output)[-3000:]
    run(train(shakespeare_dir, out, "--parallelism=fsdp", "--init_from=resume"))
    assert_same_records(records(out), records(fsdp_run), tol=0)


def test_a_two_rank_sharded_checkpoint_continues_in_one_process(shakespeare_dir, tmp_path, fsdp_run):
    out = tmp_path / "run"
    shutil.copytree(fsdp_run, out)
    run(train(shakespeare_dir, out, "--parallelism=fsdp", "--init_from=resume", "--max_iters=10", launcher=[]))
    two_ranks = tmp_path / "two"
    shutil.copytree(fsdp_run, two_ranks)
    run(train(shakespeare_dir, two_ranks, "--parallelism=fsdp", "--init_from=resume", "--max_iters=10"))
    # batches are seeded per micro-batch: one process with 4 micro-steps draws what 2 ranks x 2 did, so the evals agree
    # (a train record is the loss of the last micro-step: another batch for 1 process than for rank 0 of 2)
    evals = [[r for r in records(run_dir) if r[1] == "eval"] for run_dir in (out, two_ranks)]
    assert_same_records(*evals)
    assert evals[0][-1][:2] == (10, "eval")


def test_activation_checkpointing_changes_no_loss(shakespeare_dir, tmp_path):
    plain, recomputed = tmp_path / "plain", tmp_path / "recomputed"
    run(train(shakespeare_dir, plain, "--max_iters=4", launcher=[]))
    run(train(shakespeare_dir, recomputed, "--max_iters=4", "--activation_checkpointing=True", launcher=[]))
    assert records(plain) == records(recomputed)  # dropout included: the recomputation redraws the same masks


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_on_localhost_train_like_one_node(shakespeare_dir, tmp_path, ddp_run):
    out = tmp_path / "run"
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = [subprocess.Popen([sys.executable, "launch.py", "--nnodes=2", f"--node_rank={rank}", "--nproc_per_node=1",
                               "--rdzv_backend=c10d", f"--rdzv_endpoint={endpoint}", "--rdzv_id=two-nodes",
                               "train.py", *T, f"--data_dir={shakespeare_dir}", f"--out_dir={out}"],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in (0, 1)]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    assert_same_records(records(out), records(ddp_run))


def test_sample_and_eval_read_the_sharded_checkpoint(fsdp_run, tmp_path):
    proc = run(["sample.py", f"--out_dir={fsdp_run}", "--device=cpu", "--max_new_tokens=8", "--num_samples=1",
                "--start=ROMEO:"])
    assert proc.stdout.startswith("ROMEO:")
    folder = run(["tools/eval.py", f"--out_dir={fsdp_run}", "--device=cpu", "--max_tokens=300"]).stdout
    assert f"checkpoint {fsdp_run / 'ckpt'} " in folder
    run([sys.executable, "-m", "infra.scaling", "consolidate", str(fsdp_run / "ckpt"), str(tmp_path / "one.pt")])
    one_file = run(["tools/eval.py", f"--out_dir={tmp_path}", "--ckpt=one.pt", "--device=cpu", "--max_tokens=300"]).stdout
    loss = lambda out: re.search(r" loss (\S+) ", out)[1]
    assert loss(folder) == loss(one_file)

"""eval.py: every token scored exactly once with the most left context the window allows."""
import fcntl
import json
import math
import os
import pty
import struct
import subprocess
import sys
import termios

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from infra import checkpoint
import variants
from conftest import REPO, run
from tools.eval import window_plan


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
    run(["tools/eval.py", f"--out_dir={trained}", "--stride=1", "--max_tokens=120", "--device=cpu"])
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
        run(["tools/eval.py", f"--out_dir={trained}", f"--stride={stride}", "--device=cpu", "--batch_size=64"])
        r = json.loads((trained / "eval_val.json").read_text())
        assert r["tokens_scored"] == 111540 - 1
        # Shakespeare is ASCII (1 char = 1 byte); bits per byte divides by every byte, incl. the unscored first one
        assert r["bits_per_byte"] == pytest.approx(r["bpc"] * (111540 - 1) / 111540, rel=1e-9)


def test_eval_bad_input(trained, tmp_path):
    proc = run(["tools/eval.py", f"--out_dir={tmp_path}"], check=False)
    assert proc.returncode == 1 and "not found" in proc.stderr
    proc = run(["tools/eval.py", f"--out_dir={trained}", "--stride=99"], check=False)
    assert proc.returncode == 2 and "stride=99 exceeds block_size 16" in proc.stderr


def parse_result_line(line):
    """eval.py's result line, 'key value key value ...', as a dict of strings."""
    words = line.split(" ")
    assert len(words) % 2 == 0, line
    return dict(zip(words[0::2], words[1::2]))


def test_outputs_land_beside_the_run_and_stdout_is_only_results(trained, tmp_path):
    """Started from another directory: eval_<split>.json and the attention analysis go under out_dir, nothing into
    the working directory; stdout is the result line and the paths written, with no progress bar (stderr is a pipe)."""
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    before = {p.name for p in trained.iterdir()}
    proc = run([str(REPO / "tools/eval.py"), f"--out_dir={trained}", "--split=val", "--max_tokens=300", "--device=cpu",
                "--attention=True"], cwd=cwd)
    assert list(cwd.iterdir()) == []
    assert {p.name for p in trained.iterdir()} - before <= {"eval_val.json", "attention"}
    assert (trained / "attention" / "analysis.json").is_file()
    assert sorted(p.name for p in (trained / "attention" / "heatmaps").iterdir()) == [
        f"{trained.name}_layer{l}.png" for l in range(2)]
    lines = proc.stdout.splitlines()
    result = parse_result_line(lines[0])
    assert result["tokens_scored"] == "299" and result["split"] == "val"
    assert json.loads((trained / "eval_val.json").read_text())["loss"] == pytest.approx(float(result["loss"]),
                                                                                        abs=1e-4)
    assert lines[1] == f"wrote {trained / 'eval_val.json'}"
    assert "\r" not in proc.stdout + proc.stderr and "tok/s" not in proc.stderr


def run_with_terminal_stderr(args, cwd):
    """Run a project script with stdout a pipe and stderr a pseudo-terminal: (stdout, what the terminal showed)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal 100 columns wide
    proc = subprocess.Popen([sys.executable, *args], cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=slave, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    os.close(slave)
    shown = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: every writer of the terminal has closed it
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    out = proc.stdout.read().decode()
    proc.stdout.close()
    assert proc.wait(timeout=600) == 0, shown.decode(errors="replace")
    return out, shown.decode(errors="replace")


def test_progress_goes_to_a_terminal_stderr_and_never_to_stdout(trained, tmp_path):
    out, shown = run_with_terminal_stderr([str(REPO / "tools/eval.py"), f"--out_dir={trained}", "--split=val",
                                           "--max_tokens=300", "--device=cpu", "--batch_size=2"], cwd=tmp_path)
    assert "eval:" in shown and "tok" in shown  # the bar, drawn on the terminal
    lines = out.splitlines()
    assert len(lines) == 2 and lines[1] == f"wrote {trained / 'eval_val.json'}"
    assert parse_result_line(lines[0])["tokens_scored"] == "299"
    assert list(tmp_path.iterdir()) == []

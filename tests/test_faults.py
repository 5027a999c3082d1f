"""Faults that are not a single bad setting: the disk filling up while a checkpoint is written, torchrun preempted
through launch.py, a checkpoint met by data of another vocabulary, ids outside the vocabulary in a .bin or drawn by
generation, sampling at any temperature and seed, and evaluation from another working directory."""
import hashlib
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from infra import checkpoint
import variants
from conftest import REPO, run
from data.common import DataError, check_same_vocabulary, load_meta, open_split, write_dataset
from objectives import special_ids

TINY = ["--device=cpu", "--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=4",
        "--warmup_iters=1", "--lr_decay_iters=40", "--eval_interval=1000", "--eval_iters=1", "--log_interval=1"]


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def tiny_run(shakespeare_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_run")
    run(["train.py", *TINY, f"--data_dir={shakespeare_dir}", f"--out_dir={out}", "--max_iters=4"])
    return out


def limit_file_size(limit):
    def apply():  # in the child: writes past `limit` bytes fail with EFBIG, as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_full_disk_while_checkpointing_is_one_line_and_keeps_the_previous_checkpoint(tiny_run, shakespeare_dir,
                                                                                        tmp_path):
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    good = digest(out / "ckpt.pt")
    assert (out / "ckpt.pt").stat().st_size > 60_000
    proc = subprocess.run([sys.executable, "train.py", *TINY, f"--data_dir={shakespeare_dir}", f"--out_dir={out}",
                           "--init_from=resume", "--max_iters=6", "--ckpt_interval=2"], cwd=REPO,
                          capture_output=True, text=True, timeout=300, preexec_fn=limit_file_size(60_000))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: cannot write checkpoint") and "File too large" in lines[0]
    assert digest(out / "ckpt.pt") == good
    assert not [p.name for p in out.iterdir() if ".tmp" in p.name]  # no half-written temporaries left


def test_sigterm_to_the_launcher_checkpoints_and_exits_zero(shakespeare_dir, tmp_path):
    out = tmp_path / "ddp"
    args = [sys.executable, "launch.py", "--standalone", "--nproc_per_node=2", "train.py", *TINY,
            f"--data_dir={shakespeare_dir}", f"--out_dir={out}", "--max_iters=100000", "--gradient_accumulation_steps=2",
            "--ddp_timeout_s=60"]
    proc = subprocess.Popen(args, cwd=REPO, env=dict(os.environ, PYTHONUNBUFFERED="1"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    output = []
    for line in proc.stdout:
        output.append(line)
        if "iter 5:" in line:
            proc.send_signal(signal.SIGTERM)  # the launcher only, as a scheduler preempting the job would
            break
    output.append(proc.stdout.read())
    code, output = proc.wait(timeout=120), "".join(output)
    assert code == 0, output[-3000:]
    assert "launch: stopped by SIGTERM after the workers checkpointed" in output
    assert "Traceback" not in output
    ckpt = checkpoint.load(out / "ckpt.pt")
    assert f"checkpoint of iter {ckpt['iter_num']} written" in output


def test_resume_eval_and_analysis_refuse_data_of_another_vocabulary(tiny_run, tmp_path):
    saved = torch.load(tiny_run / "ckpt.pt", weights_only=True)["data_meta"]
    same = {**saved, "splits": {}}
    check_same_vocabulary(saved, same, "ckpt.pt", "d")  # the same characters: accepted
    shuffled = {**saved, "chars": saved["chars"][1:] + saved["chars"][:1]}  # same size, other meaning
    with pytest.raises(DataError, match=r"65 vs 65 characters \(id 0 is '\\n' vs ' '\)"):
        check_same_vocabulary(saved, shuffled, "ckpt.pt", "d")
    with pytest.raises(DataError, match="eot_token 50256 vs 1"):
        check_same_vocabulary({"tokenizer": "gpt2", "vocab_size": 50257, "eot_token": 50256},
                              {"tokenizer": "gpt2", "vocab_size": 50257, "eot_token": 1}, "ckpt.pt", "d")


def test_prepare_records_the_largest_id_and_open_split_checks_it(tmp_path):
    ids = np.array([0, 5, 3, 9], dtype=np.uint16)
    meta = {"dataset": "t", "tokenizer": "char", "vocab_size": 10, "dtype": "uint16", "chars": list("abcdefghij")}
    write_dataset(tmp_path, {"train": ids, "val": ids[:2]}, meta)
    meta = load_meta(tmp_path)
    assert meta["splits"]["train"]["max_id"] == 9 and meta["splits"]["val"]["max_id"] == 5
    assert open_split(tmp_path, "train", meta).tolist() == ids.tolist()
    np.array([0, 5, 3, 8], dtype=np.uint16).tofile(tmp_path / "train.bin")  # a foreign file of the same size
    with pytest.raises(DataError, match="holds token id 8 but meta.json says its largest id is 9"):
        open_split(tmp_path, "train", meta)


def boosted(name, data_vocab):
    """A fresh model of `name` whose logits at and beyond data_vocab (padding rows, special tokens) dominate."""
    spec = variants.get(name)
    config = spec.config_class(n_layer=1, n_head=2, n_embd=32, block_size=16, dropout=0.0,
                               vocab_size=spec.objective.vocab_size(data_vocab))
    torch.manual_seed(0)
    model = spec.build(config).eval()

    def boost(module, args, out):
        logits = out["mlm"] if isinstance(out, dict) else out
        logits[..., data_vocab:] += 20.0  # far more likely than any real token

    model.register_forward_hook(boost)
    return model


@pytest.mark.parametrize("name,data_vocab", [("gpt", 50257), ("llama", 50257), ("duo_predict", 65)])
def test_generation_never_draws_an_id_outside_the_data_vocabulary(name, data_vocab):
    model = boosted(name, data_vocab)
    assert model.config.vocab_size > data_vocab
    idx = torch.zeros(4, 1, dtype=torch.long)
    free = model.generate(idx, 30, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert (free >= data_vocab).any()  # without the limit the padding rows and special tokens are drawn
    limited = model.generate(idx, 30, temperature=1.0, top_k=None, generator=torch.Generator().manual_seed(0),
                             vocab_size=data_vocab)
    assert limited.max() < data_vocab


def test_fill_mask_never_proposes_padding_or_special_tokens():
    model = boosted("bert", 50257)
    sp = special_ids(model.config.vocab_size)
    assert sp["pad"] > 50257  # padding rows sit between the data vocabulary and the special tokens
    obj = variants.get("bert").objective
    [candidates] = obj.fill_mask(model, [[1, 2, 3], [4, 5]], top_k=50, vocab_size=50257)
    assert all(t < 50257 for t, _ in candidates)


def test_sample_at_any_temperature_and_seed(tiny_run):
    base = ["sample.py", f"--out_dir={tiny_run}", "--device=cpu", "--max_new_tokens=20", "--num_samples=1",
            "--start=ROMEO:"]
    greedy = run([*base, "--temperature=0"]).stdout
    assert run([*base, "--temperature=1e-45"]).stdout == greedy  # the limit of sampling is greedy decoding
    huge = run([*base, "--temperature=1.0", "--top_k=None", "--seed=99999999999999999999"]).stdout
    assert huge == run([*base, "--temperature=1.0", "--top_k=None", "--seed=99999999999999999999"]).stdout
    assert huge.startswith("ROMEO:")


def test_eval_finds_the_data_from_any_working_directory(shakespeare_dir, tmp_path):
    shutil.copytree(shakespeare_dir, tmp_path / "data" / "mine")
    out = tmp_path / "run"
    run([str(REPO / "train.py"), *TINY, "--data_dir=data/mine", f"--out_dir={out}", "--max_iters=2"], cwd=tmp_path)
    recorded = json.loads((out / "config.json").read_text())["data_dir"]
    assert recorded == str(tmp_path / "data" / "mine")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = run([str(REPO / "tools/eval.py"), f"--out_dir={out}", "--device=cpu", "--max_tokens=200"], cwd=elsewhere)
    assert "val" in proc.stdout


def test_a_relative_data_dir_of_an_older_checkpoint_is_found_in_the_repository(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert checkpoint.trained_data_dir({"config": {"data_dir": "data/enwik8"}}) == str(REPO / "data" / "enwik8")
    assert checkpoint.trained_data_dir({"config": {"data_dir": "/abs/x"}}) == "/abs/x"
    assert checkpoint.trained_data_dir({}) == ""


def test_a_failing_worker_under_the_launcher_is_one_line_not_a_traceback(shakespeare_dir, tmp_path):
    proc = run(["launch.py", "--standalone", "--nproc_per_node=2", "train.py", *TINY, f"--data_dir={shakespeare_dir}",
                f"--out_dir={tmp_path / 'run'}", "--gradient_accumulation_steps=1"], check=False)
    assert proc.returncode == 1
    assert "error: gradient_accumulation_steps=1 must be a multiple of the 2 ranks" in proc.stderr  # the workers'
    # both ranks fail; the one that exits first makes torchrun SIGTERM the other, if it is still alive (exit -15)
    last = proc.stderr.strip().splitlines()[-1]
    codes = re.fullmatch(r"error: 2 worker\(s\) failed \(rank 0: exit (-?\d+), rank 1: exit (-?\d+)\); "
                         r"their own errors are above", last)
    assert codes and "2" in codes.groups() and set(codes.groups()) <= {"2", "-15"}, last
    assert "Traceback" not in proc.stderr

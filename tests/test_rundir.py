"""One run, one directory, with real processes: a second writer of a held out_dir refuses in one line naming the
holder's PID, a killed run leaves no lock, --overwrite leaves exactly one run, eval_only writes nothing for a model it
did not load, and the edges of sampling, allocation and temporaries answer without a traceback."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO, run
from data.common import pid_alive, remove_dead_temporaries
from infra import flops, rundir, runtime
from model import sample_next
from test_train_validation import args_for, digests, one_error_line, records

SLOW = ["--max_iters=100000", "--eval_interval=100000", "--log_interval=100000", "--lr_decay_iters=100000"]


def start(args):
    """A train.py process in the background, returned once it holds its out_dir (its config.json is written)."""
    out = next(a.split("=", 1)[1] for a in args if a.startswith("--out_dir="))
    proc = subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 120
    while rundir.holder(out) != proc.pid:
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() is not None else ""
        time.sleep(0.1)
    return proc


@pytest.fixture(scope="module")
def finished(shakespeare_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    run(args_for(shakespeare_dir, out, "--max_iters=4"))
    return out


def test_a_second_run_on_a_held_out_dir_refuses_naming_the_holder(shakespeare_dir, tmp_path):
    out = tmp_path / "run"
    first = start(args_for(shakespeare_dir, out, *SLOW))
    try:
        for args in (args_for(shakespeare_dir, out, "--max_iters=2"),  # a new directory claimed meanwhile
                     args_for(shakespeare_dir, out, "--max_iters=2", "--overwrite=True")):
            proc = run(args, check=False)
            assert proc.returncode == 1
            assert f"out_dir {out} is in use by process {first.pid}" in one_error_line(proc)
        written = digests(out)
    finally:
        first.send_signal(signal.SIGTERM)  # preempted: checkpoint, exit 0
        assert first.wait(timeout=120) == 0
    assert all(r["iter"] >= 0 for r in records(out, "train") + records(out, "eval"))
    assert set(written) <= set(digests(out))  # the refused runs removed nothing


def test_eval_and_export_refuse_while_training_holds_the_directory(shakespeare_dir, finished, tmp_path):
    out = tmp_path / "run"
    run(["cp", "-r", str(finished), str(out)])
    first = start(args_for(shakespeare_dir, out, "--init_from=resume", *SLOW))
    try:
        for argv in (["tools/eval.py", f"--out_dir={out}", "--device=cpu", "--max_tokens=100"],
                     ["tools/export.py", f"--out_dir={out}"]):
            proc = run(argv, check=False)
            assert proc.returncode == 1 and f"in use by process {first.pid}" in one_error_line(proc), argv
        assert not (out / "hf").exists() and not list(out.glob("eval_*.json"))
    finally:
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=120) == 0


def test_a_killed_run_leaves_no_lock(shakespeare_dir, tmp_path):
    out = tmp_path / "run"
    first = start(args_for(shakespeare_dir, out, *SLOW))
    first.kill()
    first.wait()
    assert rundir.holder(out) is None
    run(args_for(shakespeare_dir, out, "--max_iters=2", "--overwrite=True"))


def test_overwrite_leaves_exactly_one_run(shakespeare_dir, finished, tmp_path):
    out = tmp_path / "run"
    run(["cp", "-r", str(finished), str(out)])
    (out / "notes.txt").write_text("mine\n")
    (out / "ckpt_00000002.pt").write_bytes(b"a step copy of the old run")
    run(args_for(shakespeare_dir, out, "--max_iters=2", "--overwrite=True"))
    iters = [r["iter"] for r in records(out, "train")]
    assert iters == sorted(set(iters)) and max(iters) < 2  # the old run's records are gone, not appended to
    assert json.loads((out / "config.json").read_text())["max_iters"] == 2
    assert (out / "notes.txt").read_text() == "mine\n" and not (out / "ckpt_00000002.pt").exists()


def test_eval_only_needs_a_loaded_model_and_writes_no_config(shakespeare_dir, finished, tmp_path):
    out = tmp_path / "run"
    run(["cp", "-r", str(finished), str(out)])
    before = digests(out)
    proc = run(args_for(shakespeare_dir, out, "--eval_only=True"), check=False)
    assert proc.returncode == 2 and "evaluates a trained model" in one_error_line(proc)
    assert digests(out) == before
    evals = len(records(out, "eval"))
    run(args_for(shakespeare_dir, out, "--eval_only=True", "--init_from=resume"))
    assert (out / "config.json").read_bytes() == (finished / "config.json").read_bytes()
    assert len(records(out, "eval")) == evals + 1  # the loaded model's evaluation


@pytest.mark.parametrize("value", ["", "   "])
def test_an_empty_out_dir_is_a_configuration_error_everywhere(shakespeare_dir, tmp_path, value):
    commands = [args_for(shakespeare_dir, value, "--max_iters=2"), ["sample.py", f"--out_dir={value}"],
                ["tools/eval.py", f"--out_dir={value}"], ["tools/export.py", f"--out_dir={value}"],
                ["bench.py", f"--out_dir={value}"]]
    if value:  # analysis's default out_dir is "" (beside the checkpoint); a blank one is an error
        commands.append(["tools/analysis.py", f"--ckpt={tmp_path}", f"--out_dir={value}"])
    for argv in commands:
        proc = run([str(REPO / argv[0]), *argv[1:]], cwd=tmp_path, check=False)  # from a directory a run could fill
        assert proc.returncode == 2 and "out_dir is empty" in one_error_line(proc), argv
    assert list(tmp_path.iterdir()) == []


def test_a_bad_model_setting_is_exit_2_on_resume_too(shakespeare_dir, finished):
    before = digests(finished)
    for setting in ("--dropout=2", "--dropout=1e999"):
        proc = run(args_for(shakespeare_dir, finished, "--init_from=resume", setting), check=False)
        assert proc.returncode == 2 and "dropout must be" in one_error_line(proc), setting
    assert digests(finished) == before


def test_every_float_model_field_must_be_finite(shakespeare_dir, tmp_path):
    nan = tmp_path / "nan.py"  # the command line cannot spell nan; a config file can
    nan.write_text('norm_eps = float("nan")\n')
    for variant, setting in (("llama", str(nan)), ("llama", "--rope_theta=-1e999"), ("bert", "--layer_norm_eps=1e999"),
                             ("rotating_head", "--rope_base=1e999"), ("adaptive_span", "--span_reg=1e999")):
        proc = run(["train.py", setting, *args_for(shakespeare_dir, tmp_path / "x", f"--variant={variant}",
                                                   "--bias=False", "--max_iters=2")[1:]], check=False)
        assert proc.returncode == 2 and "must be a finite number" in one_error_line(proc), setting
    assert not (tmp_path / "x").exists()


def test_a_model_too_large_to_allocate_is_one_line(shakespeare_dir, tmp_path):
    proc = run(args_for(shakespeare_dir, tmp_path / "x", "--n_layer=64", "--n_embd=1048576", "--n_head=1",
                        "--max_iters=2"), check=False)
    line = one_error_line(proc)
    assert proc.returncode == 1 and "cannot allocate the model" in line and "bench.py plan" in line
    assert not (tmp_path / "x").exists()


def test_sampling_never_raises_at_any_temperature_and_top_k():
    logits = torch.randn(3, 11) * 30
    logits[0, 4] = logits[0].max() + 5  # a clear favourite: tiny temperatures pick it
    for temperature in (1e-300, 1e-45, 1e-12, 0.7, 1e12, 1e300, float("inf")):
        for top_k in (None, 1, 5, 11, 50):
            ids = sample_next(logits, temperature, top_k, torch.Generator().manual_seed(0))
            assert ids.shape == (3, 1) and ids.min() >= 0 and ids.max() < 11
            if temperature < 1e-10 or top_k == 1:
                assert ids[0, 0] == 4


def test_the_mfu_probe_is_short_and_half_precision_on_cpu_is_refused():
    t = time.perf_counter()
    assert flops.peak_flops(torch.device("cpu"), torch.bfloat16) > 0
    assert time.perf_counter() - t < 10  # bounded by its budget (2 s), whatever bfloat16 costs on this CPU
    with pytest.raises(ValueError, match="float16 on CPU"):
        runtime.resolve("cpu", "float16")


def test_temporaries_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert not pid_alive(dead.pid)
    names = [f".hf.tmp{dead.pid}", f".hf.old{dead.pid}", f".hf.tmp{os.getpid()}", "hf"]
    for name in names:
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(b"x")
    remove_dead_temporaries(tmp_path, r"\.hf\.(?:tmp|old)(\d+)")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[2:])


def test_prepare_removes_what_a_killed_prepare_left(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "data"
    out.mkdir()
    (out / f"train.bin.tmp-{dead.pid}").write_bytes(b"half a split")
    source = tmp_path / "text.txt"
    source.write_text("hello world\n" * 2000)
    run(["data/shakespeare_char/prepare.py", f"--source={source}", f"--out_dir={out}"])
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "train.bin", "val.bin"]

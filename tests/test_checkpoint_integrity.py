"""Checkpoint integrity with real train.py / sample.py / eval.py processes: the checksum covers every entry of a
checkpoint (format 2) while format 1 files still load; empty and foreign files are one-line errors; temporaries of
dead writers are removed; --keep_last rotates only the numbered copies train.py writes."""
import hashlib
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from infra import checkpoint
from conftest import REPO, run
from data.common import pid_alive

BASE = ["--device=cpu", "--n_layer=2", "--n_head=2", "--n_embd=48", "--block_size=32", "--batch_size=4",
        "--learning_rate=2e-3", "--warmup_iters=2", "--lr_decay_iters=20", "--max_iters=5", "--eval_interval=1000",
        "--eval_iters=2", "--log_interval=5"]
ENV = {"OMP_NUM_THREADS": "2"}


def train_args(data_dir, out_dir, *extra):
    return ["train.py", f"--data_dir={data_dir}", f"--out_dir={out_dir}", *BASE, *extra]


def digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def assert_one_error_line(proc, *fragments):
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def dead_pid():
    """The id of a process that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not pid_alive(child.pid)
    return child.pid


@pytest.fixture(scope="module")
def trained(shakespeare_dir, tmp_path_factory):
    """A finished 5-step run: ckpt.pt holds weights, AdamW moments, RNG and sampler state."""
    out = tmp_path_factory.mktemp("trained")
    run(train_args(shakespeare_dir, out, "--ckpt_interval=5"), env=ENV)
    return out


@pytest.fixture
def run_copy(trained, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    return out


# ---------------------------------------------------------------------------------------------------------------
# 1. the checksum covers the whole checkpoint


def test_flipped_bytes_in_an_optimizer_tensor_stop_resume(run_copy, shakespeare_dir):
    path = run_copy / "ckpt.pt"
    state = torch.load(path, weights_only=True)
    assert state["format_version"] == 2
    moments = state["optimizer"]["state"]
    key = max(moments, key=lambda k: moments[k]["exp_avg"].numel())
    raw = bytearray(path.read_bytes())
    needle = moments[key]["exp_avg"].numpy().tobytes()
    assert raw.count(needle) == 1  # the tensor's bytes, stored as they are inside the zip
    at = raw.find(needle) + len(needle) // 2
    raw[at:at + 4] = bytes(b ^ 0xFF for b in raw[at:at + 4])
    path.write_bytes(bytes(raw))
    corrupted = torch.load(path, weights_only=True)  # torch itself notices nothing
    assert not torch.equal(corrupted["optimizer"]["state"][key]["exp_avg"], moments[key]["exp_avg"])
    before = digest(path)
    proc = run(train_args(shakespeare_dir, run_copy, "--init_from=resume", "--max_iters=10"), check=False, env=ENV)
    assert_one_error_line(proc, str(path), "fails its checksum", "the optimizer state is corrupt")
    assert digest(path) == before


# every entry of a real checkpoint, changed in a way that still unpickles, re-saved with the old checksum
EDITS = {
    "the weights": lambda s: s["model"]["lm_head.weight"].view(-1)[7].add_(1e-3),
    "the optimizer state": lambda s: next(iter(s["optimizer"]["state"].values()))["exp_avg_sq"].view(-1)[0].mul_(2),
    "optimizer step": lambda s: next(iter(s["optimizer"]["state"].values()))["step"].add_(1),
    "optimizer lr": lambda s: s["optimizer"]["param_groups"][0].update(lr=s["optimizer"]["param_groups"][0]["lr"] * 2),
    "the RNG state": lambda s: s["rng"]["torch"].__setitem__(100, s["rng"]["torch"][100] ^ 1),
    "python RNG": lambda s: s["rng"].update(python=(s["rng"]["python"][0], s["rng"]["python"][1][:-1] + (5,),
                                                    s["rng"]["python"][2])),
    "the sampler state": lambda s: s["sampler"].update(next_iter=s["sampler"]["next_iter"] + 1),
    "the run config": lambda s: s["config"].update(learning_rate=0.5),
    "the model config": lambda s: s["model_args"].update(dropout=0.5),
    "the data meta": lambda s: s["data_meta"].update(vocab_size=66),
    "'iter_num'": lambda s: s.update(iter_num=s["iter_num"] + 1),
    "'best_val_loss'": lambda s: s.update(best_val_loss=math.nextafter(s["best_val_loss"], 0)),
    "'eval_done'": lambda s: s.update(eval_done=not s["eval_done"]),
    "'variant'": lambda s: s.update(variant="gpt "),
}
NAMED = {"optimizer step": "the optimizer state", "optimizer lr": "the optimizer state", "python RNG": "the RNG state"}


@pytest.mark.parametrize("what", list(EDITS))
def test_every_entry_is_covered(trained, tmp_path, what):
    state = torch.load(trained / "ckpt.pt", weights_only=True)
    EDITS[what](state)
    torch.save(state, tmp_path / "ckpt.pt")
    with pytest.raises(checkpoint.CheckpointError, match="fails its checksum") as e:
        checkpoint.load(tmp_path / "ckpt.pt")
    assert NAMED.get(what, what) in str(e.value)


def test_added_or_removed_entries_fail(trained, tmp_path):
    state = torch.load(trained / "ckpt.pt", weights_only=True)
    torch.save(dict(state, extra=1), tmp_path / "added.pt")
    del state["sampler"]
    torch.save(state, tmp_path / "removed.pt")
    with pytest.raises(checkpoint.CheckpointError, match="entries 'extra' were added and none removed"):
        checkpoint.load(tmp_path / "added.pt")
    with pytest.raises(checkpoint.CheckpointError, match="entries none were added and 'sampler' removed"):
        checkpoint.load(tmp_path / "removed.pt")


def format1(state):
    """The state as format 1 wrote it: one checksum over the weights only."""
    return dict(state, format_version=1, checksum=checkpoint.state_checksum(state["model"]))


def test_format_1_still_loads_and_resumes(trained, tmp_path, shakespeare_dir):
    # a checkpoint format 1 wrote (the golden gpt case's, kept as written then)
    golden = torch.load(REPO / "tests" / "golden" / "format1_checkpoint.pt", weights_only=True)
    assert golden["format_version"] == 1
    torch.save(golden, tmp_path / "golden.pt")
    assert checkpoint.load(tmp_path / "golden.pt")["checksum"] == golden["checksum"]
    golden["model"]["lm_head.weight"].view(-1)[0] += 1
    torch.save(golden, tmp_path / "golden.pt")
    with pytest.raises(checkpoint.CheckpointError, match="fails its checksum: the weights are corrupt"):
        checkpoint.load(tmp_path / "golden.pt")

    out = tmp_path / "run"
    shutil.copytree(trained, out)
    torch.save(format1(torch.load(out / "ckpt.pt", weights_only=True)), out / "ckpt.pt")
    assert checkpoint.load(out / "ckpt.pt")["format_version"] == 1
    run(train_args(shakespeare_dir, out, "--init_from=resume", "--max_iters=8", "--ckpt_interval=4"), env=ENV)
    resumed = checkpoint.load(out / "ckpt.pt")
    assert resumed["format_version"] == 2 and resumed["iter_num"] == 8


@pytest.mark.parametrize("version", [3, 0, True, "2"])
def test_unknown_format_is_named(trained, tmp_path, version):
    state = torch.load(trained / "ckpt.pt", weights_only=True)
    torch.save(dict(state, format_version=version), tmp_path / "ckpt.pt")
    with pytest.raises(checkpoint.CheckpointError, match="this code reads formats 1 and 2"):
        checkpoint.load(tmp_path / "ckpt.pt")


def test_round_trip_of_awkward_values(tmp_path):
    model = {"w": torch.arange(12.0).reshape(3, 4).t(), "h": torch.ones(3, dtype=torch.bfloat16),
             "b": torch.tensor([True, False]), "s": torch.tensor(3)}
    state = {"variant": "gpt", "model_args": {"windows": [4, None], "shape": (2, 3)}, "model": model,
             "floats": [float("inf"), float("-inf"), float("nan"), -0.0, 0.0, 1e-300], "keys": {1: "a", "1": b"a"},
             "text": "Zeus ⚡", "dtype": torch.float16}
    checkpoint.save(state, tmp_path / "x.pt")
    assert checkpoint.load(tmp_path / "x.pt")["text"] == "Zeus ⚡"


def test_distinct_values_have_distinct_checksums():
    pairs = [(0.0, -0.0), (1, 1.0), (1, "1"), (1, True), ("ab", ["a", "b"]), ({"a": 1}, {"a": 1, "b": None}),
             (torch.zeros(2), torch.zeros(2, dtype=torch.float64)), (torch.zeros(2, 1), torch.zeros(1, 2)),
             ([[1], 2], [1, [2]])]
    for a, b in pairs:
        assert checkpoint.entry_checksums({"v": a}) != checkpoint.entry_checksums({"v": b}), (a, b)
    assert checkpoint.entry_checksums({"v": {"a": 1, "b": 2}}) == checkpoint.entry_checksums({"v": {"b": 2, "a": 1}})


def test_a_value_no_checksum_covers_is_refused_at_save(tmp_path):
    state = {"variant": "gpt", "model_args": {}, "model": {}, "config": {"out_dir": Path("x")}}
    with pytest.raises(checkpoint.CheckpointError, match=r"config\['out_dir'\] is a PosixPath|is a WindowsPath"):
        checkpoint.save(state, tmp_path / "x.pt")
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------------------------
# 2. empty and foreign files


def write_bad(kind, path, trained):
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "passwd":
        shutil.copyfile("/etc/passwd", path)
    elif kind == "truncated":
        path.write_bytes((trained / "ckpt.pt").read_bytes()[:5000])
    elif kind == "pickle":  # a plain pickle of protocol 4: torch warns about it besides failing
        import pickle
        path.write_bytes(pickle.dumps([1, 2], protocol=4))


MESSAGES = {"empty": "is empty (0 bytes)", "passwd": "is not a checkpoint (neither a zip archive nor a pickle",
            "truncated": "is unreadable, truncated or corrupt (5000 bytes; ",
            "pickle": "is unreadable, truncated or corrupt (20 bytes; UnpicklingError: Unsupported operand 149)"}


@pytest.mark.parametrize("kind", list(MESSAGES))
@pytest.mark.parametrize("command", ["train", "sample", "eval"])
def test_bad_checkpoint_file_is_one_line(trained, tmp_path, shakespeare_dir, command, kind):
    out = tmp_path / "run"
    out.mkdir()
    shutil.copyfile(trained / "config.json", out / "config.json")
    write_bad(kind, out / "ckpt.pt", trained)
    args = {"train": train_args(shakespeare_dir, out, "--init_from=resume"),
            "sample": ["sample.py", f"--out_dir={out}", "--device=cpu", "--start=A", "--max_new_tokens=2"],
            "eval": ["tools/eval.py", f"--out_dir={out}", f"--data_dir={shakespeare_dir}", "--device=cpu"]}[command]
    before = digest(out / "ckpt.pt")
    proc = run(args, check=False, env=ENV)
    assert_one_error_line(proc, f"checkpoint {out / 'ckpt.pt'} ", MESSAGES[kind])
    assert digest(out / "ckpt.pt") == before


def test_passwd_given_as_the_checkpoint():
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.load("/etc/passwd")
    assert str(e.value).startswith("checkpoint /etc/passwd is unreadable: it is not a checkpoint (")


def test_a_directory_is_named(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="is a directory, not a file"):
        checkpoint.load(tmp_path)


# ---------------------------------------------------------------------------------------------------------------
# 3. temporaries of dead writers


def test_temporaries_of_dead_writers_are_removed_on_resume(run_copy, shakespeare_dir):
    dead = dead_pid()
    sleeper = subprocess.Popen(["sleep", "600"])
    try:
        stale = [f".ckpt.pt.tmp{dead}", f".ckpt.pt.link{dead}"]
        kept = [f".ckpt.pt.tmp{sleeper.pid}",  # a writer that still runs
                f".notes.txt.tmp{dead}", f".ckpt.pt.tmpx{dead}", "ckpt.pt.tmp1"]  # not temporaries of ckpt.pt
        for name in stale + kept:
            (run_copy / name).write_bytes(b"half a checkpoint")
        run(train_args(shakespeare_dir, run_copy, "--init_from=resume", "--max_iters=10", "--ckpt_interval=5"),
            env=ENV)
        assert checkpoint.load(run_copy / "ckpt.pt")["iter_num"] == 10
        names = {p.name for p in run_copy.iterdir()}
        assert not names & set(stale)
        assert set(kept) <= names
    finally:
        sleeper.kill()
        sleeper.wait()


def test_sigkill_while_saving_leaves_nothing_after_the_next_save(shakespeare_dir, tmp_path):
    out = tmp_path / "run"
    proc = run(["tests/fault_injection.py", "kill-during-save", "2", "--",
                *train_args(shakespeare_dir, out, "--max_iters=10", "--ckpt_interval=3", "--keep_last=2")[1:]],
               check=False, env=ENV)
    assert proc.returncode < 0
    left = [p.name for p in out.iterdir() if ".tmp" in p.name]
    assert len(left) == 1 and left[0].startswith(".ckpt_00000006.pt.tmp")  # killed while writing iter 6's copy
    run(train_args(shakespeare_dir, out, "--init_from=resume", "--max_iters=10", "--ckpt_interval=3",
                   "--keep_last=2"), env=ENV)
    assert not [p.name for p in out.iterdir() if ".tmp" in p.name or ".link" in p.name]
    assert sorted(p.name for p in out.glob("ckpt_*.pt")) == ["ckpt_00000009.pt", "ckpt_00000010.pt"]


# ---------------------------------------------------------------------------------------------------------------
# 4. --keep_last touches only ckpt_<8 digits>.pt


def test_keep_last_rotates_only_the_numbered_copies(shakespeare_dir, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    user = {"ckpt_00000020_keep.pt": b"mine", "ckpt_good.pt": b"good", "ckpt_1.pt": b"one",
            "ckpt_000000005.pt": b"nine digits", "ckpt_0000000a.pt": b"hex", "my_ckpt_00000005.pt": b"prefixed"}
    for name, data in user.items():
        (out / name).write_bytes(data)
    run(train_args(shakespeare_dir, out, "--max_iters=20", "--ckpt_interval=5", "--keep_last=2"), env=ENV)
    numbered = sorted(p.name for p in out.iterdir() if p.name[5:13].isdigit() and len(p.name) == 16
                      and p.name.startswith("ckpt_"))
    assert numbered == ["ckpt_00000015.pt", "ckpt_00000020.pt"]
    for name, data in user.items():
        assert (out / name).read_bytes() == data, name
    assert checkpoint.load(out / "ckpt_00000020.pt")["iter_num"] == 20

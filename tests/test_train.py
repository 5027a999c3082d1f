"""train.py, sample.py and plot.py end to end on real text (tiny Shakespeare), as real processes."""
import hashlib
import json
import sys

import pytest
import torch

from conftest import run

SMALL = ["--device=cpu", "--n_layer=2", "--n_head=2", "--n_embd=64", "--block_size=32", "--batch_size=8",
         "--dropout=0.0", "--bias=False", "--learning_rate=2e-3", "--warmup_iters=5", "--min_lr=2e-4",
         "--eval_iters=5", "--log_interval=5"]


def train(data_dir, out_dir, *extra, check=True):
    return run(["train.py", f"--data_dir={data_dir}", f"--out_dir={out_dir}", *SMALL, *extra], check=check)


def metrics(out_dir, kind):
    lines = (out_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def trained(shakespeare_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    proc = train(shakespeare_dir, out, "--max_iters=60", "--lr_decay_iters=60", "--eval_interval=30")
    return out, proc


def test_training_learns_and_writes_run_artifacts(trained):
    out, proc = trained
    evals = metrics(out, "eval")
    assert [e["iter"] for e in evals] == [0, 30, 60]
    assert evals[0]["val/loss"] > 4.0  # ~ln(65) at init
    assert evals[-1]["val/loss"] < evals[0]["val/loss"] - 1.0  # it learned real structure from the text
    assert abs(evals[-1]["val/bpc"] - evals[-1]["val/loss"] / 0.6931471805599453) < 1e-6
    assert {"ckpt.pt", "best.pt", "config.json", "metrics.jsonl"} <= {p.name for p in out.iterdir()}
    config = json.loads((out / "config.json").read_text())
    assert config["n_layer"] == 2 and config["vocab_size"] == 65 and config["variant"] == "gpt"
    assert "n_layer = 2" in proc.stdout  # the resolved config is printed


def test_resume_continues_from_the_checkpoint(trained, shakespeare_dir, tmp_path):
    out, _ = trained
    copy = tmp_path / "resumed"
    copy.mkdir()
    for name in ("ckpt.pt", "metrics.jsonl"):
        (copy / name).write_bytes((out / name).read_bytes())
    train(shakespeare_dir, copy, "--init_from=resume", "--max_iters=70", "--lr_decay_iters=60", "--eval_interval=10")
    steps = [r["iter"] for r in metrics(copy, "train")]
    assert steps[-2:] == [60, 65]  # picked up at iteration 60, not 0
    assert torch.load(copy / "ckpt.pt", weights_only=True)["iter_num"] == 70


def test_train_flops_accumulate_across_resume(trained, shakespeare_dir, tmp_path):
    """Every eval logs the training FLOPs and step seconds spent so far: 3x the forward FLOPs of a batch_size x
    block_size batch per step; a resumed run counts on from its checkpoint."""
    import variants
    from infra import flops, loader
    out, _ = trained
    copy = tmp_path / "resumed"
    copy.mkdir()
    for name in ("ckpt.pt", "metrics.jsonl"):
        (copy / name).write_bytes((out / name).read_bytes())
    train(shakespeare_dir, copy, "--init_from=resume", "--max_iters=70", "--lr_decay_iters=60", "--eval_interval=10")
    evals = {e["iter"]: e for e in metrics(copy, "eval")}
    model = loader.open_model(copy / "ckpt.pt", variants.get).model
    per_step = 3 * 8 * 32 * flops.flops_per_token(model, 32)["total"]
    assert sorted(evals) == [0, 30, 60, 70]
    for it, e in evals.items():
        assert e["train_flops"] == pytest.approx(per_step * it, rel=1e-12)
    seconds = [evals[it]["train_s"] for it in sorted(evals)]
    assert seconds[0] == 0 and all(a < b for a, b in zip(seconds, seconds[1:]))


def test_scratch_run_never_overwrites_a_checkpoint(trained, shakespeare_dir):
    out, _ = trained
    before = digest(out / "ckpt.pt")
    proc = train(shakespeare_dir, out, "--max_iters=2", check=False)
    assert proc.returncode == 2
    assert "ckpt.pt exists; use --init_from=resume" in proc.stderr
    assert digest(out / "ckpt.pt") == before


@pytest.mark.parametrize("args,code,message", [
    (["--n_layers=2"], 2, "unknown config key 'n_layers'"),
    (["--n_head=3"], 2, "n_head=3 must divide n_embd=64"),
    (["--batch_size=0"], 2, "batch_size must be >= 1"),
    (["--variant=gtp"], 2, "unknown variant 'gtp'"),
    (["--block_size=200000"], 1, "fewer than block_size+1"),
])
def test_bad_input_is_one_clear_line(shakespeare_dir, tmp_path, args, code, message):
    proc = train(shakespeare_dir, tmp_path / "o", "--max_iters=1", *args, check=False)
    assert proc.returncode == code, proc.stderr
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_missing_data_is_reported(tmp_path):
    proc = train(tmp_path / "nodata", tmp_path / "o", check=False)
    assert proc.returncode == 1 and "meta.json not found" in proc.stderr


def test_sample_from_checkpoint(trained):
    out, _ = trained
    proc = run(["sample.py", f"--out_dir={out}", "--start=ROMEO:", "--num_samples=2", "--max_new_tokens=40",
                "--device=cpu", "--seed=1"])
    samples = proc.stdout.split("---------------\n")
    assert len(samples) == 3 and samples[0].startswith("ROMEO:")
    assert len(samples[0].rstrip("\n")) == len("ROMEO:") + 40
    again = run(["sample.py", f"--out_dir={out}", "--start=ROMEO:", "--num_samples=2", "--max_new_tokens=40",
                 "--device=cpu", "--seed=1"])
    assert again.stdout == proc.stdout  # seeded
    greedy = [run(["sample.py", f"--out_dir={out}", "--start=KING", "--num_samples=1", "--max_new_tokens=30",
                   "--temperature=0", f"--use_cache={c}"]).stdout for c in (True, False)]
    assert greedy[0] == greedy[1]


@pytest.mark.parametrize("start,message", [
    ("", "the prompt is empty"),
    ("price: €", "'€' (U+20AC) is not in this dataset's 65-character vocabulary"),
    ("x" * 40, "the prompt is 40 tokens but the model's context is 32"),
    ("FILE:/nonexistent/prompt.txt", "prompt file /nonexistent/prompt.txt not found"),
])
def test_sample_rejects_bad_prompts(trained, start, message):
    out, _ = trained
    proc = run(["sample.py", f"--out_dir={out}", f"--start={start}", "--max_new_tokens=5"], check=False)
    assert proc.returncode == 1
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_plot_loss_curves(trained, tmp_path):
    out, _ = trained
    png = tmp_path / "loss.png"
    run(["tools/plot.py", str(out), f"--out={png}"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ddp_two_ranks_equal_single_process_accumulation(shakespeare_dir, tmp_path):
    # dropout on: every micro-batch's randomness is seeded by its global index, so even the masks agree
    common = ["--max_iters=3", "--eval_interval=3", "--always_save_checkpoint=True", "--gradient_accumulation_steps=2",
              "--decay_lr=False", "--dropout=0.1"]
    single, double = tmp_path / "single", tmp_path / "ddp"
    train(shakespeare_dir, single, *common)
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py",
         f"--data_dir={shakespeare_dir}", f"--out_dir={double}", *SMALL, *common], timeout=900)
    # the first step's gradient (its global norm, before clipping) is the same
    g1 = [r["grad_norm"] for r in metrics(single, "train")]
    g2 = [r["grad_norm"] for r in metrics(double, "train")]
    assert g1[0] == pytest.approx(g2[0], rel=1e-5)
    # and after 3 AdamW steps so are all parameters, and the (rank-sharded) eval
    a = torch.load(single / "ckpt.pt", weights_only=True)
    b = torch.load(double / "ckpt.pt", weights_only=True)
    for name, tensor in a["model"].items():
        torch.testing.assert_close(tensor, b["model"][name], atol=1e-5, rtol=1e-4, msg=name)
    va, vb = metrics(single, "eval")[-1]["val/loss"], metrics(double, "eval")[-1]["val/loss"]
    assert va == pytest.approx(vb, rel=1e-5)
    assert b["config"]["world_size"] == 2

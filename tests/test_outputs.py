"""Where the entry points write, started from a directory that is not the repository: plot.py beside the first run,
sample.py nowhere. (eval.py, analysis.py and bench.py: tests/test_eval.py, test_analysis.py, test_bench.py.)"""
import json
from dataclasses import asdict

import torch

from infra import checkpoint
import variants
from conftest import REPO, run


def fake_run(path):
    """A run directory with a metrics.jsonl of three train and two eval records."""
    path.mkdir()
    records = [{"kind": "train", "iter": i, "loss": 4.0 - i / 10} for i in range(3)]
    records += [{"kind": "eval", "iter": i, "val/loss": 4.1 - i / 10} for i in (0, 2)]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_plot_defaults_to_the_first_runs_directory(tmp_path):
    a, b = fake_run(tmp_path / "run_a"), fake_run(tmp_path / "run_b")
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    proc = run([str(REPO / "tools/plot.py"), str(a), str(b / "metrics.jsonl")], cwd=cwd)
    assert (a / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert proc.stdout.strip() == f"wrote {a / 'loss.png'}"
    assert list(cwd.iterdir()) == [] and not (b / "loss.png").exists()
    run([str(REPO / "tools/plot.py"), str(b / "metrics.jsonl")], cwd=cwd)  # a metrics.jsonl path: beside it
    assert (b / "loss.png").is_file() and list(cwd.iterdir()) == []
    run([str(REPO / "tools/plot.py"), str(a), "--out=mine.png"], cwd=cwd)  # an explicit --out wins
    assert [p.name for p in cwd.iterdir()] == ["mine.png"]


def test_sample_writes_no_files(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    spec = variants.get("gpt")
    torch.manual_seed(0)
    model = spec.build(spec.config_class(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=26, dropout=0.0))
    chars = [chr(97 + i) for i in range(26)]
    checkpoint.save({"variant": "gpt", "model_args": asdict(model.config), "model": model.state_dict(),
                     "config": {}, "data_meta": {"tokenizer": "char", "vocab_size": 26, "chars": chars}},
                    out / "ckpt.pt")
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    before = sorted(p.name for p in out.iterdir())
    proc = run([str(REPO / "sample.py"), f"--out_dir={out}", "--start=abc", "--num_samples=2", "--max_new_tokens=8",
                "--device=cpu"], cwd=cwd)
    assert proc.stdout.count("---------------") == 2 and proc.stdout.startswith("abc")
    assert list(cwd.iterdir()) == [] and sorted(p.name for p in out.iterdir()) == before

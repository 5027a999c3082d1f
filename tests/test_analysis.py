"""analysis.py: attention statistics from the dense reference path, for any variant; exact values on uniform
attention, mask accounting against the variant's own FLOP count, CLI outputs and errors."""
import json
import math
from dataclasses import asdict

import numpy as np
import pytest
import torch

from tools import analysis
from infra import checkpoint
import variants
from attention import AttnMask, dense_attention
from conftest import REPO, run
from data.common import write_dataset
from model import CausalSelfAttention

T = 24
SHAPE = dict(n_layer=3, n_head=2, n_embd=16, block_size=T, vocab_size=41, dropout=0.0)


def build(name, **kw):
    torch.manual_seed(0)
    spec = variants.get(name)
    return spec.build(spec.config_class(**{**SHAPE, **kw}))


def analyse(model, idx, crop=0):
    return analysis.analyse(model, lambda: model(idx), crop=crop)


def uniform(model):
    """Zero query/key projections: every allowed key gets the same weight, so the statistics have closed forms."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, CausalSelfAttention):
                m.c_attn.weight[:2 * m.n_embd].zero_()
                if m.c_attn.bias is not None:
                    m.c_attn.bias[:2 * m.n_embd].zero_()
    return model


@pytest.mark.parametrize("windows", [[0, 0, 0], [0, 4, 1], [3, 7, 2]])
def test_uniform_attention_statistics_are_exact(windows):
    model = uniform(build("layerwise", windows=windows))
    rep, maps = analyse(model, torch.randint(0, 41, (3, T)), crop=10)
    assert len(rep["layers"]) == 3 and len(maps) == 3 and maps[0].shape == (10, 10)
    for w, s in zip(windows, rep["layers"]):
        w = w or T
        n = [min(i + 1, w) for i in range(T)]  # keys per query
        assert s["entropy"] == pytest.approx(np.mean([math.log(k) for k in n]), abs=1e-4)
        assert s["max_entropy"] == pytest.approx(s["entropy"], abs=1e-4)  # uniform attention is the maximum
        assert s["mean_distance"] == pytest.approx(np.mean([(k - 1) / 2 for k in n]), abs=1e-4)
        assert s["attended"] == sum(n) and s["avg_span"] == pytest.approx(sum(n) / T)
        assert s["sparsity_vs_T2"] == pytest.approx(1 - sum(n) / T ** 2)
        assert s["sparsity_vs_causal"] == pytest.approx(1 - sum(n) / (T * (T + 1) / 2))
        assert s["below_0.01_allowed"] == 0.0  # at most 24 keys: every weight >= 1/24
        assert s["below_0.01_all"] == pytest.approx(1 - sum(n) / T ** 2)  # exactly the masked-out zeros
    o = rep["overall"]
    assert o["memory_reduction"] == pytest.approx(3 * T ** 2 / sum(s["attended"] for s in rep["layers"]))


def test_mask_accounting_matches_the_variants_flop_count():
    model = build("layerwise", windows=[5, 0, 2])
    rep, _ = analyse(model, torch.randint(0, 41, (1, T)))
    assert [s["reach"] for s in rep["layers"]] == [5, None, 2]
    attns = [m for m in model.modules() if isinstance(m, CausalSelfAttention)]
    assert [s["attended"] for s in rep["layers"]] == [m.attended_entries(T) for m in attns]


def test_weights_come_from_the_real_inputs_of_every_layer():
    model = build("gpt").eval()
    idx = torch.randint(0, 41, (2, T))
    calls = analysis.attention_calls(model, lambda: model(idx))
    assert len(calls) == 3
    pos = torch.arange(T)
    x0 = model.transformer.h[0].ln_1(model.transformer.wte(idx) + model.transformer.wpe(pos))
    with torch.no_grad():
        q, k, v = model.transformer.h[0].attn.qkv(x0, pos)
        expected = dense_attention(q, k, v, AttnMask(causal=True), return_weights=True)[1]
    torch.testing.assert_close(calls[0][0], expected)  # layer 0: the normalised embeddings of the real tokens
    weights = calls[1][0]
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, T))  # rows are distributions
    assert torch.triu(weights[0, 0], 1).abs().max() == 0  # causal
    # the recording pass computes the model's own outputs: the dense reference equals the fast path
    out = {}
    analysis.attention_calls(model, lambda: out.setdefault("logits", model(idx)))
    torch.testing.assert_close(out["logits"], model(idx), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", variants.names())
def test_every_registered_variant_can_be_analysed(name):
    model = build(name, n_layer=4)  # even depth for parallel pairs
    objective = variants.get(name).objective
    batch = objective.prepare(model.config, torch.randint(0, 41, (2, T)), torch.randint(0, 41, (2, T)),
                              generator=torch.Generator().manual_seed(0))
    calls = []
    handles = [m.register_forward_hook(lambda *a: calls.append(1)) for m in model.modules()
               if isinstance(m, CausalSelfAttention)]
    with torch.no_grad():
        objective.logits(model.eval(), batch)
    for h in handles:
        h.remove()
    rep, _ = analysis.analyse(model, lambda: objective.logits(model, batch))
    assert len(rep["layers"]) == len(calls) >= 4, name  # one record per attention call (ALBERT: shared, EMD: twice)
    for s in rep["layers"]:
        assert s["entropy"] >= 0 and 0 < s["attended"] <= s["total"]
        assert all(math.isfinite(h) for h in s["entropy_per_head"])


@pytest.fixture
def tiny_run(tmp_path):
    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    write_dataset(data, {"train": rng.integers(0, 41, 500), "val": rng.integers(0, 41, 300)},
                  {"dataset": "test", "tokenizer": "char", "vocab_size": 41, "dtype": "uint8",
                   "chars": [chr(65 + i) for i in range(41)]})
    paths = {}
    for label, kw in {"full": {}, "windowed": {"windows": [0, 4, 2]}}.items():
        model = build("layerwise", **kw)
        path = tmp_path / label / "ckpt.pt"
        path.parent.mkdir()
        checkpoint.save({"variant": "layerwise", "model_args": asdict(model.config), "model": model.state_dict(),
                         "config": {"data_dir": str(data)}}, path)
        paths[label] = path
    return tmp_path, data, paths


def test_cli_writes_tables_plots_and_json(tiny_run, capsys):
    tmp_path, data, paths = tiny_run
    out = tmp_path / "an"
    analysis.main([f"--ckpt={paths['full'].parent},{paths['windowed']}", "--labels=full,windowed",
                   f"--out_dir={out}", "--batch_size=2", "--crop=16", "--seq_len=20"])
    report = json.loads((out / "analysis.json").read_text())["reports"]
    assert set(report) == {"full", "windowed"} and report["full"]["T"] == 20
    assert [s["reach"] for s in report["windowed"]["layers"]] == [None, 4, 2]
    assert (out / "entropy.png").stat().st_size > 1000
    assert sorted(p.name for p in (out / "heatmaps").iterdir()) == sorted(
        f"{lab}_layer{l}.png" for lab in ("full", "windowed") for l in range(3))
    assert "| full | 0 |" in (out / "analysis.md").read_text()
    assert "entropy per layer" in capsys.readouterr().out


@pytest.mark.parametrize("args,code,message", [
    ([], 2, "give --ckpt"),
    (["--ckpt=/nonexistent/ckpt.pt"], 1, "not found"),
    (["--ckpt={full}", "--seq_len=99"], 2, "exceeds the model's block_size 24"),
    (["--ckpt={full}", "--labels=a,b"], 2, "one distinct label per checkpoint"),
    (["--ckpt={full}", "--data_dir=/nonexistent"], 1, "meta.json not found"),
    (["--ckpt={full}", "--bogus=1"], 2, "unknown config key 'bogus'"),
])
def test_cli_errors_are_one_clear_line(tiny_run, capsys, args, code, message):
    """Exit 2 for the configuration, 1 for files and data."""
    _, _, paths = tiny_run
    with pytest.raises(SystemExit) as e:
        analysis.main([a.format(full=paths["full"]) for a in args])
    assert e.value.code == code
    assert message in capsys.readouterr().err


def test_outputs_default_to_beside_the_first_checkpoint_not_the_working_directory(tiny_run):
    """Started from an empty directory without --out_dir: everything lands in <first checkpoint's directory>/analysis,
    the working directory stays empty, and no progress bar reaches the logs (stderr is a pipe)."""
    tmp_path, _, paths = tiny_run
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    proc = run([str(REPO / "tools/analysis.py"), f"--ckpt={paths['full'].parent},{paths['windowed']}", "--batch_size=2",
                "--crop=8"], cwd=cwd)
    assert list(cwd.iterdir()) == []
    out = paths["full"].parent / "analysis"
    config = json.loads((out / "analysis.json").read_text())["config"]
    assert config["out_dir"] == str(out)
    assert set(json.loads((out / "analysis.json").read_text())["reports"]) == {"full", "windowed"}  # dir names
    assert {p.name for p in out.iterdir()} == {"analysis.json", "analysis.md", "entropy.png", "heatmaps"}
    assert len(list((out / "heatmaps").iterdir())) == 6
    assert [p.name for p in paths["windowed"].parent.iterdir()] == ["ckpt.pt"]  # only the first run gets outputs
    assert f"wrote {out / 'analysis.json'}" in proc.stdout
    assert "\r" not in proc.stdout + proc.stderr and "ckpt/s" not in proc.stderr


def test_run_defaults_to_beside_the_checkpoint_and_honours_an_explicit_out_dir(tiny_run, tmp_path_factory):
    tmp_path, data, paths = tiny_run
    analysis.run([paths["windowed"]], ["w"], analysis.AnalysisConfig(batch_size=1, crop=0), "test")
    assert (paths["windowed"].parent / "analysis" / "analysis.json").is_file()
    explicit = tmp_path_factory.mktemp("explicit") / "attention"  # what eval.py passes: <run>/attention
    analysis.run([paths["full"]], ["f"], analysis.AnalysisConfig(batch_size=1, crop=0, out_dir=str(explicit)), "test")
    assert (explicit / "analysis.json").is_file() and not (paths["full"].parent / "analysis").exists()

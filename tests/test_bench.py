"""bench.py end to end at a tiny shape: entries from names and config files, several lengths; the analytic FLOP counts
of every variant against torch's FlopCounterMode."""
import json
import shutil
import statistics

import pytest
import torch

from infra import flops
import variants
from bench import build
from conftest import REPO, run

TINY = ["--n_layer=2", "--n_head=2", "--n_embd=32", "--batch_size=2", "--reps=2", "--latency_reps=2", "--warmup=1",
        "--device=cpu"]


def test_bench_reports_every_entry_and_length(tmp_path):
    entry = tmp_path / "gpt_dense.py"
    entry.write_text('variant = "gpt"\nattn_impl = "dense"\n')
    out = tmp_path / "bench"
    proc = run(["bench.py", f"--variants=gpt,{entry}", "--seq_lens=32,64", "--gen_tokens=20", f"--out_dir={out}",
                *TINY])
    report = json.loads((out / "bench.json").read_text())
    rows = {(r["label"], r["T"]): r for r in report["results"]}
    assert set(rows) == {("gpt", 32), ("gpt", 64), ("gpt_dense", 32), ("gpt_dense", 64)}
    for (label, T), r in rows.items():
        assert r["fwd_bwd_s"]["median"] > 0 and r["tokens_per_s"] > 0 and 0 < r["mfu"]
        assert r["latency_s"]["p50"] <= r["latency_s"]["p99"]
        assert r["speedup"]["ideal"] == pytest.approx(1.0)  # same FLOPs: the dense path computes the same model
    dense, sdpa = rows[("gpt_dense", 64)], rows[("gpt", 64)]  # measured speedup: the baseline's time over the entry's
    assert dense["speedup"]["measured"] == pytest.approx(sdpa["fwd_bwd_s"]["median"] / dense["fwd_bwd_s"]["median"])
    for check in report["flop_counter_check"].values():
        assert check["counted"] == pytest.approx(check["analytic"], rel=1e-9)
    assert all(g["identical"] and g["reps"] == 3 for g in report["generation"].values())
    peaks = report["peak_flops_readings"]  # one before, one per timing round and length, one after
    assert len(peaks) == 2 + 2 * 2 and report["peak_flops"] == statistics.median(peaks)
    assert (out / "bench.png").read_bytes()[:4] == b"\x89PNG"
    assert "| gpt_dense | eager | 64 |" in proc.stdout


def test_attention_component(tmp_path):
    out = tmp_path / "bench"
    run(["bench.py", "--component=attention", "--seq_lens=64", f"--out_dir={out}", *TINY])
    r = json.loads((out / "bench.json").read_text())["results"][0]
    C, T = 32, 64
    assert r["flops_per_token"] == pytest.approx(2 * 4 * C * C + 4 * C * (T + 1) / 2)  # qkv+proj, causal pairs


@pytest.mark.parametrize("arg,message", [("--variants=gpt,nope", "unknown variant 'nope'"),
                                         ("--modes=eager,fast", "modes must be a comma list"),
                                         ("--baseline=other", "baseline 'other' is not one of the entries")])
def test_bench_bad_input(tmp_path, arg, message):
    proc = run(["bench.py", arg, f"--out_dir={tmp_path}"], check=False)
    assert proc.returncode == 2 and message in proc.stderr


SHAPE = dict(n_layer=4, n_head=2, n_embd=32, block_size=32, vocab_size=96)
CASES = [(n, {}) for n in variants.names()] + [
    ("albert", {"embedding_size": 16}), ("deberta", {"emd": False}), ("deberta", {"max_relative_positions": 5})]


@pytest.mark.parametrize("name,fields", CASES)
def test_analytic_flops_equal_the_flop_counter_for_every_variant(name, fields):
    model = build(name, {**fields, "attn_impl": "dense"}, SHAPE, torch.device("cpu"))
    idx = torch.randint(0, 90, (1, 24))
    counted, analytic = flops.counter_check(model, lambda: model(idx), 24)
    assert counted == pytest.approx(analytic, rel=1e-9)


@pytest.mark.parametrize("name,fields", CASES)
def test_training_batch_flops_equal_the_flop_counter(name, fields):
    """The objective's training batch (duo's interleaving, MLM on the masked rows only, sentence pairs), batch 2."""
    model = build(name, {**fields, "attn_impl": "dense"}, SHAPE, torch.device("cpu"))
    objective = variants.get(name).objective
    x = torch.randint(0, 90, (2, 24))
    batch = objective.prepare(model.config, x, x, generator=torch.Generator().manual_seed(0))
    counted, analytic = flops.counter_check(model, lambda: objective.logits(model, batch), x.numel())
    assert counted == pytest.approx(analytic, rel=1e-9)


@pytest.mark.parametrize("name", ["bert", "albert", "deberta"])
def test_encoder_training_flops_count_the_mlm_head_on_masked_positions_only(name):
    T = 24
    model = build(name, {}, SHAPE, torch.device("cpu"))
    objective = variants.get(name).objective
    x = torch.randint(0, 90, (2, T))
    batch = objective.prepare(model.config, x, x, generator=torch.Generator().manual_seed(0))
    masked = int((batch.targets != -1).sum())
    assert 0 < masked < x.numel()
    training = flops.count(model, lambda: objective.logits(model, batch), x.numel())["matmul"]
    everywhere = flops.count(model, lambda: model(batch.idx, token_types=batch.token_types), x.numel())["matmul"]
    E, V = model.config.emb_dim(), model.config.vocab_size
    head_per_row = 2 * (model.config.n_embd * E + E * V)  # mlm_dense and the tied decoder
    assert everywhere - training == pytest.approx(head_per_row * (x.numel() - masked) / x.numel())


def test_flops_per_token_sees_shared_and_repeated_layers():
    """ALBERT's one block runs n_layer times, DeBERTa's last layer twice (its mask decoder) and the pooler on [CLS]."""
    T = 24
    albert = build("albert", {"n_layer": 4}, SHAPE, torch.device("cpu"))
    one = build("albert", {"n_layer": 1}, SHAPE, torch.device("cpu"))
    block = lambda m: sum(2 * p.numel() for n, p in m.transformer.h[0].named_parameters() if n.endswith("weight")
                          and p.dim() == 2)
    diff = flops.flops_per_token(albert, T)["matmul"] - flops.flops_per_token(one, T)["matmul"]
    assert diff == pytest.approx(3 * block(albert))
    emd = build("deberta", {"emd": True}, SHAPE, torch.device("cpu"))
    plain = build("deberta", {"emd": False}, SHAPE, torch.device("cpu"))
    a_emd, a_plain = flops.flops_per_token(emd, T)["attention"], flops.flops_per_token(plain, T)["attention"]
    assert a_emd == pytest.approx(a_plain * 5 / 4)  # 4 layers: 3 plain + the last one twice


def test_default_output_lands_in_the_repository_whatever_the_working_directory(tmp_path):
    """A copy of the sources (so the real bench_out/ is left alone), started from an empty directory without
    --out_dir: the files land in <copy>/bench_out, stdout names them, the working directory stays empty."""
    repo = tmp_path / "repo"
    shutil.copytree(REPO, repo, ignore=shutil.ignore_patterns(".*", "tests", "results", "out*", "bench_out",
                                                               "__pycache__", "*.bin", "*.png", "wandb"))
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    proc = run([str(repo / "bench.py"), "--seq_lens=16", "--gen_tokens=0", *TINY], cwd=cwd)
    assert list(cwd.iterdir()) == []
    out = repo.resolve() / "bench_out"
    assert {p.name for p in out.iterdir()} == {"bench.json", "bench.md"}
    assert json.loads((out / "bench.json").read_text())["config"]["out_dir"] == str(out)
    assert f"wrote {out / 'bench.md'}, {out / 'bench.json'}" in proc.stdout


def test_relative_out_dir_is_taken_from_the_working_directory_and_printed_absolute(tmp_path):
    proc = run([str(REPO / "bench.py"), "--seq_lens=16", "--gen_tokens=0", "--out_dir=mine", *TINY], cwd=tmp_path)
    out = tmp_path.resolve() / "mine"
    assert (out / "bench.json").is_file()
    assert f"wrote {out / 'bench.md'}" in proc.stdout

"""bench.py end to end at a tiny shape: entries from names and config files, several lengths; the analytic FLOP counts
of every variant against torch's FlopCounterMode."""
import json
import statistics

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import variants  # noqa: F401
from bench import attention_modules, build, counted_flops_per_token
from conftest import run
from model import VARIANTS

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
    assert rows[("gpt", 64)]["speedup"]["measured"] == 1.0
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


@pytest.mark.parametrize("name,fields", [(n, {}) for n in sorted(VARIANTS)] + [
    ("albert", {"embedding_size": 16}), ("deberta", {"emd": False}), ("deberta", {"max_relative_positions": 5})])
def test_analytic_flops_equal_the_flop_counter_for_every_variant(name, fields):
    model = build(name, {**fields, "attn_impl": "dense"}, SHAPE, torch.device("cpu"))
    counted, analytic = counted_flops_per_token(model, torch.randint(0, 90, (1, 24)))  # batch 1: see DeBERTa
    assert counted == pytest.approx(analytic, rel=1e-9)


@pytest.mark.parametrize("name", ["bert", "albert", "deberta"])
def test_encoder_training_flops_count_the_mlm_head_on_masked_positions_only(name):
    T, masked = 24, 6
    model = build(name, {"attn_impl": "dense", "mlm_prob": masked / T}, SHAPE, torch.device("cpu"))
    idx = torch.randint(0, 90, (1, T))
    targets = torch.full((1, T), -1)
    targets[0, torch.randperm(T)[:masked]] = 7
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(idx, targets)
    dense = sum(m.attention_flops(T, pairs=T * T) - m.attention_flops(T) for m in attention_modules(model))
    assert counter.get_total_flops() == pytest.approx(model.flops_per_token(T, training=True)["total"] * T + dense)

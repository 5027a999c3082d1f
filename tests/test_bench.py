"""bench.py end to end at a tiny shape: entries from names and config files, several lengths, the FLOP check."""
import json

import pytest

from conftest import run

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
    assert all(g["identical"] for g in report["generation"].values())
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

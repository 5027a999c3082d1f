"""results/compare/compare.py end to end on its --mini protocol (tiny shapes, gpt and alibi, 2 seeds, 20 iterations): the
table agrees with what the runs logged, a run stopped halfway is resumed exactly, and a second invocation trains
nothing and rewrites the same table. Plus the table's rules (verdict, NSP/SOP chance) on hand-made logs."""
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "results" / "compare"))
import compare  # noqa: E402

ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
TIMING = ("dt_ms", "tokens_per_s", "mfu", "eta_s", "train_s")  # wall-clock fields: the only ones a resumed run may change


def drive(out, *extra):
    result = subprocess.run([sys.executable, str(REPO / "results" / "compare" / "compare.py"), "--mini", f"--out={out}",
                             "--jobs=4", *extra], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def stopped_halfway(out, proto, label, seed):
    """Train one run of the protocol to the end, keeping its step checkpoints, then put it back in the state a kill
    a few steps after its mid-run checkpoint leaves: ckpt.pt of that iteration, logs a little further, no final
    eval. Returns the uninterrupted run's records."""
    iters = proto["common"]["max_iters"]
    half = iters // 2
    run_dir = out / "runs" / label / f"seed{seed}"
    args = compare.train_args(proto, label, seed, compare.prepare_data(out), run_dir)
    subprocess.run([sys.executable, "train.py", *compare.as_argv(args), "--keep_last=10"], cwd=REPO, env=ONE_THREAD,
                   check=True, capture_output=True)
    records = compare.read_records(run_dir)
    os.replace(run_dir / f"ckpt_{half:08d}.pt", run_dir / "ckpt.pt")
    for extra in run_dir.glob("ckpt_*.pt"):
        extra.unlink()
    logged = [json.dumps(r) for r in records if r["iter"] <= half + 4 and not (r["iter"] == iters)]
    (run_dir / "metrics.jsonl").write_text("\n".join(logged) + "\n")
    return records


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    proto = compare.protocol(mini=True, iters=0, seeds=0)
    uninterrupted = stopped_halfway(out, proto, "gpt", 1)
    first = drive(out)
    tables = ((out / "table.md").read_text(), (out / "table.json").read_text())
    logs = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("metrics.jsonl")}
    second = drive(out)
    return {"out": out, "proto": proto, "uninterrupted": uninterrupted, "first": first, "second": second,
            "tables": tables, "logs": logs}


def final_losses(out, proto, label):
    iters = proto["common"]["max_iters"]
    return [compare.final_eval(compare.read_records(out / "runs" / label / f"seed{s}"), iters)["val/loss"]
            for s in proto["seeds"]]


def test_table_is_computed_from_the_logged_values(mini):
    out, proto = mini["out"], mini["proto"]
    table = json.loads((out / "table.json").read_text())
    assert list(table["rows"]) == list(compare.MINI_LABELS)
    base = final_losses(out, proto, "gpt")
    md_rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
               for line in (out / "table.md").read_text().splitlines()
               if line.startswith("| ") and not line.startswith("| label")}
    assert set(md_rows) == set(compare.MINI_LABELS)
    for label in compare.MINI_LABELS:
        losses = final_losses(out, proto, label)
        row, md = table["rows"][label], md_rows[label]
        mean, std = statistics.mean(losses), statistics.stdev(losses)
        assert row["n"] == len(proto["seeds"]) == 2 and md[1] == "2/2"
        assert row["loss"] == pytest.approx([mean, std], rel=1e-12)
        assert row["bpc"] == pytest.approx([mean / math.log(2), std / math.log(2)], rel=1e-12)
        # the markdown shows the same numbers, rounded
        shown_mean, shown_std = (float(x) for x in md[2].split("±"))
        assert shown_mean == pytest.approx(mean, abs=6e-5) and shown_std == pytest.approx(std, abs=6e-5)
        assert float(md[3].split("±")[0]) == pytest.approx(mean / math.log(2), abs=6e-5)
        assert int(md[6].replace(",", "")) == row["params"] > 0
        assert float(md[7].replace(",", "")) > 0 and float(md[8]) > 0  # tokens/s, wall s
        if label == "gpt":
            assert md[4] == md[5] == "-"
            continue
        diff = mean - statistics.mean(base)
        se = math.sqrt(std ** 2 / len(losses) + statistics.stdev(base) ** 2 / len(base))
        assert (row["diff"], row["se"]) == pytest.approx((diff, se), rel=1e-12)
        expected = "within noise" if abs(diff) <= 2 * se else ("better" if diff < 0 else "worse")
        assert row["verdict"] == md[5] == expected
        shown_diff, shown_se = (float(x) for x in md[4].split("±"))
        assert shown_diff == pytest.approx(diff, abs=6e-5) and shown_se == pytest.approx(se, abs=6e-5)
    for plot in ("curves.png", "attention.png", "analysis/analysis.json"):
        assert (out / plot).is_file()


def test_a_run_stopped_halfway_is_resumed_exactly(mini):
    out = mini["out"]
    assert "start gpt seed1 (resume from its checkpoint" in mini["first"]
    assert mini["first"].count("(scratch)") == 3
    resumed = compare.read_records(out / "runs" / "gpt" / "seed1")
    strip = [{k: v for k, v in r.items() if k not in TIMING} for r in resumed]
    assert strip == [{k: v for k, v in r.items() if k not in TIMING} for r in mini["uninterrupted"]]
    train_iters = [r["iter"] for r in resumed if r["kind"] == "train"]
    assert train_iters == sorted(set(train_iters))  # the steps logged past the checkpoint were not repeated


def test_second_invocation_skips_finished_runs_and_reproduces_the_table(mini):
    out = mini["out"]
    runs = len(compare.MINI_LABELS) * 2
    assert f"{runs} of {runs} runs finished, 0 to train" in mini["second"]
    assert "start " not in mini["second"]
    assert ((out / "table.md").read_text(), (out / "table.json").read_text()) == mini["tables"]
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("metrics.jsonl")} == mini["logs"]
    report = drive(out, "--report")  # the table from the logs alone, nothing trained or even checked for training
    assert "runs finished" not in report and "start " not in report
    assert ((out / "table.md").read_text(), (out / "table.json").read_text()) == mini["tables"]


def test_verdict_rule():
    assert compare.verdict(-0.03, 0.01) == "better"
    assert compare.verdict(0.03, 0.01) == "worse"
    assert compare.verdict(0.02, 0.01) == "within noise"  # exactly 2 se is still noise
    assert compare.verdict(-0.019, 0.01) == "within noise"
    assert compare.verdict(0.5, math.nan) == "n/a"  # one seed: no spread, no verdict
    diff, se = compare.diff_se([1.0, 1.2, 1.1], [2.0, 2.4])
    assert diff == pytest.approx(1.1 - 2.2)
    assert se == pytest.approx(math.sqrt(0.01 / 3 + 0.08 / 2))


def fake_encoder_run(out, label, seed, variant, final):
    """A finished encoder run as train.py leaves it, as far as the table reads it."""
    run_dir = out / "runs" / label / f"seed{seed}"
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({"variant": variant, "n_layer": 1, "n_head": 1, "n_embd": 8,
                                                     "block_size": 16, "vocab_size": 69}))
    records = [{"iter": 4, "kind": "train", "tokens_per_s": 100.0 * seed},
               {"iter": 8, "kind": "eval", **final}]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_pair_task_reported_only_above_chance(tmp_path):
    proto = {"labels": {k: compare.ENCODERS[k] for k in ("bert", "albert")}, "seeds": [1, 2, 3],
             "common": {**compare.MINI_SHAPE, **compare.MINI_RECIPE, "max_iters": 8, "lr_decay_iters": 8,
                        "warmup_iters": 1}}
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "meta.json").write_text(json.dumps({"tokenizer": "char", "vocab_size": 65}))
    for seed, (nsp, sop) in enumerate([(0.81, 0.52), (0.79, 0.47), (0.80, 0.51)], start=1):
        fake_encoder_run(tmp_path, "bert", seed, "bert", {"val/loss": 3.0 + seed / 10, "val/mlm_acc": 0.2,
                                                          "val/nsp_acc": nsp, "val/nsp_loss": 0.6})
        fake_encoder_run(tmp_path, "albert", seed, "albert", {"val/loss": 3.1, "val/mlm_acc": 0.25 + seed / 100,
                                                              "val/sop_acc": sop, "val/sop_loss": 0.69})
    table = compare.summarize(proto, tmp_path)
    bert, albert = table["rows"]["bert"], table["rows"]["albert"]
    assert bert["loss"] == pytest.approx([3.2, 0.1])
    assert albert["mlm_acc"] == pytest.approx([0.27, 0.01])
    assert bert["pair"]["task"] == "nsp" and bert["pair"]["above_chance"]
    assert albert["pair"]["task"] == "sop" and not albert["pair"]["above_chance"]
    md = compare.markdown(table)
    bert_row = next(line for line in md.splitlines() if line.startswith("| bert "))
    albert_row = next(line for line in md.splitlines() if line.startswith("| albert "))
    assert "0.800 ± 0.010" in bert_row and "at chance" in albert_row
    assert "At chance with this budget: albert sop 0.500" in md

"""results/compare/compare.py end to end on its miniature protocols (mini_sweep: gpt, alibi and duo_predict at two
learning rates on tiny shapes, at equal FLOPs; mini: each at its best rate, 2 seeds; mini_longer: gpt and each
family's best, twice as long), through the same path as the real comparison: the tables agree with what the runs logged, the FLOP budget and the best rate are what the rules
say, a run stopped halfway is resumed exactly, a second invocation trains nothing and rewrites the same files, and a
run trained under other settings is refused. Plus the table's rules (verdict, NSP/SOP chance) on hand-made logs and
the protocol files' checks."""
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
MINI = "mini_sweep,mini,mini_longer"
LABELS = ("gpt", "alibi", "duo_predict")
OUTPUTS = ("table.md", "table.json", "plan.md")


def drive(out, *extra, check=True):
    result = subprocess.run([sys.executable, str(REPO / "results" / "compare" / "compare.py"), f"--protocol={MINI}",
                             f"--out={out}", "--devices=cpu,cpu,cpu,cpu", *extra], cwd=REPO, capture_output=True,
                            text=True, timeout=600)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def stopped_halfway(out, proto, label, seed, lr):
    """Train one run of the protocol to the end, keeping its step checkpoints, then put it back in the state a kill
    a few steps after its mid-run checkpoint leaves: ckpt.pt of that iteration, logs a little further, no final
    eval. Returns the uninterrupted run's records."""
    iters = proto["iters"]
    half = iters // 2
    run_dir = compare.run_dir_of(out, label, seed, lr, iters)
    args = compare.train_args(proto, label, seed, lr, iters, compare.prepare_data(out), run_dir)
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
    sweep, tuned = compare.read_protocol("mini_sweep"), compare.read_protocol("mini")
    uninterrupted = stopped_halfway(out, sweep, "gpt", 1, 1e-3)
    first = drive(out).stdout
    outputs = {name: (out / name).read_text() for name in OUTPUTS}
    logs = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("metrics.jsonl")}
    second = drive(out).stdout
    return {"out": out, "sweep": sweep, "tuned": tuned, "uninterrupted": uninterrupted, "first": first,
            "second": second, "outputs": outputs, "logs": logs}


def final(run_dir, iters):
    return compare.final_eval(compare.read_records(run_dir), iters)


def sweep_losses(mini, label):
    """{lr: seed-1 final loss} of a label in the miniature sweep."""
    out, sweep = mini["out"], mini["sweep"]
    iters = json.loads((compare.run_dir_of(out, label, 1, 1e-3, 20 if label != "duo_predict" else 10)
                        / "config.json").read_text())["max_iters"]
    return {lr: final(compare.run_dir_of(out, label, 1, lr, iters), iters)["val/loss"]
            for lr in sweep["learning_rates"]}


def test_flop_budget_stops_a_costlier_label_at_the_baselines_training_flops(mini):
    """duo_predict's step costs about twice gpt's: it trains floor(20 / ratio) iterations, and the train_flops its
    final eval logs are within one of its steps below gpt's."""
    out = mini["out"]
    gpt = final(compare.run_dir_of(out, "gpt", 1, 1e-3, 20), 20)
    duo_iters = json.loads((out / "runs" / "duo_predict" / "iters10" / "seed1" / "config.json").read_text())
    assert duo_iters["max_iters"] == duo_iters["lr_decay_iters"] == 10 and duo_iters["warmup_iters"] == 1
    duo = final(out / "runs" / "duo_predict" / "iters10" / "seed1", 10)
    ratio = (duo["train_flops"] / 10) / (gpt["train_flops"] / 20)
    assert 1.9 < ratio < 2.1 and math.floor(20 / ratio) == 10
    assert gpt["train_flops"] - duo["train_flops"] / 10 < duo["train_flops"] <= gpt["train_flops"]
    alibi = final(compare.run_dir_of(out, "alibi", 1, 1e-3, 20), 20)
    assert alibi["train_flops"] <= gpt["train_flops"] * (1 + mini["sweep"]["flops_tolerance"])  # kept 20 iterations


def test_each_label_runs_its_best_sweep_rate_in_the_tuned_protocol(mini):
    out = mini["out"]
    for label in LABELS:
        losses = sweep_losses(mini, label)
        best = min(losses, key=losses.get)
        iters = 10 if label == "duo_predict" else 20
        for seed in mini["tuned"]["seeds"]:
            config = json.loads((compare.run_dir_of(out, label, seed, best, iters) / "config.json").read_text())
            assert config["learning_rate"] == best and config["min_lr"] == pytest.approx(best / 10)
            assert config["seed"] == seed


def detail_rows(out):
    """{label: cells} of the detailed table (the last section of table.md)."""
    text = (out / "table.md").read_text()
    details = text[text.index("## Details: mini"):]
    return {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in details.splitlines() if line.startswith("| ") and not line.startswith("| label")}


def test_tables_are_computed_from_the_logged_values(mini):
    out, tuned = mini["out"], mini["tuned"]
    table = json.loads((out / "table.json").read_text())
    rows = table["details"]["mini"]["rows"]
    md_rows = detail_rows(out)
    assert list(rows) == list(md_rows) == list(LABELS)

    def losses(label):
        lr, iters = rows[label]["lr"], rows[label]["iters"]
        return [final(compare.run_dir_of(out, label, s, lr, iters), iters)["val/loss"] for s in tuned["seeds"]]

    base = losses("gpt")
    for label in LABELS:
        row, md = rows[label], md_rows[label]
        mine = losses(label)
        mean, std = statistics.mean(mine), statistics.stdev(mine)
        assert row["n"] == 2 and md[3] == "2/2"
        assert row["loss"] == pytest.approx([mean, std], rel=1e-12)
        assert row["bpc"] == pytest.approx([mean / math.log(2), std / math.log(2)], rel=1e-12)
        shown_mean, shown_std = (float(x) for x in md[4].split("±"))
        assert shown_mean == pytest.approx(mean, abs=6e-5) and shown_std == pytest.approx(std, abs=6e-5)
        assert int(md[8].replace(",", "")) == row["params"] > 0
        assert float(md[9].replace(",", "")) > 0 and float(md[10]) > 0  # tokens/s, wall s
        if label == "gpt":
            assert md[6] == md[7] == "-"
            continue
        diff = mean - statistics.mean(base)
        se = math.sqrt(std ** 2 / len(mine) + statistics.stdev(base) ** 2 / len(base))
        assert (row["diff"], row["se"]) == pytest.approx((diff, se), rel=1e-12)
        expected = "within noise" if abs(diff) <= 2 * se else ("better" if diff < 0 else "worse")
        assert row["verdict"] == md[7] == expected
        # the verdict table: the same contrast, and the sweep's Δ at each rate against gpt at that rate
        verdicts = table["verdicts"][label]["protocols"]
        assert verdicts["mini"]["diff"] == pytest.approx(diff, rel=1e-12)
        line = next(l for l in (out / "table.md").read_text().splitlines() if l.startswith(f"| {label} |"))
        assert f"{diff:+.4f} ± {se:.4f} {expected}" in line
        gpt_sweep, my_sweep = sweep_losses(mini, "gpt"), sweep_losses(mini, label)
        shown = " / ".join(f"{my_sweep[lr] - gpt_sweep[lr]:+.3f}" for lr in sorted(my_sweep))
        assert f"{min(my_sweep, key=my_sweep.get):g} ({shown})" in line
    for plot in ("curves.png", "attention.png", "analysis/analysis.json", "sweep_mini_sweep.png"):
        assert (out / plot).is_file()
    plan = (out / "plan.md").read_text()
    assert "## mini_sweep: 6 of 6 runs done" in plan and "## mini: 6 of 6 runs done" in plan
    assert "## mini_longer: 3 of 3 runs done" in plan


def test_longer_runs_each_familys_best_label_at_its_best_rate(mini):
    """mini_longer: gpt, and for each family the label with the lowest mean loss in mini (alibi is the only
    foundational label there, duo_predict the only duo-predict one), twice as long (duo at equal FLOPs)."""
    out = mini["out"]
    rows = json.loads((out / "table.json").read_text())["details"]
    assert list(rows["mini_longer"]["rows"]) == ["gpt", "alibi", "duo_predict"]
    for label, row in rows["mini_longer"]["rows"].items():
        assert row["lr"] == rows["mini"]["rows"][label]["lr"] and row["n"] == 1
        assert row["iters"] == 2 * rows["mini"]["rows"][label]["iters"]
    assert (out / "curves_mini_longer.png").is_file() and (out / "gaps_mini_longer.png").is_file()
    step_flops = compare.StepFlops(json.loads((out / "data" / "meta.json").read_text())["vocab_size"])
    v = compare.view(compare.read_protocol("mini_longer"), out, (), step_flops, compare.Memo())
    for label in ("alibi", "duo_predict"):  # the gap plot ends at the table's Δ, where gpt ends
        x, diff, se = compare.gap_curve(v, label)
        losses = {l: rows["mini_longer"]["rows"][l]["loss"][0] for l in ("gpt", label)}
        assert x[-1] == 40 and diff[-1] == pytest.approx(losses[label] - losses["gpt"], abs=1e-9)
    line = next(l for l in (out / "table.md").read_text().splitlines() if l.startswith("| alibi |"))
    assert line.rstrip(" |").split("|")[-1].strip().startswith(("+", "-"))  # its Δ in the last column


def test_a_run_stopped_halfway_is_resumed_exactly(mini):
    out = mini["out"]
    assert "start gpt seed1 lr 0.001 20 iters on cpu (resume from its checkpoint" in mini["first"]
    # 6 sweep runs, 3 second seeds and 3 longer runs, less the resumed one
    assert mini["first"].count("(scratch)") == 11
    resumed = compare.read_records(compare.run_dir_of(out, "gpt", 1, 1e-3, 20))
    strip = [{k: v for k, v in r.items() if k not in TIMING} for r in resumed]
    assert strip == [{k: v for k, v in r.items() if k not in TIMING} for r in mini["uninterrupted"]]
    train_iters = [r["iter"] for r in resumed if r["kind"] == "train"]
    assert train_iters == sorted(set(train_iters))  # the steps logged past the checkpoint were not repeated


def test_second_invocation_skips_finished_runs_and_reproduces_the_tables(mini):
    out = mini["out"]
    assert "12 of 12 runs finished, 0 to train" in mini["second"]
    assert "start " not in mini["second"]
    assert {name: (out / name).read_text() for name in OUTPUTS} == mini["outputs"]
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("metrics.jsonl")} == mini["logs"]
    report = drive(out, "--report").stdout  # the tables from the logs alone, nothing trained or even checked
    assert "runs finished" not in report and "start " not in report
    assert {name: (out / name).read_text() for name in OUTPUTS} == mini["outputs"]


def test_a_protocol_without_analysis_leaves_the_analysis_plots_alone(mini):
    """Only the protocol marked analysis = true (mini) writes curves.png and the attention analysis; reporting
    another one alone writes its own curves_<name>.png."""
    out = mini["out"]
    kept = {name: (out / name).read_bytes() for name in ("curves.png", "attention.png", "analysis/analysis.json")}
    result = subprocess.run([sys.executable, str(REPO / "results" / "compare" / "compare.py"),
                             "--protocol=mini_longer", f"--out={out}", "--report"], cwd=REPO, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert {name: (out / name).read_bytes() for name in kept} == kept
    assert (out / "curves_mini_longer.png").is_file()
    drive(out, "--report")  # the tables of all three again, for the tests that read them


def test_a_run_trained_under_other_settings_is_refused(mini):
    """A finished run is not reused, nor reported, under settings it was not trained with."""
    out = mini["out"]
    lr = json.loads(mini["outputs"]["table.json"])["details"]["mini"]["rows"]["alibi"]["lr"]
    path = compare.run_dir_of(out, "alibi", 2, lr, 20) / "config.json"
    saved = path.read_text()
    path.write_text(json.dumps({**json.loads(saved), "n_embd": 48}))
    try:
        for extra in ([], ["--report"]):
            result = drive(out, *extra, check=False)
            assert result.returncode == 1 and "start " not in result.stdout
            assert result.stderr.strip().splitlines() == [
                f"error: {path.parent} was trained with n_embd=48, this protocol asks for 32; use another --out or "
                f"the protocol it was trained under"]
    finally:
        path.write_text(saved)
    assert {name: (out / name).read_text() for name in OUTPUTS} == mini["outputs"]  # nothing rewritten


def test_a_new_variant_enters_by_its_name(mini, tmp_path):
    """Any registered variant is a label with its defaults, compared against the protocol's baseline."""
    result = drive(mini["out"], "--plan", "--labels=parallel")
    assert result.returncode == 0
    mini_sweep = result.stdout[result.stdout.index("## mini_sweep"):result.stdout.index("## mini:")]
    assert [l.split("|")[1].strip() for l in mini_sweep.splitlines() if l.startswith("| ") and "lr" not in l
            and "---" not in l] == ["gpt", "gpt", "parallel", "parallel"]
    bad = drive(mini["out"], "--plan", "--labels=nonesuch", check=False)
    assert bad.returncode == 1 and "unknown label 'nonesuch'" in bad.stderr


@pytest.mark.parametrize("text, message", [
    ('labels = "all"\nfoo = 1\n', "unknown key 'foo'"),
    ('extends = "equal_tokens"\nseeds = "three"\n', "seeds = 'three' has the wrong type"),
    ('extends = "equal_tokens"\nbudget = "joules"\n', "budget must be 'tokens' or 'flops'"),
    ('extends = "equal_tokens"\nlearning_rates = "best"\n', 'learning_rates = "best" needs best_from'),
    ('extends = "equal_tokens"\nlearning_rates = [2.0]\n', "learning_rates must be"),
    ('extends = "equal_tokens"\n[recipe]\nlearning_rate = 0.1\n', "shape and recipe may not set"),
    ('extends = "equal_tokens"\nlabels = ["gpt", "nonesuch"]\n', "unknown label 'nonesuch'"),
    ('labels = [\n', "Invalid value"),
    ('extends = "SELF"\n', "extends itself"),
    ('seeds = [1]\n', "missing labels"),
])
def test_protocol_file_errors_are_one_line(tmp_path, text, message):
    path = tmp_path / "p.toml"
    path.write_text(text.replace("SELF", str(path)))
    result = subprocess.run([sys.executable, str(REPO / "results" / "compare" / "compare.py"), f"--protocol={path}",
                             f"--out={tmp_path / 'out'}", "--plan"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 1 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr


def test_every_protocol_file_reads():
    names = sorted(p.stem for p in compare.PROTOCOLS.glob("*.toml"))
    assert set(compare.REPORTED) <= set(names)
    for name in names:
        proto = compare.read_protocol(name)
        assert proto["name"] == name and proto["description"]


def test_a_slot_frees_when_its_own_run_ends():
    """--jobs=2 gives two slots named cpu: one busy slot leaves the other free, so a run starts as soon as any ends."""
    assert compare.free_slots(["cpu", "cpu"], []) == [0, 1]
    assert compare.free_slots(["cpu", "cpu"], [0]) == [1]
    assert compare.free_slots(["cpu", "cpu", "cpu"], [2, 0]) == [1]
    assert compare.free_slots(["cuda:0", "cuda:1"], [1]) == [0]


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
    proto = {**compare.read_protocol("mini"), "iters": 8, "seeds": [1, 2, 3], "learning_rates": [1e-3],
             "labels": ["bert", "albert"], "name": "fake"}
    v = {"name": "fake", "description": "", "seeds": [1, 2, 3], "baseline": "gpt", "encoder_baseline": "bert",
         "proto": proto, "labels": {label: {"spec": compare.ENCODERS[label], "iters": 8, "runs": {1e-3: {
             seed: tmp_path / "runs" / label / f"seed{seed}" for seed in (1, 2, 3)}}} for label in ("bert", "albert")}}
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "meta.json").write_text(json.dumps({"tokenizer": "char", "vocab_size": 65}))
    for seed, (nsp, sop) in enumerate([(0.81, 0.52), (0.79, 0.47), (0.80, 0.51)], start=1):
        fake_encoder_run(tmp_path, "bert", seed, "bert", {"val/loss": 3.0 + seed / 10, "val/mlm_acc": 0.2,
                                                          "val/nsp_acc": nsp, "val/nsp_loss": 0.6})
        fake_encoder_run(tmp_path, "albert", seed, "albert", {"val/loss": 3.1, "val/mlm_acc": 0.25 + seed / 100,
                                                              "val/sop_acc": sop, "val/sop_loss": 0.69})
    table = compare.summarize(v, tmp_path)
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

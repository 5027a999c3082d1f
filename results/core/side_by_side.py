"""Run the tiny-Shakespeare CPU recipe and the core bench in two checkouts, alternating, in one run, and compare:
the final val loss must agree to 4 decimals, the step times must agree within noise.

    git worktree add /tmp/before <commit>
    python results/core/side_by_side.py --other=/tmp/before --data_dir=/tmp/shakespeare_char --reps=3

--data_dir holds tiny Shakespeare prepared by data/shakespeare_char/prepare.py (both checkouts read the same files).
Prints one table and writes side_by_side.json into --out_dir.
"""
import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(HERE))
from infra import markdown  # noqa: E402


def train(repo, data_dir, out_dir):
    """Final val loss and the median step time (ms) of the recipe in one checkout."""
    subprocess.run([sys.executable, "train.py", "config/train_shakespeare_char_cpu.py", f"--data_dir={data_dir}",
                    f"--out_dir={out_dir}", "--overwrite=True"], cwd=repo, check=True, capture_output=True)
    records = [json.loads(line) for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["kind"] == "eval"]
    steps = [r["dt_ms"] for r in records if r["kind"] == "train" and r["iter"] > 0]
    return evals[-1]["val/loss"], statistics.median(steps)


def bench(repo, out_dir):
    """Median forward+backward ms of `python bench.py` (the core shape, gpt) in one checkout."""
    subprocess.run([sys.executable, "bench.py", f"--out_dir={out_dir}", "--gen_tokens=0"], cwd=repo, check=True,
                   capture_output=True)
    return json.loads((Path(out_dir) / "bench.json").read_text())["results"][0]["fwd_bwd_s"]["median"] * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--other", required=True, help="the other checkout (e.g. a worktree of an earlier commit)")
    ap.add_argument("--data_dir", required=True)
    ap.add_argument("--reps", type=int, default=3, help="alternating bench runs per checkout")
    ap.add_argument("--out_dir", default="side_by_side_out")
    args = ap.parse_args()
    repos = {"this": HERE, "other": Path(args.other).resolve()}
    for name, repo in repos.items():
        if not (repo / "train.py").is_file():
            sys.exit(f"error: {repo} is not a checkout of this project (no train.py)")
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = {name: {"bench_ms": []} for name in repos}
    with tempfile.TemporaryDirectory() as tmp:
        for name, repo in repos.items():
            print(f"training the recipe in {name} ({repo})", flush=True)
            result[name]["val_loss"], result[name]["step_ms"] = train(repo, Path(args.data_dir).resolve(),
                                                                      Path(tmp) / f"run_{name}")
        for rep in range(args.reps):  # alternating, so both see the same stretch of machine noise
            for name, repo in repos.items():
                result[name]["bench_ms"].append(bench(repo, Path(tmp) / f"bench_{name}_{rep}"))
    this, other = result["this"], result["other"]
    rows = [("final val loss", f"{this['val_loss']:.4f}", f"{other['val_loss']:.4f}",
             "same" if round(this["val_loss"], 4) == round(other["val_loss"], 4) else "DIFFERENT"),
            ("recipe step ms (median)", f"{this['step_ms']:.1f}", f"{other['step_ms']:.1f}",
             f"{this['step_ms'] / other['step_ms']:.3f}x"),
            (f"bench fwd+bwd ms (median of {args.reps})", f"{statistics.median(this['bench_ms']):.1f}",
             f"{statistics.median(other['bench_ms']):.1f}",
             f"{statistics.median(this['bench_ms']) / statistics.median(other['bench_ms']):.3f}x")]
    table = markdown.table(["measure", "this checkout", "other checkout", "this / other"], rows)
    print(table)
    (out / "side_by_side.json").write_text(json.dumps({"repos": {k: str(v) for k, v in repos.items()}, **result},
                                                      indent=1) + "\n")


if __name__ == "__main__":
    main()

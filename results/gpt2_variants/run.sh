#!/usr/bin/env bash
# Reproduce results/gpt2_variants/report.md from scratch: WikiText-2 raw (wiki.valid as train, wiki.test as val, GPT-2 BPE)
# into /tmp/wt2, then the small CPU twins of the baseline and of each docs/gpt2_variants.md variant at the same iterations, seed
# and ORIGINAL tokens per step, each on ONE thread; prints the table. About 35 minutes of one thread in all.
#   bash results/gpt2_variants/run.sh            (from the repo root; RUNS="gpt duo_predict" to run a subset)
set -euo pipefail
cd "$(dirname "$0")/../.."
SHARED=${SHARED:-../shared}
OUT=${OUT:-/tmp/gpt2_variants}
export TIKTOKEN_CACHE_DIR=${TIKTOKEN_CACHE_DIR:-$SHARED/tiktoken_cache} OMP_NUM_THREADS=1
RAW=$SHARED/data/wikitext/wikitext-2-raw
[ -f /tmp/wt2/meta.json ] || python data/wikitext103/prepare.py --train "$RAW/wiki.valid.raw" --val "$RAW/wiki.test.raw" --out_dir /tmp/wt2
mkdir -p "$OUT"

declare -A CMD=(
  [gpt]="config/wikitext2_gpt2_variants_cpu.py"
  [drift_diffusion]="config/wikitext2_drift_diffusion_cpu.py"
  [parallel_mean]="config/wikitext2_parallel_cpu.py"
  [parallel_concat]="config/wikitext2_parallel_cpu.py --bottleneck_method=concat"
  [duo_predict]="config/wikitext2_duo_predict_cpu.py"
  [rotating_head_lr]="config/wikitext2_rotating_head_cpu.py"
  [rotating_head_gp]="config/wikitext2_rotating_head_cpu.py --rotatinghead=gp"
)
RUNS=${RUNS:-"gpt drift_diffusion parallel_mean duo_predict rotating_head_lr rotating_head_gp parallel_concat"}
for run in $RUNS; do
  echo "== $run: python train.py ${CMD[$run]} --out_dir=$OUT/$run --overwrite=True"
  start=$(date +%s)
  python train.py ${CMD[$run]} --out_dir="$OUT/$run" --overwrite=True > "$OUT/$run.log" 2>&1
  echo "$(( $(date +%s) - start ))" > "$OUT/$run.wall_s"
  grep -E "^step|parameters" "$OUT/$run.log"
done

python - "$OUT" $RUNS <<'PY'
import json, statistics, sys
from pathlib import Path
import variants
from infra import checkpoint
out, runs = Path(sys.argv[1]), sys.argv[2:]
print("| run | params (non-wpe) | val ppl (next token) | val acc | duo mask-stream loss | train tok/s (1 thread, median) | wall s |")
print("|---|---|---|---|---|---|---|")
for run in runs:
    params = checkpoint.build_model(checkpoint.load(out / run / "ckpt.pt"), variants.get).num_params()
    recs = [json.loads(l) for l in (out / run / "metrics.jsonl").read_text().splitlines()]
    ev = [r for r in recs if r["kind"] == "eval"][-1]
    tps = statistics.median(r["tokens_per_s"] for r in recs if r["kind"] == "train" and r["iter"] >= 5)
    mask = f"{ev['val/mask_loss']:.3f}" if "val/mask_loss" in ev else "-"
    wall = (out / f"{run}.wall_s").read_text().strip()
    print(f"| {run} | {params:,} | {ev['val/ppl']:.1f} | {ev['val/acc']:.4f} | {mask} | {tps:,.0f} | {wall} |")
PY

echo; echo "== parallel pair implementations (block stack fwd+bwd, 1 thread)"
python results/gpt2_variants/gpt2_variants_pair_timing.py
echo; echo "== duo-predict attention paths (fwd+bwd, 1 thread)"
python results/gpt2_variants/gpt2_variants_duo_timing.py

#!/usr/bin/env bash
# Reproduce results/layerwise/report.md from scratch: TinyStories from-scratch runs per schedule, attention analysis for
# full vs aggressive, and the 12L/768 forward+backward cost per schedule at T = 4096, 2048, 1024 (one CPU thread).
# Needs ../shared/data (TinyStories subsets) and ../shared/tiktoken_cache beside the repo. Outputs go to /tmp.
# Time on one contended CPU thread: ~25 min of training, ~30 min of benchmark.
set -euo pipefail
cd "$(dirname "$0")/../.."
SHARED=${SHARED:-../shared}
export TIKTOKEN_CACHE_DIR=$SHARED/tiktoken_cache OMP_NUM_THREADS=1
OUT=${OUT:-/tmp/layerwise_results}
mkdir -p "$OUT"

# 1. data
python data/tinystories/prepare.py --train "$SHARED/data/tinystories/train_first1000/tiny_stories.txt" \
  --val "$SHARED/data/tinystories/validation_prefix/tinystories_val.txt" --out_dir "$OUT/ts"

# 2. from scratch, each schedule at the same iterations (12L/4H/64, context 256, 50 iters of 4 x 256 tokens)
for s in full half quarter aggressive; do
  python train.py config/tinystories_layerwise_${s}_cpu.py --data_dir="$OUT/ts" --out_dir="$OUT/ts_lw_$s" \
    --overwrite=True > "$OUT/ts_lw_$s.log" 2>&1
done
python - "$OUT" <<'EOF'
import json, statistics, sys
out = sys.argv[1]
print("| schedule | val loss | val ppl | train tokens/s (median of logged iters, 1 thread) |")
print("|---|---|---|---|")
for s in ("full", "half", "quarter", "aggressive"):
    rows = [json.loads(l) for l in open(f"{out}/ts_lw_{s}/metrics.jsonl")]
    ev = [r for r in rows if r["kind"] == "eval"][-1]
    tps = statistics.median(r["tokens_per_s"] for r in rows if r["kind"] == "train" and r["iter"] > 0)
    print(f"| {s} | {ev['val/loss']:.4f} | {ev['val/ppl']:.1f} | {tps:,.0f} |")
EOF

# 3. attention analysis (dense reference path), full vs aggressive
python tools/analysis.py --ckpt="$OUT/ts_lw_full,$OUT/ts_lw_aggressive" --labels=full,aggressive --data_dir="$OUT/ts" \
  --batch_size=8 --out_dir="$OUT/analysis"

# 4. forward+backward cost per schedule, GPT-2 small shape, batch 1 (bench.py's entries and helpers)
python results/layerwise/layerwise_bench.py --seq_lens=4096,2048,1024 --reps=1 --warmup=0 \
  --variants=config/bench/layerwise_full.py,config/bench/layerwise_half.py,config/bench/layerwise_quarter.py,config/bench/layerwise_aggressive.py \
  --n_layer=12 --n_head=12 --n_embd=768 --vocab_size=50304 --bias=True --batch_size=1 --out_dir="$OUT/bench"
cat "$OUT/bench/bench.md"
# run C: full vs aggressive at T=4096, three interleaved repetitions (the decisive speedup number)
python results/layerwise/layerwise_bench.py --seq_lens=4096 --reps=3 --warmup=0 \
  --variants=config/bench/layerwise_aggressive.py,config/bench/layerwise_full.py --baseline=layerwise_full \
  --n_layer=12 --n_head=12 --n_embd=768 --vocab_size=50304 --bias=True --batch_size=1 --out_dir="$OUT/bench_c"
cat "$OUT/bench_c/bench.md"

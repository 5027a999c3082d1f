#!/usr/bin/env bash
# Document-aware training (train.py --doc_mask=True) against plain packed training, same model, data, budget and
# seeds, on the shared TinyStories subsets. Each checkpoint is evaluated both ways (val loss with and without the
# document mask), so neither run is scored only under its own rule. CPU, about 20 minutes on 2 cores.
#   bash results/doc_mask/run.sh [RUNS_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS="${1:-/tmp/doc_mask}"
SHARED="$(cd .. && pwd)/shared/data/tinystories"
mkdir -p "$RUNS"
export TIKTOKEN_CACHE_DIR="${TIKTOKEN_CACHE_DIR:-$(cd .. && pwd)/shared/tiktoken_cache}"
python data/tinystories/prepare.py --train "$SHARED/train_first1000/tiny_stories.txt" \
    --val "$SHARED/validation_prefix/tinystories_val.txt" --out_dir "$RUNS/data" > /dev/null
COMMON=(--data_dir="$RUNS/data" --device=cpu --n_layer=4 --n_head=4 --n_embd=64 --block_size=128 --batch_size=8
        --dropout=0.0 --bias=False --learning_rate=2e-3 --min_lr=2e-4 --warmup_iters=30 --max_iters=300
        --lr_decay_iters=300 --eval_interval=300 --eval_iters=20 --log_interval=50 --overwrite=True)
for seed in 1 2; do
  for doc in False True; do
    python train.py "${COMMON[@]}" --seed=$seed --doc_mask=$doc --out_dir="$RUNS/doc${doc}_s$seed" \
        > "$RUNS/doc${doc}_s$seed.log" 2>&1
    for eval_doc in False True; do  # the same checkpoint scored under both rules (eval_only writes no checkpoint)
      python train.py "${COMMON[@]}" --seed=$seed --doc_mask=$eval_doc --out_dir="$RUNS/doc${doc}_s$seed" \
          --init_from=resume --eval_only=True > "$RUNS/doc${doc}_s${seed}_eval${eval_doc}.log" 2>&1
    done
  done
done
python - "$RUNS" <<'PY'
import re, statistics, sys
from pathlib import Path
runs = Path(sys.argv[1])
def val(log):
    return float(re.search(r"val/loss ([0-9.]+)", (runs / log).read_text()).group(1))
print("| trained | seed | val loss, plain eval | val loss, doc-masked eval | step ms (median of the logged) |")
print("|---|---|---|---|---|")  # step times mean something only on an otherwise idle machine
rows = {}
for doc in ("False", "True"):
    for seed in (1, 2):
        name = f"doc{doc}_s{seed}"
        plain, masked = val(f"{name}_evalFalse.log"), val(f"{name}_evalTrue.log")
        ms = [float(m) for m in re.findall(r"time ([0-9.]+)ms", (runs / f"{name}.log").read_text())]
        rows.setdefault(doc, []).append((plain, masked))
        label = "with doc_mask" if doc == "True" else "plain packed"
        print(f"| {label} | {seed} | {plain:.4f} | {masked:.4f} | {statistics.median(ms):.0f} |")
for doc, r in rows.items():
    label = "with doc_mask" if doc == "True" else "plain packed"
    print(f"mean {label}: plain eval {statistics.mean(p for p, _ in r):.4f}, doc-masked eval "
          f"{statistics.mean(m for _, m in r):.4f}")
PY

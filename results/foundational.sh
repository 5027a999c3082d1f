#!/usr/bin/env bash
# Reproduce results/foundational.md from scratch: prepare WikiText-2 raw (train = wiki.valid, held-out = wiki.test)
# into /tmp/wt2, train the three small encoders and the LLaMA / GPT pair on one CPU thread each, print the tables.
# Usage: bash results/foundational.sh [runs_dir]   (about 35 minutes of one thread on the shared 2-core machine)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-/tmp/foundational}
RAW=../shared/data/wikitext/wikitext-2-raw
export TIKTOKEN_CACHE_DIR=${TIKTOKEN_CACHE_DIR:-$(cd .. && pwd)/shared/tiktoken_cache}
export OMP_NUM_THREADS=1
mkdir -p "$RUNS"
python data/wikitext103/prepare.py --train $RAW/wiki.valid.raw --val $RAW/wiki.test.raw --out_dir /tmp/wt2 \
    > "$RUNS/prepare.log" 2>&1
for v in ${VARIANTS:-bert albert deberta llama gpt}; do
    echo "training $v ..." >&2
    python train.py config/wikitext2_${v}_cpu.py --data_dir=/tmp/wt2 --out_dir="$RUNS/$v" --overwrite=True \
        > "$RUNS/$v.log" 2>&1
done
python results/foundational_table.py "$RUNS"

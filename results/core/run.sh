#!/usr/bin/env bash
# Reproduce results/core/report.md's numbers: the CPU recipe on tiny Shakespeare (val loss, wall time), the baseline bench
# at 6L/384d/block 256/batch 12 (MFU eager and compiled, cached vs uncached generation), and one bench over every
# registered variant at a shared small shape. Uses every core (no OMP_NUM_THREADS cap) and wants a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
SHARED=${SHARED:-../shared}
OUT=${OUT:-/tmp/core_results}
mkdir -p "$OUT"

# 1. tiny Shakespeare, character level: data, then the CPU recipe (4L/4H/128, block 64, batch 12, 2000 iters)
python data/shakespeare_char/prepare.py --source "$SHARED/data/shakespeare/input.txt" --out_dir "$OUT/shakespeare_char"
start=$(date +%s)
python train.py config/train_shakespeare_char_cpu.py --data_dir="$OUT/shakespeare_char" --out_dir="$OUT/shakespeare" \
  --overwrite=True > "$OUT/shakespeare.log"
echo "shakespeare CPU recipe: $(grep 'step 2000' "$OUT/shakespeare.log"), wall $(( $(date +%s) - start )) s"

# 2. the baseline bench: MFU against the measured fp32 matmul peak, eager and torch.compile'd, and generation
python bench.py --modes=eager,compile --n_layer=6 --n_head=6 --n_embd=384 --block_size=256 --batch_size=12 \
  --vocab_size=65 --gen_tokens=250 --out_dir="$OUT/bench_core"

# 3. every registered variant at one shared small shape, interleaved repetitions
python bench.py --variants=all --n_layer=4 --n_head=4 --n_embd=128 --block_size=256 --batch_size=8 \
  --vocab_size=512 --gen_tokens=100 --out_dir="$OUT/bench_all"

# 4. where the step's time goes (explains the MFU) and batch-1 decoding cost per token
python results/core/core_profile.py

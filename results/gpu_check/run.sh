#!/usr/bin/env bash
# The GPU check: one script, one table, under 8 minutes on one GPU.
#   1. the CUDA-marked tests (tests/test_cuda.py: Flex routes, compiled Flex, bf16 autocast, fused AdamW, pinned
#      batches, TF32, train.py on CUDA);
#   2. nanoGPT's GPU Shakespeare recipe (config/train_shakespeare_char.py: 6L/6H/384, block 256, batch 64, dropout 0.2,
#      lr 1e-3, 5000 iterations, compiled): best val loss and wall time against nanoGPT's 1.4697 in ~3 min (A100);
#   3. bench.py at GPT-2-small shape (12L/12H/768, block 1024, batch 12, bf16, compiled): ms/iteration, tokens/s and
#      MFU against a bf16 matmul peak measured on this GPU (nanoGPT: 135 ms/iteration on an A100);
#   4. FlexAttention vs causal SDPA, fwd+bwd at T=4096: the layer-wise schedules and adaptive spans 128/512, ideal
#      against measured speedup.
# Without CUDA it runs what it can: the CUDA tests are collected and skipped, and steps 2-4 run as tiny CPU plumbing
# runs of the same commands and parsers (their numbers mean nothing); it says which steps need CUDA, and exits 0.
# Every step has a time limit and a failed step becomes a row, never a hang. Exit status: 1 if a step failed or timed
# out, else 0.
#   bash results/gpu_check/run.sh            (outputs under out-gpu-check/, or GPU_CHECK_OUT)
set -u -o pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python}
OUT=${GPU_CHECK_OUT:-out-gpu-check}
ROWS="$OUT/rows.jsonl"
HELP="$PY results/gpu_check/gpu_check.py"
# time limits in seconds (sum 465, plus a few seconds of setup: the whole script stays under 8 minutes)
T_TESTS=${GPU_CHECK_TESTS_S:-140}
T_SHAKESPEARE=${GPU_CHECK_SHAKESPEARE_S:-185}
T_BENCH=${GPU_CHECK_BENCH_S:-70}
T_FLEX=${GPU_CHECK_FLEX_S:-70}
T_PLUMBING=${GPU_CHECK_PLUMBING_S:-90}  # each tiny CPU run without CUDA

mkdir -p "$OUT" || exit 1
rm -f "$ROWS"
trap 'echo "interrupted" >&2; exit 130' INT TERM

now() { date +%s%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", (b - a) / 1e9 }'; }
failure() { case $1 in 124|137) echo "TIMEOUT";; *) echo "FAILED (exit $1)";; esac; }
# run LIMIT LOG CMD...: the command under a time limit (SIGTERM, then SIGKILL 10 s later), output to LOG; prints rc
limited() {
    local limit=$1 log=$2
    shift 2
    timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1 </dev/null
    echo $?
}

if $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    CUDA=1
else
    CUDA=0
fi
$HELP env "$ROWS" || echo "machine row failed" >&2
echo "== gpu_check: CUDA=$CUDA, outputs in $OUT" >&2

# 1. CUDA-marked tests -------------------------------------------------------------------------------------------
echo "== 1/4 CUDA-marked tests (limit ${T_TESTS}s)" >&2
t0=$(now)
rc=$(limited "$T_TESTS" "$OUT/tests.log" $PY -m pytest -m cuda tests/test_cuda.py -v -rs)
$HELP tests "$ROWS" "$OUT/tests.log" "$rc" "$(since "$t0")"

# 2. Shakespeare char, nanoGPT's GPU recipe ----------------------------------------------------------------------
echo "== 2/4 Shakespeare char (limit ${T_SHAKESPEARE}s)" >&2
DATA="$OUT/shakespeare_char"
SOURCE=""
for candidate in "${SHAKESPEARE_TXT:-}" data/shakespeare_char/input.txt ../shared/data/shakespeare/input.txt \
                 shared/data/shakespeare/input.txt; do
    if [ -n "$candidate" ] && [ -f "$candidate" ]; then SOURCE=$candidate; break; fi
done
if [ -f "$DATA/meta.json" ]; then
    prep=0
elif [ -n "$SOURCE" ]; then
    prep=$(limited 120 "$OUT/prepare.log" $PY data/shakespeare_char/prepare.py --source "$SOURCE" --out_dir "$DATA")
else  # no local copy: prepare.py downloads input.txt
    prep=$(limited 120 "$OUT/prepare.log" $PY data/shakespeare_char/prepare.py --out_dir "$DATA")
fi
RUN="$OUT/shakespeare"
rm -rf "$RUN"
if [ "$prep" != 0 ]; then
    $HELP skip "$ROWS" "Shakespeare char, nanoGPT GPU recipe" \
        "$(failure "$prep"): data preparation (see $OUT/prepare.log)"
elif [ "$CUDA" = 1 ]; then
    t0=$(now)
    rc=$(limited "$T_SHAKESPEARE" "$OUT/shakespeare.log" $PY train.py config/train_shakespeare_char.py \
        --data_dir="$DATA" --out_dir="$RUN" --device=cuda)
    $HELP shakespeare "$ROWS" "$RUN" "$rc" "$(since "$t0")"
else
    $HELP skip "$ROWS" "Shakespeare char, nanoGPT GPU recipe (5000 iterations, compiled)" "skipped: needs CUDA"
    t0=$(now)
    rc=$(limited "$T_PLUMBING" "$OUT/shakespeare.log" $PY train.py config/train_shakespeare_char.py --data_dir="$DATA" \
        --out_dir="$RUN" --device=cpu --compile=False --n_layer=1 --n_head=2 --n_embd=32 --block_size=32 \
        --batch_size=4 --max_iters=10 --lr_decay_iters=10 --warmup_iters=2 --eval_interval=5 --eval_iters=2)
    $HELP shakespeare "$ROWS" "$RUN" "$rc" "$(since "$t0")" --plumbing
fi

# 3. bench at GPT-2-small shape ----------------------------------------------------------------------------------
echo "== 3/4 bench (limit ${T_BENCH}s)" >&2
BENCH="$OUT/bench"
rm -rf "$BENCH"
t0=$(now)
if [ "$CUDA" = 1 ]; then
    rc=$(limited "$T_BENCH" "$OUT/bench.log" $PY bench.py --variants=gpt --modes=compile --device=cuda \
        --dtype=bfloat16 --n_layer=12 --n_head=12 --n_embd=768 --block_size=1024 --vocab_size=50304 \
        --batch_size=12 --reps=10 --warmup=3 --latency_reps=3 --gen_tokens=0 --out_dir="$BENCH")
    $HELP bench "$ROWS" "$BENCH/bench.json" "$rc" "$(since "$t0")"
else
    $HELP skip "$ROWS" "bench, GPT-2 small (bf16, compiled)" "skipped: needs CUDA"
    rc=$(limited "$T_PLUMBING" "$OUT/bench.log" $PY bench.py --variants=gpt --modes=eager --device=cpu --dtype=float32 \
        --n_layer=1 --n_head=2 --n_embd=32 --block_size=64 --batch_size=2 --reps=2 --warmup=1 --latency_reps=2 \
        --gen_tokens=0 --out_dir="$BENCH")
    $HELP bench "$ROWS" "$BENCH/bench.json" "$rc" "$(since "$t0")" --plumbing
fi

# 4. FlexAttention vs causal SDPA ---------------------------------------------------------------------------------
echo "== 4/4 FlexAttention vs causal SDPA (limit ${T_FLEX}s)" >&2
t0=$(now)
if [ "$CUDA" = 1 ]; then
    rc=$(limited "$T_FLEX" "$OUT/flex.log" $HELP flex "$ROWS" --T 4096 --batch 8 --reps 20)
else
    $HELP skip "$ROWS" "Flex vs causal SDPA at T=4096 (fwd+bwd, bf16)" "skipped: needs CUDA (Flex has no CPU backward)"
    rc=$(limited "$T_PLUMBING" "$OUT/flex.log" $HELP flex "$ROWS" --T 512 --batch 1 --reps 1 --warmup 0)
fi
if [ "$rc" != 0 ]; then
    $HELP skip "$ROWS" "Flex vs causal SDPA" "$(failure "$rc") after $(since "$t0") s (see $OUT/flex.log)"
fi

# the table ------------------------------------------------------------------------------------------------------
echo
$HELP table "$ROWS" | tee "$OUT/table.md"
status=$?
echo
echo "logs and outputs: $OUT/ (table.md, tests.log, shakespeare.log, bench.log, flex.log)"
exit $status

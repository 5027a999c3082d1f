#!/usr/bin/env bash
# Reproduces results/adaptive_span/report.md from scratch: byte-level data from WikiText-2 raw (valid + test), the three small
# CPU twins at the same iterations, then the attention benchmark at block 1024. Everything runs on 1 thread.
# usage: results/adaptive_span/run.sh [SHARED_DATA_DIR]   (default ../shared/data beside the checkout)
set -euo pipefail
cd "$(dirname "$0")/../.."
SHARED=${1:-../shared/data}
WORK=${WORK:-/tmp/adaptive_span_results}
export OMP_NUM_THREADS=1
mkdir -p "$WORK"

# 1. data: WikiText-2 raw valid + test joined (2.4 MB) through the enwik8 (byte) prepare path, 90/5/5 split
cat "$SHARED/wikitext/wikitext-2-raw/wiki.valid.raw" "$SHARED/wikitext/wikitext-2-raw/wiki.test.raw" > "$WORK/wt2.raw"
python data/enwik8/prepare.py --source "$WORK/wt2.raw" --out_dir "$WORK/enwik8_wt2"

# 2. the three CPU twins, same data, seed and iterations (about 4-8 minutes each on 1 thread)
for v in baseline span_only span_periodic; do
  python train.py "config/enwik8_cpu_$v.py" --data_dir="$WORK/enwik8_wt2" --out_dir="$WORK/run_$v" --overwrite=True \
    > "$WORK/run_$v.log" 2>&1
done
python - "$WORK" <<'EOF'
import json, statistics, sys
work = sys.argv[1]
print("| config | iters | val bpc | final mean span | attn FLOP fraction, analytic | attn FLOP fraction, executed | tokens/s (1 thread) |")
print("|---|---|---|---|---|---|---|")
for v in ("baseline", "span_only", "span_periodic"):
    recs = [json.loads(l) for l in open(f"{work}/run_{v}/metrics.jsonl")]
    ev = [r for r in recs if r["kind"] == "eval"][-1]
    tps = statistics.median(r["tokens_per_s"] for r in recs if r["kind"] == "train" and r["iter"] >= 5)
    span = ev.get("model/span_mean")
    print(f"| enwik8_cpu_{v} | {ev['iter']} | {ev['val/bpc']:.4f} | {'-' if span is None else f'{span:.1f}'} | "
          f"{ev.get('model/attn_flop_fraction', 1.0):.3f} | {ev.get('model/attn_flop_fraction_executed', 1.0):.3f} | "
          f"{tps:,.0f} |")
EOF

# 2b. bpc of each final checkpoint over the whole val split (non-overlapping block_size windows)
python - "$WORK" <<'EOF'
import math, sys, numpy as np, torch, torch.nn.functional as F
import variants
from infra import checkpoint
work = sys.argv[1]
for v in ("baseline", "span_only", "span_periodic"):
    model = checkpoint.build_model(checkpoint.load(f"{work}/run_{v}/ckpt.pt"), variants.get).eval()
    T = model.config.block_size
    data = torch.from_numpy(np.fromfile(f"{work}/enwik8_wt2/val.bin", dtype=np.uint8).astype(np.int64))
    n = (len(data) - 1) // T
    x, y = data[:n * T].view(n, T), data[1:n * T + 1].view(n, T)
    total = 0.0
    with torch.no_grad():
        for i in range(0, n, 16):
            logits = model(x[i:i + 16])
            total += F.cross_entropy(logits.reshape(-1, logits.size(-1)), y[i:i + 16].reshape(-1), reduction="sum").item()
    print(f"enwik8_cpu_{v}: whole-val bpc {total / (n * T) / math.log(2):.4f} over {n * T:,} bytes")
EOF

# 3. bench.py: one attention layer (QKV + kernel + output projection), forward+backward, block 1024, spans 32/128/512
python bench.py --variants=gpt,config/bench/adaptive_span32.py,config/bench/adaptive_span128.py,config/bench/adaptive_span512.py,config/bench/adaptive_span_periodic128.py \
  --component=attention --block_size=1024 --seq_lens=1024 --batch_size=4 --reps=10 --out_dir="$WORK/bench_attention"
cat "$WORK/bench_attention/bench.md"
python bench.py --variants=gpt,config/bench/adaptive_span32.py,config/bench/adaptive_span_periodic128.py --component=model \
  --block_size=256 --seq_lens=256 --batch_size=4 --reps=3 --gen_tokens=100 --out_dir="$WORK/bench_model"
cat "$WORK/bench_model/bench.md"

# 4. the attention kernel alone (no projections): dense causal SDPA vs the span layer's mask on the blocked path
python - <<'EOF'
import statistics, time, torch, torch.nn.functional as F
from adaptive_attention_span import AdaptiveSpanAttention, AdaptiveSpanConfig
from attention import sdpa_attention
torch.manual_seed(0)
B, H, T, hd = 4, 6, 1024, 64
q, k, v = (torch.randn(B, H, T, hd, requires_grad=True) for _ in range(3))
def timed(fn, reps=7):
    fn(); ts = []
    for _ in range(reps):
        t = time.perf_counter(); fn(); ts.append(time.perf_counter() - t)
    return statistics.median(ts)
def kernel(attn):
    def run():
        sdpa_attention(q, k, v, attn.mask(T, T, 0)).sum().backward()
    return run
dense = timed(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward())
print(f"kernel only, B={B} H={H} T={T} head_dim={hd}, forward+backward, 1 thread")
print("| kernel | span z | block | reach | executed keys / causal | fwd+bwd ms | speedup vs causal SDPA |")
print("|---|---|---|---|---|---|---|")
print(f"| causal SDPA (flash) | - | - | - | 1.000 | {dense * 1e3:.0f} | 1.00 |")
for z in (32, 128, 512):
    for blk in (32, 64, 128):
        cfg = AdaptiveSpanConfig(n_head=H, n_embd=H * hd, block_size=T, span_init=float(z), span_block=blk)
        attn = AdaptiveSpanAttention(cfg, 0)
        t = timed(kernel(attn))
        frac = attn.executed_entries(T) / (T * (T + 1) / 2)
        print(f"| span, blocked SDPA | {z} | {blk} | {attn.reach()} | {frac:.3f} | {t * 1e3:.0f} | {dense / t:.2f} |")
EOF

# 5. greedy generation, cached, 100 tokens from one token: gpt vs span 32 (same 6L/6H/384 shape, block 256)
python - <<'EOF'
import time, torch
from model import GPT, GPTConfig
from adaptive_attention_span import AdaptiveSpanGPT, AdaptiveSpanConfig
shape = dict(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=65, bias=False)
torch.manual_seed(0); gpt = GPT(GPTConfig(**shape)).eval()
torch.manual_seed(0); span = AdaptiveSpanGPT(AdaptiveSpanConfig(**shape, span_init=32.0, block_pos_emb=False)).eval()
idx = torch.zeros(1, 1, dtype=torch.long)
for rnd in range(2):
    for name, m in (("gpt", gpt), ("span32", span)):
        t = time.perf_counter(); m.generate(idx, 100, temperature=0)
        print(f"round {rnd}: {name} cached greedy 100 tokens {time.perf_counter() - t:.2f} s")
EOF

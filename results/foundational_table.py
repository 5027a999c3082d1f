"""Print the tables of results/foundational.md from the run directories written by results/foundational.sh."""
import json
import re
import statistics
import sys
from pathlib import Path

runs = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/foundational")


def load(name):
    path = runs / name / "metrics.jsonl"
    if not path.exists():
        return None
    records = [json.loads(line) for line in path.read_text().splitlines()]
    evals = [r for r in records if r["kind"] == "eval"]
    train = [r for r in records if r["kind"] == "train"][2:]  # the first logged iterations include warm-up
    cfg = json.loads((runs / name / "config.json").read_text())
    params = re.search(r"([\d.]+)M parameters", (runs / f"{name}.log").read_text())
    return {"final": evals[-1], "cfg": cfg, "params": float(params.group(1)) if params else float("nan"),
            "tps": statistics.median(r["tokens_per_s"] for r in train) if train else float("nan"),
            "ms": statistics.median(r["dt_ms"] for r in train) if train else float("nan")}


print("| encoder | params (M) | iters | val MLM loss | val MLM ppl | val MLM acc | val NSP/SOP acc | tokens/s (1 thread) |")
print("|---|---|---|---|---|---|---|---|")
for name in ("bert", "albert", "deberta"):
    r = load(name)
    if r is None:
        continue
    f, c = r["final"], r["cfg"]
    pair = next((f"{f[k]:.3f} ({k.split('/')[1].split('_')[0].upper()})" for k in f if k.startswith("val/")
                 and k.endswith(("nsp_acc", "sop_acc"))), "- (MLM only)")
    print(f"| {name} | {r['params']:.2f} | {f['iter']} | {f['val/loss']:.3f} | {f['val/ppl']:.0f} | "
          f"{f['val/mlm_acc']:.3f} | {pair} | {r['tps']:,.0f} |")
print()
print("| LM | params (M) | iters | tokens seen | val loss | val ppl | tokens/s (1 thread) | ms/iter |")
print("|---|---|---|---|---|---|---|---|")
for name in ("gpt", "llama"):
    r = load(name)
    if r is None:
        continue
    f, c = r["final"], r["cfg"]
    tokens = f["iter"] * c["batch_size"] * c["block_size"] * c["gradient_accumulation_steps"]
    print(f"| {name} | {r['params']:.2f} | {f['iter']} | {tokens:,} | {f['val/loss']:.3f} | {f['val/ppl']:.0f} | "
          f"{r['tps']:,.0f} | {r['ms']:.0f} |")

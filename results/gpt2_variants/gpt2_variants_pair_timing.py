"""Time parallel's two pair implementations (sequential vs batched) on the block stack only (the LM head would hide
the difference): forward+backward of run_blocks, repetitions interleaved, median ms. Run with OMP_NUM_THREADS=1."""
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root
import variants  # noqa: E402

spec = variants.get("parallel")
shapes = [dict(n_layer=4, n_head=4, n_embd=128, B=8, T=128), dict(n_layer=2, n_head=16, n_embd=1024, B=1, T=256)]
print("| shape (L/H/C, batch x T) | bottleneck | sequential ms | batched ms | batched / sequential |")
print("|---|---|---|---|---|")
for s in shapes:
    for method in ("mean", "concat"):
        cfg = dict(n_layer=s["n_layer"], n_head=s["n_head"], n_embd=s["n_embd"], block_size=s["T"], vocab_size=64,
                   bottleneck_method=method)
        torch.manual_seed(0)
        model = spec.build(spec.config_class(**cfg))
        x = torch.randn(s["B"], s["T"], s["n_embd"], requires_grad=True)
        pos = torch.arange(s["T"])
        times = {"sequential": [], "batched": []}
        for rep in range(13):
            for impl in times:
                model.config.pair_impl = impl
                t = time.perf_counter()
                model.run_blocks(x, pos).square().mean().backward()
                if rep >= 3:
                    times[impl].append(time.perf_counter() - t)
        seq, bat = (statistics.median(times[k]) * 1e3 for k in ("sequential", "batched"))
        print(f"| {s['n_layer']}/{s['n_head']}/{s['n_embd']}, {s['B']}x{s['T']} | {method} | {seq:.1f} | {bat:.1f} "
              f"| {bat / seq:.2f} |")

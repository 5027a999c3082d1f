"""Where the core bench's training step goes (6L/6H/384, block 256, batch 12, fp32 CPU), to explain its MFU, and
what cached decoding costs per token. Run from the repo root on a quiet machine:
    python results/core/core_profile.py
Prints: the step's time by operator (torch.profiler over 3 steps); the throughput of the step's Linear matmuls at
their own shapes next to the 2048^3 square matmul; causal flash attention forward and forward+backward per layer;
exact vs tanh GELU on the MLP's activation; batch-1 cached decoding under no_grad vs inference_mode.
"""
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import variants  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402

B, T, C, H, L = 12, 256, 384, 6, 6


def median_ms(fn, reps=10, warmup=3):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


torch.manual_seed(0)
model = GPT(GPTConfig(n_layer=L, n_head=H, n_embd=C, block_size=T, vocab_size=65, bias=False))
x, y = torch.randint(0, 65, (B, T)), torch.randint(0, 65, (B, T))
objective = variants.get("gpt").objective
batch = objective.prepare(model.config, x, y)


def step():
    model.zero_grad(set_to_none=True)
    objective.step(model, batch)[1].backward()


for _ in range(3):
    step()
with profile(activities=[ProfilerActivity.CPU]) as prof:
    for _ in range(3):
        step()
events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
total = sum(e.self_cpu_time_total for e in events)
print(f"training step, 3 steps under torch.profiler: {total / 3e3:.0f} ms per step")
for e in events[:8]:
    print(f"  {e.key[:60]:60s} {100 * e.self_cpu_time_total / total:5.1f} %")

n = 2048
a, b = torch.randn(n, n), torch.randn(n, n)
peak = 2 * n ** 3 / median_ms(lambda: a @ b) * 1e3
print(f"\nsquare matmul 2048^3: {peak / 1e9:.0f} GFLOP/s")
print("the step's Linear shapes (M = batch x T rows), GFLOP/s: forward / input grad / weight grad")
for out_f, in_f in ((3 * C, C), (C, C), (4 * C, C), (C, 4 * C)):
    w, inp, g = torch.randn(out_f, in_f), torch.randn(B * T, in_f), torch.randn(B * T, out_f)
    flops = 2 * B * T * out_f * in_f
    rates = [flops / median_ms(f) * 1e3 / 1e9 for f in (lambda: inp @ w.t(), lambda: g @ w, lambda: g.t() @ inp)]
    print(f"  {out_f:4d} x {in_f:4d}: " + " / ".join(f"{r:.0f}" for r in rates))

q, k, v = (torch.randn(B, H, T, C // H, requires_grad=True) for _ in range(3))
grad_out = torch.randn(B, H, T, C // H)
with torch.no_grad():
    fwd = median_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))
both = median_ms(lambda: torch.autograd.grad(F.scaled_dot_product_attention(q, k, v, is_causal=True), (q, k, v),
                                              grad_out))
useful = 3 * 4 * (C // H) * H * B * T * (T + 1) / 2  # fwd+bwd FLOPs over the causal triangle
print(f"\ncausal flash attention per layer: forward {fwd:.1f} ms, forward+backward {both:.1f} ms "
      f"({useful / both * 1e3 / 1e9:.0f} GFLOP/s of causal work)")

h = torch.randn(B * T, 4 * C, requires_grad=True)
g = torch.randn_like(h)
for approx in ("none", "tanh"):
    f_ms = median_ms(lambda: F.gelu(h.detach(), approximate=approx))
    fb_ms = median_ms(lambda: torch.autograd.grad(F.gelu(h, approximate=approx), h, g))
    print(f"GELU ({approx}) on ({B * T}, {4 * C}): forward {f_ms:.1f} ms, forward+backward {fb_ms:.1f} ms")

model.eval()
prompt = torch.zeros(1, 1, dtype=torch.long)
decode = model.generate.__wrapped__  # generate() without its inference_mode decorator, to compare the two contexts
for ctx in (torch.no_grad, torch.inference_mode, torch.no_grad, torch.inference_mode):
    with ctx():
        ms = median_ms(lambda: decode(model, prompt, 250, temperature=0), reps=3, warmup=1)
    print(f"cached greedy decoding of 250 tokens under {ctx.__name__}: {ms:.0f} ms ({ms / 250:.2f} ms per token)")

"""Duo-predict attention over one interleaved sequence (L = 2N-1): the block-structured fast path vs SDPA with the
dense (L, L) pattern vs the dense reference; forward+backward, repetitions interleaved, median ms. Also the number of
(query, key) score entries each one evaluates. Run with OMP_NUM_THREADS=1 from the repo root."""
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root
from attention import AttnMask, dense_attention  # noqa: E402
from objectives import duo_allowed  # noqa: E402
from variants.duo_predict import duo_code_attention  # noqa: E402


@dataclass
class FixedPattern(AttnMask):
    """A precomputed (L, L) bool pattern, so the dense reference times attention and not building the pattern."""
    keep: torch.Tensor | None = None
    causal: bool = False

    def dense_allowed(self, Tq, Tk, device):
        return self.keep


H, hd, block = 4, 64, 128
print(f"B=1, H={H}, head_dim={hd}, duo_block={block}, fp32, {torch.get_num_threads()} thread(s)\n")
print("| N (L = 2N-1) | fast path ms | SDPA + dense mask ms | dense reference ms | score entries fast / dense |")
print("|---|---|---|---|---|")
for N in (128, 256, 512):
    L = 2 * N - 1
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, H, L, hd, requires_grad=True) for _ in range(3))
    allowed = duo_allowed(L, "code")
    fns = {"fast": lambda: duo_code_attention(q, k, v, block=block),
           "sdpa_mask": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=allowed),
           "dense": lambda: dense_attention(q, k, v, FixedPattern(keep=allowed))}
    ref = fns["dense"]()
    assert torch.allclose(fns["fast"](), ref, atol=1e-5)
    times = {name: [] for name in fns}
    for rep in range(8):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn().square().sum().backward()
            if rep >= 2:
                times[name].append(time.perf_counter() - t)
    ms = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    fast_entries = N * (N + 1) // 2 + sum((min(s + block, N - 1) - s) * (min(s + block, N - 1) + 1 + min(s + block, N - 1) - s)
                                         for s in range(0, N - 1, block))
    print(f"| {N} ({L}) | {ms['fast']:.1f} | {ms['sdpa_mask']:.1f} | {ms['dense']:.1f} | {fast_entries / L ** 2:.2f} |")

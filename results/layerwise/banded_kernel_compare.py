"""Single attention layer, fwd+bwd, T=4096, 12 heads of 64: attention.py's banded kernel next to the layer-wise file's
first banded kernel (read from git history, commit 06be342^), and causal SDPA. Run from the repo root:
    OMP_NUM_THREADS=1 python results/layerwise/banded_kernel_compare.py
"""
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from attention import AttnMask, band_block, banded_attention  # noqa: E402

source = subprocess.run(["git", "show", "06be342^:variants/layerwise_window.py"], capture_output=True, text=True,
                        check=True).stdout
old_src = source[source.index("def banded_attention("):source.index("def windowed_kernel(")]
scope = {"torch": torch, "F": F}
exec(old_src, scope)
old_banded = scope["banded_attention"]


def median_ms(fn, n=3):
    fn()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[n // 2] * 1e3


torch.manual_seed(0)
q, k, v = (torch.randn(1, 12, 4096, 64, requires_grad=True) for _ in range(3))
print(f"causal SDPA {median_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()):.0f} ms")
for w in (16, 128, 512):
    b = band_block(w)
    new = median_ms(lambda: banded_attention(q, k, v, AttnMask(window=w), w, b).sum().backward())
    old = median_ms(lambda: old_banded(q, k, v, w, b).sum().backward())
    print(f"w={w} (block {b}): attention.py banded {new:.0f} ms, first layer-wise kernel {old:.0f} ms")

"""ALiBi: Attention with Linear Biases (Press et al., 2022, "Train Short, Test Long").

No position embedding at all. Instead every head h adds a fixed penalty proportional to how far back a key lies:

    score(i, j) = q_i . k_j / sqrt(hd) - m_h * (i - j)        for j <= i (causal)

The slopes m_h are a geometric sequence, m_h = 2^(-8 (h+1) / n) for n heads (n a power of two: 1/2, 1/4, ..., 1/256
for 8 heads), so some heads look far back and others mostly at the last few tokens. For other n the paper takes the n'
slopes of the closest smaller power of two and adds every other slope of 2n' (see `alibi_slopes`). Nothing is learned
and no parameter depends on the context length: a checkpoint trained at block_size 256 loads unchanged into a model
built with a larger block_size, which is the paper's "test long" setting.

How it plugs in: the penalty is a function of the distance d = i - j only, which is exactly what
attention.AttnMask.distance_bias describes (an (H, D) table indexed by distance). So this file overrides one hook,
CausalSelfAttention.mask, and attention.py's kernels do the rest: the dense reference gathers the table into the
score matrix, SDPA on CPU gets it as an explicit float mask, FlexAttention on CUDA adds it in a score_mod (no T x T
mask is built), and a KV cache needs nothing special because q_offset counts the cached keys, so every distance
stays absolute. The table covers every distance present (D = q_offset + Tq), so the
mask limits no reach and the banded kernel never applies: ALiBi attends the full causal triangle.
"""
import math

import torch

from attention import AttnMask
from model import GPT, CausalSelfAttention
from variants.registry import register


def alibi_slopes(n_head):
    """(n_head,) slopes of the paper: 2^(-8 (h+1) / n) for n a power of two; otherwise the slopes of the closest
    smaller power of two p, followed by slopes 0, 2, 4, ... of the sequence for 2p heads (n - p of them)."""
    p = 2 ** math.floor(math.log2(n_head))
    slopes = [2 ** (-8 * (h + 1) / p) for h in range(p)]
    slopes += [2 ** (-8 * (h + 1) / (2 * p)) for h in range(0, 2 * (n_head - p), 2)]
    return torch.tensor(slopes)


class AlibiAttention(CausalSelfAttention):
    def __init__(self, config, layer_idx):
        super().__init__(config, layer_idx)
        # (H, block_size) bias -m_h * d for d = 0..block_size-1: a pure function of the config, so a buffer that
        # follows .to(device/dtype) but is never saved
        distance = torch.arange(config.block_size, dtype=torch.float32)
        self.register_buffer("alibi", -alibi_slopes(self.n_head)[:, None] * distance, persistent=False)

    def mask(self, Tq, Tk, q_offset):
        # the farthest pair is the last query (position q_offset + Tq - 1) and key 0
        D = min(self.block_size, q_offset + Tq)
        return AttnMask(causal=True, q_offset=q_offset, distance_bias=self.alibi[:, :D])


@register("alibi")
class AlibiGPT(GPT):
    Attention = AlibiAttention
    position_embedding = False  # positions enter only through the attention bias

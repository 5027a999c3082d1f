"""Rotating-head GPT-2 (docs/gpt2_variants.md §4): rotary position rotations with per-layer, PER-HEAD frequencies on q and k of every
layer, on top of the learned absolute position embeddings (wpe is kept).

Pairs are interleaved (2i, 2i+1); the angle of pair i of head h at position p is p * f~[h, i]:
    lr: f = nn.Parameter(randn(H, hd/2)), learned (and weight-decayed, docs/gpt2_variants.md §4);
    gp: f[h, i] = s_h * base^(-2i/hd) with s_h = 10^(-h/(H-1)) (torch.logspace(0, -1, H)): head 0 gets the standard
        RoPE spectrum, the last head the spectrum slowed down ten times. Fixed.
    rope_freq_norm: f~ = LayerNorm_{hd/2}(f_h) per head (affine shared by the heads), else f~ = f.
Positions are absolute, so cached generation rotates each new token by its true position.
"""
from dataclasses import dataclass

import torch
import torch.nn as nn

from model import GPT, CausalSelfAttention, GPTConfig
from variants.registry import register
from variants.rotary import rope_cos_sin, rope_frequencies, rotate_interleaved


@dataclass
class RotatingHeadConfig(GPTConfig):
    rotatinghead: str = "lr"  # lr (learned frequencies) | gp (fixed geometric progression across heads)
    rope_freq_norm: bool = False  # LayerNorm over each head's frequency vector
    rope_base: float = 10000.0  # base of the RoPE spectrum (gp frequencies)

    def validate(self):
        super().validate()
        if self.rotatinghead not in ("lr", "gp"):
            raise ValueError(f"rotatinghead must be lr or gp, got {self.rotatinghead!r}")
        if (self.n_embd // self.n_head) % 2:
            raise ValueError(f"rotary needs an even head_dim, got {self.n_embd // self.n_head}")
        if self.rope_base <= 1:
            raise ValueError(f"rope_base must be > 1, got {self.rope_base}")


def gp_frequencies(n_head, head_dim, base=10000.0):
    """(H, hd/2) fixed frequencies: the RoPE spectrum scaled by 10^(-h/(H-1)) for head h."""
    scales = torch.logspace(0, -1, n_head) if n_head > 1 else torch.ones(1)
    return scales[:, None] * rope_frequencies(head_dim, base)[None, :]


class RotatingHeadAttention(CausalSelfAttention):
    _tables = {}  # (H, hd, base, block_size, device) -> (cos, sin) of shape (H, block_size, hd/2), gp only

    def __init__(self, config, layer_idx):
        super().__init__(config, layer_idx)
        self.learned = config.rotatinghead == "lr"
        if self.learned:
            self.freqs = nn.Parameter(torch.randn(self.n_head, self.head_dim // 2))
        else:  # a buffer so it follows .to(device); not saved, it is a pure function of the config
            self.register_buffer("freqs", gp_frequencies(self.n_head, self.head_dim, config.rope_base),
                                 persistent=False)
        self.freq_norm = nn.LayerNorm(self.head_dim // 2) if config.rope_freq_norm else None
        self.table_key = (self.n_head, self.head_dim, config.rope_base, config.block_size)

    def frequencies(self):
        return self.freqs if self.freq_norm is None else self.freq_norm(self.freqs)

    def cos_sin(self, pos):
        if self.learned or self.freq_norm is not None or pos.dim() > 1:  # learned ones move every step
            return rope_cos_sin(self.frequencies(), pos)
        key = (*self.table_key, str(pos.device))
        if key not in self._tables:  # fixed frequencies are the same in every layer: one table serves them all
            self._tables[key] = rope_cos_sin(self.freqs, torch.arange(self.table_key[-1], device=pos.device))
        cos, sin = self._tables[key]
        return cos[:, pos], sin[:, pos]

    def rotate(self, q, k, pos):
        cos, sin = self.cos_sin(pos)  # (H, T, hd/2), broadcast over the batch
        return rotate_interleaved(q, cos, sin), rotate_interleaved(k, cos, sin)


@register("rotating_head")
class RotatingHeadGPT(GPT):
    config_class = RotatingHeadConfig
    Attention = RotatingHeadAttention

    def log_metrics(self):
        if self.config.rotatinghead != "lr":
            return {}
        with torch.no_grad():
            f = torch.stack([b.attn.frequencies() for b in self.transformer.h])
        return {"rope_freq_abs_mean": f.abs().mean().item()}

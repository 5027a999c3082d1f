"""Rotary position helpers shared by the variants that rotate queries and keys (LLaMA, rotating-head GPT-2).
Pairs are interleaved, (x[2i], x[2i+1]), GPT-J / original-LLaMA style."""
import torch


def rope_frequencies(head_dim, base=10000.0):
    """The standard RoPE spectrum base^(-2i/d), i = 0..d/2-1."""
    return base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)


def rope_cos_sin(freqs, pos):
    """cos, sin of the angles pos * freq: freqs (..., d/2) and pos (T,) give (..., T, d/2); positions per row,
    pos (B, T), give (B, ..., T, d/2)."""
    if pos.dim() == 2:
        angles = pos.to(freqs.dtype)[:, None, :, None] * freqs[..., None, :]
    else:
        angles = pos.to(freqs.dtype)[:, None] * freqs[..., None, :]
    return angles.cos(), angles.sin()


def rotate_interleaved(x, cos, sin):
    """Rotate each pair (x[..., 2i], x[..., 2i+1]) of x (..., T, d) by the angle whose cos/sin are (..., T, d/2)."""
    x1, x2 = x[..., 0::2].float(), x[..., 1::2].float()
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)
    return out.to(x.dtype)

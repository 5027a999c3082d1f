"""Drift-diffusion GPT-2 (docs/gpt2_variants.md §1): a learned drift and learned Gaussian noise on every head's attention output.

Per layer, per head, per channel (no per-token parameters), acting on the context vectors a = softmax(qk/sqrt(d)) v
of shape (B, H, T, hd), after the heads are combined with V and before they are merged and projected by c_proj:

    drift     a <- a + sigmoid(theta) * (a - b)     (baseline_each_head; else a <- a + sigmoid(theta) * a)
    diffusion a <- a + sigma * eps,  eps ~ N(0, I)  (training only; the identity in eval)

theta ~ N(0, 1), b ~ 1e-3 N(0, 1), sigma ~ N(0, 1) at init (docs/gpt2_variants.md §7). The op runs after the attention kernel, so
every attention fast path still applies.
"""
from dataclasses import dataclass

import torch
import torch.nn as nn

from model import GPT, CausalSelfAttention, GPTConfig
from variants.registry import register


@dataclass
class DriftDiffusionConfig(GPTConfig):
    apply_drift: bool = True  # learned gated drift on every head's output
    apply_diffusion: bool = True  # learned Gaussian noise on every head's output (training only)
    baseline_each_head: bool = True  # drift towards a learned per-head baseline (only used with apply_drift)

    def validate(self):
        super().validate()
        if not (self.apply_drift or self.apply_diffusion):
            raise ValueError("drift_diffusion needs apply_drift or apply_diffusion (with neither it is variant 'gpt')")


class DriftDiffusionAttention(CausalSelfAttention):
    def __init__(self, config, layer_idx):
        super().__init__(config, layer_idx)
        shape = (self.n_head, self.head_dim)
        self.drift_param = nn.Parameter(torch.randn(shape)) if config.apply_drift else None
        self.baseline = (nn.Parameter(torch.randn(shape) * 1e-3)
                         if config.apply_drift and config.baseline_each_head else None)
        self.diffusion_param = nn.Parameter(torch.randn(shape)) if config.apply_diffusion else None

    def attend(self, q, k, v, mask):
        y = super().attend(q, k, v, mask)
        # parameters are (H, hd); y is (B, H, T, hd): broadcast over batch and time
        if self.drift_param is not None:
            gate = torch.sigmoid(self.drift_param)[:, None, :]
            y = y + gate * (y - self.baseline[:, None, :] if self.baseline is not None else y)
        if self.diffusion_param is not None and self.training:
            y = y + self.diffusion_param[:, None, :] * torch.randn_like(y)
        return y


@register("drift_diffusion")
class DriftDiffusionGPT(GPT):
    config_class = DriftDiffusionConfig
    Attention = DriftDiffusionAttention

    def log_metrics(self):
        attns = [b.attn for b in self.transformer.h]
        out = {}
        with torch.no_grad():
            if self.config.apply_drift:
                out["drift_gate_mean"] = torch.stack([torch.sigmoid(a.drift_param).mean() for a in attns]).mean().item()
            if self.config.apply_diffusion:
                out["diffusion_std_mean"] = torch.stack([a.diffusion_param.abs().mean() for a in attns]).mean().item()
        return out

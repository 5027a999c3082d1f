"""Parallel GPT-2 (docs/gpt2_variants.md §2): the n_layer blocks run in adjacent pairs (2k, 2k+1) on the same input, and the pair's
two outputs are merged before the next pair, so the depth is halved and the width of each stage doubled.

    x_L = Block_2k(x), x_R = Block_2k+1(x)      (complete pre-LN blocks, each with its own residual)
    mean:   x <- (x_L + x_R) / 2                 (default)
    concat: x <- W [x_L ; x_R] + b               (ONE Linear(2C, C) shared by every stage, docs/gpt2_variants.md §2)
    add:    x <- x_L + x_R

pair_impl: "sequential" runs the two blocks one after the other; "batched" runs a pair as one computation (weights
stacked on a leading pair axis, bmm for every Linear, the two attentions as one SDPA call on a doubled batch).
Both compute the same function from the same parameters; results/gpt2_variants/report.md says which is faster where.
With KV caches (generation) the pair always runs sequentially; caches are per block, left then right.
"""
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

from model import GPT, GPTConfig
from variants.registry import register


@dataclass
class ParallelConfig(GPTConfig):
    bottleneck_method: str = "mean"  # mean | concat | add
    pair_impl: str = "sequential"  # sequential | batched (same maths; sequential measured faster on CPU)

    def validate(self):
        super().validate()
        if self.n_layer % 2:
            raise ValueError(f"parallel runs blocks in pairs, so n_layer must be even, got {self.n_layer}")
        if self.bottleneck_method not in ("mean", "concat", "add"):
            raise ValueError(f"bottleneck_method must be mean, concat or add, got {self.bottleneck_method!r}")
        if self.pair_impl not in ("sequential", "batched"):
            raise ValueError(f"pair_impl must be sequential or batched, got {self.pair_impl!r}")


def _stacked(modules, name):
    """The parameter `name` of each module stacked on a new leading axis (None if the modules have none)."""
    params = [getattr(m, name) for m in modules]
    return None if params[0] is None else torch.stack(params)


def _pair_linear(x, linears):
    """Two Linears applied to their own inputs x (2, N, in) as one bmm: (2, N, out)."""
    w = _stacked(linears, "weight").transpose(1, 2)  # (2, in, out)
    b = _stacked(linears, "bias")
    return torch.bmm(x, w) if b is None else torch.baddbmm(b[:, None, :], x, w)


def _pair_layernorm(x, norms):
    """Two LayerNorms on (2, N, C): shared statistics code, per-block affine."""
    y = F.layer_norm(x, x.shape[-1:], eps=norms[0].eps)
    y = y * _stacked(norms, "weight")[:, None, :]
    b = _stacked(norms, "bias")
    return y if b is None else y + b[:, None, :]


def run_pair_batched(blocks, x, pos):
    """Both blocks of a pair on the same input x (B, T, C), as one computation; returns (x_L, x_R)."""
    B, T, C = x.shape
    left, right = blocks
    attns, mlps = (left.attn, right.attn), (left.mlp, right.mlp)
    a = attns[0]
    h = _pair_layernorm(x.reshape(1, B * T, C).expand(2, -1, -1), (left.ln_1, right.ln_1))
    q, k, v = _pair_linear(h, [m.c_attn for m in attns]).split(C, dim=2)
    # (2, B*T, C) -> (2B, H, T, hd): the pair axis joins the batch, so one SDPA call serves both blocks
    q, k, v = (t.reshape(2 * B, T, a.n_head, a.head_dim).transpose(1, 2) for t in (q, k, v))
    q, k = a.rotate(q, k, pos)
    y = a.attend(q, k, v, a.mask(T, T, 0)).transpose(1, 2).reshape(2, B * T, C)
    x2 = x.reshape(1, B * T, C) + a.resid_dropout(_pair_linear(y, [m.c_proj for m in attns]))
    h = mlps[0].act(_pair_linear(_pair_layernorm(x2, (left.ln_2, right.ln_2)), [m.c_fc for m in mlps]))
    x2 = x2 + mlps[0].dropout(_pair_linear(h, [m.c_proj for m in mlps]))
    return x2[0].view(B, T, C), x2[1].view(B, T, C)


@register("parallel")
class ParallelGPT(GPT):
    config_class = ParallelConfig

    @property
    def calls_blocks(self):
        """Whether training runs every block through its forward, where activation checkpointing and FSDP hook in:
        the batched pairs compute with the blocks' weights directly."""
        return self.config.pair_impl != "batched"

    def __init__(self, config):
        super().__init__(config)
        if config.bottleneck_method == "concat":
            self.bottleneck = nn.Linear(2 * config.n_embd, config.n_embd, bias=config.bias)
            self._init_weights(self.bottleneck)  # N(0, 0.02), zero bias, as every GPT-2 Linear

    def merge(self, x_left, x_right):
        method = self.config.bottleneck_method
        if method == "mean":
            return (x_left + x_right) / 2
        if method == "add":
            return x_left + x_right
        return self.bottleneck(torch.cat((x_left, x_right), dim=-1))

    def run_blocks(self, x, pos, mask=None, caches=None):
        h = self.transformer.h
        for i in range(0, len(h), 2):
            if caches is None and mask is None and self.config.pair_impl == "batched":
                x_left, x_right = run_pair_batched((h[i], h[i + 1]), x, pos)
            else:
                x_left = h[i](x, pos, None if caches is None else caches[i], mask)
                x_right = h[i + 1](x, pos, None if caches is None else caches[i + 1], mask)
            x = self.merge(x_left, x_right)
        return x

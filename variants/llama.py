"""LLaMA-1 (Touvron et al. 2023), docs/foundational.md §6: pre-norm RMSNorm blocks, SwiGLU FFN, interleaved RoPE on q/k at every
layer (absolute positions, so cached decoding rotates each new token by its true position), no absolute position
embedding, untied output head, grouped-query attention (n_kv_head) whose KV cache stores only the n_kv_head heads."""
import math
from dataclasses import dataclass

import torch.nn as nn
import torch.nn.functional as F

from infra import hf_import
from model import GPT, CausalSelfAttention, GPTConfig
from variants.registry import register
from variants.rotary import rope_cos_sin, rope_frequencies, rotate_interleaved


@dataclass
class LlamaConfig(GPTConfig):
    bias: bool = False  # LLaMA has no biases anywhere
    n_kv_head: int = 0  # key/value heads for grouped-query attention; 0 = n_head (plain multi-head)
    ffn_hidden: int = 0  # SwiGLU width; 0 = multiple_of * ceil((8d/3) / multiple_of), 11008 for d = 4096
    multiple_of: int = 256  # the SwiGLU width is rounded up to a multiple of this
    norm_eps: float = 1e-5  # the paper's ModelArgs; the released checkpoints use 1e-6
    rope_theta: float = 10000.0  # RoPE base

    def validate(self):
        super().validate()
        if self.bias:
            raise ValueError("llama has no biases: bias must be False")
        kv = self.kv_heads()
        if kv < 1 or self.n_head % kv:
            raise ValueError(f"n_kv_head={self.n_kv_head} must divide n_head={self.n_head} (0 means n_head)")
        if (self.n_embd // self.n_head) % 2:
            raise ValueError(f"rotary needs an even head dim, got n_embd/n_head = {self.n_embd // self.n_head}")
        if self.ffn_hidden < 0 or self.multiple_of < 1 or self.norm_eps <= 0 or self.rope_theta <= 0:
            raise ValueError("ffn_hidden must be >= 0, multiple_of >= 1, norm_eps > 0 and rope_theta > 0")

    def kv_heads(self):
        return self.n_kv_head or self.n_head

    def hidden(self):
        m = self.multiple_of
        return self.ffn_hidden or m * math.ceil(8 * self.n_embd / 3 / m)


class RMSNorm(nn.RMSNorm):
    def __init__(self, config):
        super().__init__(config.n_embd, eps=config.norm_eps)


class LlamaAttention(CausalSelfAttention):
    def __init__(self, config, layer_idx):
        super().__init__(config, layer_idx, n_kv_head=config.kv_heads())
        self.register_buffer("rope_freqs", rope_frequencies(self.head_dim, config.rope_theta), persistent=False)

    def rotate(self, q, k, pos):
        cos, sin = rope_cos_sin(self.rope_freqs, pos)
        return rotate_interleaved(q, cos, sin), rotate_interleaved(k, cos, sin)


class SwiGLU(nn.Module):
    """w2(SiLU(w1 x) * w3 x), no biases (Shazeer 2020; LLaMA's FeedForward)."""

    def __init__(self, config):
        super().__init__()
        h = config.hidden()
        self.w1 = nn.Linear(config.n_embd, h, bias=False)
        self.w3 = nn.Linear(config.n_embd, h, bias=False)
        self.w2 = nn.Linear(h, config.n_embd, bias=False)
        self.w2.residual_scaled_init = True
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


@register("llama")
class Llama(GPT):
    config_class = LlamaConfig
    Attention = LlamaAttention
    MLP = SwiGLU
    Norm = RMSNorm
    position_embedding = False  # positions enter only through RoPE
    tie_embeddings = False
    from_pretrained = classmethod(hf_import.llama)

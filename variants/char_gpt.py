"""The char-level GPT of Karpathy's "Let's build GPT" lecture (gpt.py), docs/foundational.md §1: causal heads with bias-free
key/query/value and 1/sqrt(head_size) scaling (the lecture's separate Head modules computed as one fused projection,
which is the same function), dropout on the attention weights, the projection and the FFN, pre-norm blocks, a ReLU FFN
of width 4d, learned positions, a final LayerNorm and an untied output Linear with bias, N(0, 0.02) init everywhere."""
from dataclasses import dataclass

import torch.nn as nn

from model import GPT, MLP, CausalSelfAttention, GPTConfig
from variants.registry import register


@dataclass
class CharGPTConfig(GPTConfig):
    block_size: int = 256
    vocab_size: int = 65
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    dropout: float = 0.2


class HeadAttention(CausalSelfAttention):
    qkv_bias = False  # the lecture's Head: key/query/value Linears without bias


class ReluMLP(MLP):
    def activation(self, config):
        return nn.ReLU()  # the lecture's FeedForward: Linear, ReLU, Linear, Dropout


@register("char_gpt")
class CharGPT(GPT):
    config_class = CharGPTConfig
    Attention = HeadAttention
    MLP = ReluMLP
    tie_embeddings = False  # its own output Linear, with bias
    scale_residual_init = False  # the lecture's init: N(0, 0.02) everywhere, zero biases

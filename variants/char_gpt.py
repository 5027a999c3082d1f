"""The char-level GPT of Karpathy's "Let's build GPT" lecture (gpt.py), SPEC §4.1, in its lecture form rather than the
seed's buggy copy: causal heads with bias-free key/query/value and 1/sqrt(head_size) scaling (the lecture's separate
Head modules are computed as one fused projection, which is the same function), dropout on the attention weights, the
projection and the FFN, pre-norm blocks with separate ln1/ln2, a ReLU FFN of width 4d, learned positions, a final
LayerNorm and an untied output Linear with bias. It differs from the baseline GPT in the ReLU, the untied biased head,
the bias-free q/k/v and the plain N(0, 0.02) init, so it is a variant file rather than only a config."""
from dataclasses import dataclass

import torch.nn as nn

from model import GPT, CausalSelfAttention, GPTConfig, register


@dataclass
class CharGPTConfig(GPTConfig):
    block_size: int = 256
    vocab_size: int = 65
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    dropout: float = 0.2


@register("char_gpt")
class CharGPT(GPT):
    config_class = CharGPTConfig
    scale_residual_init = False  # the lecture's init: N(0, 0.02) everywhere, zero biases

    def __init__(self, config):
        super().__init__(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=True)  # untied, with bias
        self._init_weights(self.lm_head)

    def make_attention(self, layer_idx):
        attn = CausalSelfAttention(self.config, layer_idx)
        attn.c_attn = nn.Linear(self.config.n_embd, 3 * self.config.n_embd, bias=False)  # Head: bias=False
        return attn

    def make_block(self, layer_idx):
        block = super().make_block(layer_idx)
        block.mlp.gelu = nn.ReLU()  # the lecture's FeedForward: Linear, ReLU, Linear, Dropout
        return block

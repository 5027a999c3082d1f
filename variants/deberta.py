"""DeBERTa v1 (He et al. 2021), docs/foundational.md §5 in its paper/official-code form.

Disentangled attention: one relative-position table P (2k rows, width H) shared by all layers, per-layer
projections K_r = P W_kr (no bias) and Q_r = P W_qr + b, and scores
    A_ij = Q_i.K_j + Q_i.K_r[d(i,j)] + K_j.Q_r[d(i,j)],   d(i,j) = clamp(i - j + k, 0, 2k - 1),
scaled by 1/sqrt(3 head_dim); p2p is dropped. The p2c index is the paper's delta(j, i) read on the key-major matrix
and transposed, which makes it the same clamp(i - j + k) at (i, j): the official code and transformers do exactly
this, and the parity test pins it. Content q/v carry separate biases (q_bias, v_bias), k none.
No absolute positions at the input. Pre-training is MLM only, through the Enhanced Mask Decoder (emd=True): the query
I = absolute position embedding + H_{L-1} (the second-to-last layer's output, which is also K and V) goes through the
last layer twice (shared weights), and that output feeds the MLM head. transformers' DebertaForMaskedLM has no EMD,
so the parity test turns it off (emd=False) and a separate test checks EMD against a hand computation.
The two relative terms enter the fused kernels as an additive score bias (AttnMask.bias, differentiable).
The model is variants/encoder.py's; the objective objectives.MaskedLM (MLM only)."""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from infra import hf_import
from attention import AttnMask
from objectives import MaskedLM
from variants.encoder import BidirectionalSelfAttention, Encoder, EncoderConfig, PostLNBlock
from variants.registry import register


@dataclass
class DebertaConfig(EncoderConfig):
    pair_task: str = "none"  # DeBERTa pre-trains with MLM only
    type_vocab_size: int = 0
    layer_norm_eps: float = 1e-7
    max_relative_positions: int = 0  # k; 0 = block_size (as the official -1 -> max_position_embeddings)
    emd: bool = True  # Enhanced Mask Decoder for the MLM head

    def validate(self):
        super().validate()
        if self.max_relative_positions < 0:
            raise ValueError(f"max_relative_positions must be >= 0 (0 = block_size), got {self.max_relative_positions}")
        if self.emd and self.n_layer < 2:
            raise ValueError("the Enhanced Mask Decoder needs n_layer >= 2 (it re-uses the last layer on H_{L-1})")

    def rel_span(self):
        return self.max_relative_positions or self.block_size


@dataclass
class RelMask(AttnMask):
    """The shared bidirectional/padding mask plus the shared relative-position table P (2k, H) for every layer."""
    rel: torch.Tensor | None = None


class DisentangledSelfAttention(BidirectionalSelfAttention):
    qkv_bias = False  # [q; k; v] without bias; q and v get their own biases below

    def __init__(self, config, layer_idx):
        super().__init__(config, layer_idx)
        H = config.n_embd
        self.q_bias = nn.Parameter(torch.zeros(H))
        self.v_bias = nn.Parameter(torch.zeros(H))
        self.pos_proj = nn.Linear(H, H, bias=False)  # W_{k,r}
        self.pos_q_proj = nn.Linear(H, H)  # W_{q,r}
        self.span = config.rel_span()

    def relative_bias(self, q, k, rel):
        """(c2p + p2c) for q (B, h, Tq, d) and k (B, h, Tk, d), already divided by sqrt(3 d)."""
        Tq, Tk, scale = q.size(-2), k.size(-2), 1.0 / math.sqrt(3 * self.head_dim)
        rel = F.dropout(rel, self.dropout, self.training)
        k_r = self.split_heads(self.pos_proj(rel)[None])  # (1, h, 2k, d)
        q_r = self.split_heads(self.pos_q_proj(rel)[None])
        delta = (torch.arange(Tq, device=q.device)[:, None] - torch.arange(Tk, device=q.device)[None, :]
                 + self.span).clamp(0, 2 * self.span - 1)  # (Tq, Tk)
        c2p = torch.gather(q @ k_r.transpose(-1, -2), -1, delta.expand(*q.shape[:2], Tq, Tk))
        # p2c: key j against Q_r, read at delta(i, j) on key-major rows, then transposed to (i, j)
        p2c = torch.gather(k @ q_r.transpose(-1, -2), -1, delta.t().expand(*k.shape[:2], Tk, Tq)).transpose(-1, -2)
        return (c2p + p2c) * scale

    def project(self, x, query=None):
        """Content q, k, v (B, h, T, d); with query (the EMD), queries come from other states, same weights."""
        H = self.n_embd
        if query is None:
            q, k, v = self.c_attn(x).split(H, dim=2)
        else:
            w = self.c_attn.weight
            q, (k, v) = F.linear(query, w[:H]), F.linear(x, w[H:]).split(H, dim=2)
        return self.split_heads(q + self.q_bias), self.split_heads(k), self.split_heads(v + self.v_bias)

    def forward(self, x, pos, cache=None, mask=None, query=None):
        if mask is None or mask.rel is None:
            raise ValueError("DeBERTa attention needs the model's shared RelMask (with the relative table)")
        q, k, v = self.project(x, query)
        bias = self.relative_bias(q, k, mask.rel)
        y = self.attend(q, k, v, AttnMask(causal=False, bias=bias if mask.bias is None else bias + mask.bias))
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).contiguous().view(x.shape)))

    def attend(self, q, k, v, mask):
        return self.kernel(q, k, v, mask, dropout_p=self.dropout if self.training else 0.0,
                           scale=1.0 / math.sqrt(3 * self.head_dim))

    def attention_flops(self, T, pairs=None):
        # plus c2p and p2c: content queries against the 2k relative keys, content keys against the 2k relative queries
        return super().attention_flops(T, pairs) + 8 * self.n_embd * self.span * T


class DebertaBlock(PostLNBlock):
    def forward(self, x, pos, cache=None, mask=None, query=None):
        """query: EMD query states; the attention residual then adds to them, as in the official layer."""
        residual = x if query is None else query
        x = self.ln_1(residual + self.attn(x, pos, None, mask, query))
        return self.ln_2(x + self.mlp(x))


@register("deberta", objective=MaskedLM())
class Deberta(Encoder):
    config_class = DebertaConfig
    Attention = DisentangledSelfAttention
    Block = DebertaBlock
    input_positions = False  # relative positions only; absolute ones enter only in the EMD
    from_pretrained = classmethod(hf_import.deberta)

    def __init__(self, config):
        super().__init__(config)
        self.transformer.rel = nn.Embedding(2 * config.rel_span(), config.n_embd)
        self._init_weights(self.transformer.rel)

    def position_table(self, config):
        # the absolute positions of the Enhanced Mask Decoder (never added at the input)
        return nn.Embedding(config.block_size, config.n_embd) if config.emd else None

    def run_blocks(self, x, pos, mask=None):
        mask, blocks = RelMask(causal=False, bias=None if mask is None else mask.bias,
                               rel=self.transformer.rel.weight), self.transformer.h
        if not self.config.emd:
            for block in blocks:
                x = block(x, pos, None, mask)
            return x
        # EMD. The plain last-layer output H_L is not used by the MLM objective, so it is not computed here
        for block in blocks[:-1]:
            x = block(x, pos, None, mask)
        query = self.transformer.wpe(pos) + x
        for _ in range(2):
            query = blocks[-1](x, pos, None, mask, query=query)
        return query

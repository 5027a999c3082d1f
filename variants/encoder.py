"""The bidirectional encoders (BERT, ALBERT, DeBERTa), docs/foundational.md §3-4.5: a model of their own, built from model.py's
attention, MLP and block parts. The batches, losses, metrics and fill-mask are objectives.MaskedLM.

Embeddings: word (+ learned absolute position) (+ token type) -> LayerNorm -> dropout (-> E x H projection when the
embedding width E differs, ALBERT). Blocks are post-LN (x = LN(x + Attn(x)); x = LN(x + FFN(x))) with exact GELU;
attention is bidirectional, plus a key-padding mask when attention_mask is given. The MLM head is dense -> GELU ->
LayerNorm -> a decoder whose weight is the word embedding matrix, plus a bias; in training it runs only on the masked
positions. The pair head (NSP/SOP) is a tanh pooler on [CLS] followed by Linear(H, 2).
"""
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from attention import AttnMask
from model import GPT, MLP, Block, CausalSelfAttention, GPTConfig
from objectives import N_SPECIAL, PAIR_TASKS


@dataclass
class EncoderConfig(GPTConfig):
    vocab_size: int = 50304 + N_SPECIAL  # data vocabulary + [PAD] [CLS] [SEP] [MASK] (train.py sets it from the data)
    ffn_hidden: int = 0  # 0 = 4 * n_embd
    embedding_size: int = 0  # input embedding width E; 0 = n_embd (ALBERT factorises E -> H)
    type_vocab_size: int = 2  # token types (segments A/B); 0 = none
    layer_norm_eps: float = 1e-12
    mlm_prob: float = 0.15  # share of the tokens selected for MLM (80 % [MASK], 10 % random, 10 % kept)
    max_ngram: int = 1  # MLM selects spans of 1..max_ngram tokens with p(n) ~ 1/n (ALBERT: 3)
    pair_task: str = "nsp"  # "nsp" (BERT), "sop" (ALBERT) or "none" (MLM only)

    def validate(self):
        super().validate()
        if self.vocab_size <= N_SPECIAL:
            raise ValueError(f"vocab_size must exceed the {N_SPECIAL} special tokens, got {self.vocab_size}")
        if not 0.0 < self.mlm_prob < 1.0:
            raise ValueError(f"mlm_prob must be in (0, 1), got {self.mlm_prob}")
        if self.max_ngram < 1:
            raise ValueError(f"max_ngram must be >= 1, got {self.max_ngram}")
        if self.pair_task not in PAIR_TASKS:
            raise ValueError(f"pair_task must be one of {', '.join(PAIR_TASKS)}, got {self.pair_task!r}")
        if self.pair_task != "none" and self.type_vocab_size < 2:
            raise ValueError(f"pair_task={self.pair_task!r} needs type_vocab_size >= 2 (segments A and B)")
        if self.ffn_hidden < 0 or self.embedding_size < 0 or self.type_vocab_size < 0 or self.layer_norm_eps <= 0:
            raise ValueError("ffn_hidden, embedding_size and type_vocab_size must be >= 0 and layer_norm_eps > 0")
        if self.block_size < 8:
            raise ValueError(f"block_size must be >= 8 to hold [CLS] A [SEP] B [SEP], got {self.block_size}")

    def emb_dim(self):
        return self.embedding_size or self.n_embd


class BidirectionalSelfAttention(CausalSelfAttention):
    def mask(self, Tq, Tk, q_offset):
        return AttnMask(causal=False, q_offset=q_offset)

    def attended_entries(self, T):
        return T * T


class EncoderMLP(MLP):
    def __init__(self, config):
        super().__init__(config, hidden=config.ffn_hidden)


class EncoderNorm(nn.LayerNorm):
    def __init__(self, config):
        super().__init__(config.n_embd, eps=config.layer_norm_eps)


class PostLNBlock(Block):
    """The original Transformer/BERT residual order: normalise after adding the sub-layer output."""

    def __init__(self, config, layer_idx, attention, mlp, norm):
        nn.Module.__init__(self)  # the parts in the order they compute
        self.attn = attention(config, layer_idx)
        self.ln_1 = norm(config)
        self.mlp = mlp(config)
        self.ln_2 = norm(config)

    def forward(self, x, pos, cache=None, mask=None):
        x = self.ln_1(x + self.attn(x, pos, None, mask))
        return self.ln_2(x + self.mlp(x))


class Encoder(nn.Module):
    config_class = EncoderConfig
    Attention = BidirectionalSelfAttention
    Block = PostLNBlock
    input_positions = True  # absolute positions added at the input (DeBERTa: False)
    shared_layers = False  # one block applied n_layer times (ALBERT)
    scale_residual_init = False  # BERT init: N(0, 0.02) everywhere, zero biases
    # what fits an encoder as it is: GPT's init, parameter count, position-table cropping and empty model hooks
    _init_weights, num_params, crop_block_size = GPT._init_weights, GPT.num_params, GPT.crop_block_size
    aux_loss, log_metrics = GPT.aux_loss, GPT.log_metrics

    def __init__(self, config):
        super().__init__()
        config.validate()
        self.config = c = config
        E, H = c.emb_dim(), c.n_embd
        t = self.transformer = nn.ModuleDict()
        t.wte = nn.Embedding(c.vocab_size, E)
        t.drop = nn.Dropout(c.dropout)
        t.h = nn.ModuleList([self.Block(c, i, self.Attention, EncoderMLP, EncoderNorm)
                             for i in range(1 if self.shared_layers else c.n_layer)])
        wpe = self.position_table(c)
        if wpe is not None:
            t.wpe = wpe
        if E != H:
            t.emb_proj = nn.Linear(E, H)
        if c.type_vocab_size:
            t.wtt = nn.Embedding(c.type_vocab_size, E)
        t.ln_emb = nn.LayerNorm(E, eps=c.layer_norm_eps)
        self.mlm_dense = nn.Linear(H, E)
        self.mlm_act = nn.GELU(approximate="tanh" if c.hidden_act == "gelu_tanh" else "none")
        self.mlm_ln = nn.LayerNorm(E, eps=c.layer_norm_eps)
        self.mlm_bias = nn.Parameter(torch.zeros(c.vocab_size))  # the decoder's weight is the word embeddings'
        if c.pair_task != "none":
            self.pooler = nn.Linear(H, H)
            self.pair_head = nn.Linear(H, 2)
        self.apply(self._init_weights)

    def position_table(self, config):
        """Learned absolute positions, added at the input when input_positions (DeBERTa: its mask decoder's)."""
        return nn.Embedding(config.block_size, config.emb_dim())

    def embed(self, idx, pos, token_types=None):
        t = self.transformer
        x = t.wte(idx)
        if self.input_positions:
            x = x + t.wpe(pos)
        if "wtt" in t:
            x = x + t.wtt(torch.zeros_like(idx) if token_types is None else token_types)
        x = t.drop(t.ln_emb(x))
        return t.emb_proj(x) if "emb_proj" in t else x

    def run_blocks(self, x, pos, mask=None):
        """hook: the stack topology (one shared block with shared_layers; DeBERTa's mask decoder)."""
        for i in range(self.config.n_layer):
            x = self.transformer.h[0 if self.shared_layers else i](x, pos, None, mask)
        return x

    def forward(self, idx, token_types=None, attention_mask=None, predict=None):
        """{'mlm': logits (B, T, V), or (N, V) at the N positions where predict (B, T) is True; 'pair': (B, 2) when
        the model has a pair task}. attention_mask (B, T): 1 = token, 0 = [PAD] (keys never attended)."""
        if idx.size(1) > self.config.block_size:
            raise ValueError(f"sequence of {idx.size(1)} tokens but block_size is {self.config.block_size}")
        pos = torch.arange(idx.size(1), device=idx.device)
        x = self.embed(idx, pos, token_types)
        mask = None
        if attention_mask is not None:
            pad = ~attention_mask.bool()[:, None, None, :]
            bias = torch.zeros(pad.shape, dtype=x.dtype, device=x.device).masked_fill(pad, torch.finfo(x.dtype).min)
            mask = AttnMask(causal=False, bias=bias)
        h = self.run_blocks(x, pos, mask)
        h_mlm = self.mlm_ln(self.mlm_act(self.mlm_dense(h if predict is None else h[predict])))
        logits = {"mlm": F.linear(h_mlm, self.transformer.wte.weight, self.mlm_bias)}
        if self.config.pair_task != "none":
            logits["pair"] = self.pair_head(torch.tanh(self.pooler(h[:, 0])))
        return logits

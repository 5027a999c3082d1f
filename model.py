"""
A plain GPT (the GPT-2 architecture, as in nanoGPT): GPTConfig, the attention module, the MLP, the block, GPT and
generate, in reading order.

A variant is a file in variants/ that subclasses these parts and overrides the few methods marked "hook" (docs/design.md
lists them). Masks, attention kernels and KV caches live in attention.py; what a batch is and what the model is
trained to predict live in objectives.py.
"""
import math
from dataclasses import dataclass, fields

import torch
import torch.nn as nn

from infra import hf_import
from attention import KERNELS, AttnMask, KVCache, combine, share_kv_heads


@dataclass
class GPTConfig:
    block_size: int = 1024  # context length (positions)
    vocab_size: int = 50304  # GPT-2's 50257 padded up to a multiple of 64 for speed
    n_layer: int = 12  # blocks
    n_head: int = 12  # attention heads per layer
    n_embd: int = 768  # model width
    dropout: float = 0.0  # on embeddings, attention weights and residual branches (training only)
    bias: bool = True  # biases in Linears and LayerNorms, as GPT-2
    attn_impl: str = "auto"  # "auto": fastest exact kernel per mask and device; "sdpa", "flex", "dense" force one
    hidden_act: str = "gelu"  # "gelu" (exact, as nanoGPT; 2-3x cheaper on CPU) or "gelu_tanh" (GPT-2's own, for its weights)

    def validate(self):
        """Raise ValueError naming the first inconsistent field. Variants extend this."""
        for f in fields(self):  # nan and inf pass the range checks below; no float field means either
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{f.name} must be a finite number, got {value}")
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_head={self.n_head} must divide n_embd={self.n_embd}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.attn_impl not in KERNELS:
            raise ValueError(f"attn_impl must be one of {', '.join(KERNELS)}, got {self.attn_impl!r}")
        if self.hidden_act not in ("gelu", "gelu_tanh"):
            raise ValueError(f"hidden_act must be 'gelu' or 'gelu_tanh', got {self.hidden_act!r}")


class LayerNorm(nn.LayerNorm):
    """LayerNorm over n_embd, with a bias when config.bias."""

    def __init__(self, config):
        super().__init__(config.n_embd, bias=config.bias)


class CausalSelfAttention(nn.Module):
    qkv_bias = True  # False: no bias on the q/k/v projection even when config.bias

    def __init__(self, config, layer_idx, n_kv_head=None):
        super().__init__()
        self.n_head, self.n_embd, self.layer_idx = config.n_head, config.n_embd, layer_idx
        self.head_dim = config.n_embd // config.n_head
        self.n_kv_head = n_kv_head or config.n_head  # fewer key/value heads than query heads: grouped-query attention
        self.block_size = config.block_size
        qkv_width = (self.n_head + 2 * self.n_kv_head) * self.head_dim
        self.c_attn = nn.Linear(config.n_embd, qkv_width, bias=config.bias and self.qkv_bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj.residual_scaled_init = True
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)
        self.kernel = KERNELS[config.attn_impl]

    # hooks ------------------------------------------------------------------------------------------------------
    def rotate(self, q, k, pos):
        """hook: a position-dependent transform of q, k (B, H, T, hd) at absolute positions pos (T,); identity here."""
        return q, k

    def mask(self, Tq, Tk, q_offset):
        """This layer's AttnMask of Tq queries starting at absolute position q_offset over Tk keys. The pattern of
        the input's layout (documents, padding), when it has one, is combined with it."""
        return AttnMask(causal=True, q_offset=q_offset)

    def attend(self, q, k, v, mask):
        """Per-head outputs (B, H, T, hd) of softmax(q k^T / sqrt(hd) + mask) v."""
        return self.kernel(q, k, v, mask, dropout_p=self.dropout if self.training else 0.0)

    def make_cache(self, batch_size, device, dtype):
        """The KV cache generate() gives this layer: every key, or only those its mask can still reach."""
        return KVCache(batch_size, self.n_kv_head, self.block_size, self.head_dim, device, dtype)

    def attended_entries(self, T):
        """(query, key) pairs per head one call attends over a length-T sequence: what its FLOPs are counted on."""
        return T * (T + 1) // 2

    # ------------------------------------------------------------------------------------------------------------
    def split_heads(self, t):
        B, T, _ = t.shape
        return t.view(B, T, -1, self.head_dim).transpose(1, 2)

    def qkv(self, x, pos):
        """Queries (B, n_head, T, hd) and keys, values (B, n_kv_head, T, hd) at positions pos, rotated. Key/value heads
        are shared out to the query heads after the cache, so the cache stays small."""
        kv = self.n_kv_head * self.head_dim
        q, k, v = map(self.split_heads, self.c_attn(x).split([self.n_embd, kv, kv], dim=2))
        return (*self.rotate(q, k, pos), v)

    def forward(self, x, pos, cache=None, mask=None):
        q, k, v = self.qkv(x, pos)
        q_offset = 0  # keys already cached precede the new queries (a python int: no device sync, compile-friendly)
        if cache is not None:
            q_offset = cache.len
            k, v = cache.append(k, v)
        mask = combine(self.mask(q.size(-2), k.size(-2), q_offset), mask)
        y = self.attend(q, share_kv_heads(k, self.n_head), share_kv_heads(v, self.n_head), mask)
        y = y.transpose(1, 2).contiguous().view(x.shape)
        return self.resid_dropout(self.c_proj(y))

    def attention_flops(self, T, pairs=None):
        """Forward FLOPs of one call's QK^T and AV (2 * head_dim each per (query, key) pair and head) over a length-T
        sequence; pairs defaults to the attended ones (the dense reference path computes T * T)."""
        return 4 * self.head_dim * self.n_head * (self.attended_entries(T) if pairs is None else pairs)


class MLP(nn.Module):
    def __init__(self, config, hidden=None):
        super().__init__()
        hidden = hidden or 4 * config.n_embd
        self.c_fc = nn.Linear(config.n_embd, hidden, bias=config.bias)
        self.act = self.activation(config)
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.c_proj.residual_scaled_init = True
        self.dropout = nn.Dropout(config.dropout)

    def activation(self, config):
        return nn.GELU(approximate="tanh" if config.hidden_act == "gelu_tanh" else "none")

    def forward(self, x):
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class Block(nn.Module):
    """Pre-LN residual block, built from the part classes it is given."""

    def __init__(self, config, layer_idx, attention=CausalSelfAttention, mlp=MLP, norm=LayerNorm):
        super().__init__()
        self.ln_1 = norm(config)
        self.attn = attention(config, layer_idx)
        self.ln_2 = norm(config)
        self.mlp = mlp(config)

    def forward(self, x, pos, cache=None, mask=None):
        x = x + self.attn(self.ln_1(x), pos, cache, mask)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    config_class = GPTConfig
    # the parts: a variant sets these to its own classes
    Attention = CausalSelfAttention
    MLP = MLP
    Norm = LayerNorm
    Block = Block
    position_embedding = True  # learned absolute positions at the input (False for positions inside attention)
    tie_embeddings = True  # lm_head shares wte's matrix; an untied head has a bias when config.bias
    scale_residual_init = True  # GPT-2's 1/sqrt(2 * n_layer) on residual projections

    def __init__(self, config):
        super().__init__()
        config.validate()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([self.Block(config, i, self.Attention, self.MLP, self.Norm)
                             for i in range(config.n_layer)]),
            ln_f=self.Norm(config),
        ))
        if self.position_embedding:
            self.transformer.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=config.bias and not self.tie_embeddings)
        if self.tie_embeddings:
            self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)

    def _init_weights(self, module):
        # N(0, 0.02) weights, zero biases; residual projections scaled by 1/sqrt(2 * n_layer) when scale_residual_init
        if isinstance(module, nn.Linear):
            scaled = self.scale_residual_init and getattr(module, "residual_scaled_init", False)
            std = 0.02 / math.sqrt(2 * self.config.n_layer) if scaled else 0.02
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, pos=None, mask=None, caches=None, last_only=False):
        """Logits (B, T, vocab) of tokens idx (B, T) at absolute positions pos (default 0..T-1). mask: the attention
        pattern of the input's layout, if it has one; caches: one KV cache per attention layer (generate)."""
        if pos is None:
            if idx.size(1) > self.config.block_size:
                raise ValueError(f"sequence of {idx.size(1)} tokens but block_size is {self.config.block_size}")
            pos = torch.arange(idx.size(1), device=idx.device)
        x = self.transformer.wte(idx)
        if self.position_embedding:
            x = x + self.transformer.wpe(pos)
        x = self.run_blocks(self.transformer.drop(x), pos, mask, caches)
        if last_only:
            x = x[:, -1:]
        return self.lm_head(self.transformer.ln_f(x))

    def run_blocks(self, x, pos, mask=None, caches=None):
        """hook: the stack topology: each block in turn."""
        for i, block in enumerate(self.transformer.h):
            x = block(x, pos, None if caches is None else caches[i], mask)
        return x

    def aux_loss(self):
        """hook: a loss term of the model itself (a regulariser), added to the objective's in training, or None."""
        return None

    def log_metrics(self):
        """hook: scalars about the model to log at each evaluation (learned parameters worth watching), or {}."""
        return {}

    # generation ---------------------------------------------------------------------------------------------------
    def make_caches(self, batch_size, device, dtype):
        return [m.make_cache(batch_size, device, dtype) for m in self.modules() if isinstance(m, CausalSelfAttention)]

    @torch.inference_mode()  # cheaper than no_grad per op, which batch-1 decoding feels
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, use_cache=True, generator=None,
                 vocab_size=None):
        """Sample max_new_tokens after idx (B, T). temperature=0 is greedy. Cached decoding equals uncached. With
        vocab_size (the data's), ids the tokenizer cannot decode (padding rows, special tokens) are never drawn.

        With a cache each step costs one token's forward pass. Once the sequence outgrows block_size the context is
        cropped to its last block_size tokens as in nanoGPT; absolute positions then shift, so every such step
        recomputes the cropped context (still exactly equal to uncached decoding).
        """
        bs = self.config.block_size
        caches, fed = None, 0  # fed = tokens of idx already in the caches
        for _ in range(max_new_tokens):
            if not use_cache or idx.size(1) > bs:
                logits, caches = self(idx[:, -bs:], last_only=True), None
            else:
                if caches is None:
                    caches, fed = self.make_caches(idx.size(0), idx.device, self.lm_head.weight.dtype), 0
                pos = torch.arange(fed, idx.size(1), device=idx.device)
                logits, fed = self(idx[:, fed:], pos=pos, caches=caches, last_only=True), idx.size(1)
            idx = torch.cat((idx, sample_next(logits[:, -1], temperature, top_k, generator, vocab_size)), dim=1)
        return idx

    # weights ------------------------------------------------------------------------------------------------------
    def num_params(self, non_embedding=True):
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and "wpe" in self.transformer:
            n -= self.transformer.wpe.weight.numel()
        return n

    def crop_block_size(self, block_size):
        """Shrink the context (e.g. 1024 -> 256 after loading GPT-2) by keeping the first position embeddings."""
        if block_size > self.config.block_size:
            raise ValueError(f"cannot grow block_size from {self.config.block_size} to {block_size}")
        self.config.block_size = block_size
        for m in self.modules():
            if isinstance(m, CausalSelfAttention):
                m.block_size = block_size
        if "wpe" in self.transformer:
            self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size].detach().clone())

    from_pretrained = classmethod(hf_import.gpt2)  # GPT-2 weights: 'gpt2', 'gpt2-medium', ... or a local HF directory


def sample_next(logits, temperature, top_k, generator=None, vocab_size=None):
    """One token id per row of logits (B, V): greedy at temperature 0, else sampled from the top_k. Ids from vocab_size
    on (padding rows, special tokens the data never holds) are never chosen."""
    logits = logits.float()
    if vocab_size is not None and vocab_size < logits.size(-1):
        logits = logits[:, :vocab_size]
    if temperature == 0:
        return logits.argmax(-1, keepdim=True)
    # the top_k cut is made on the logits themselves: at an infinite temperature the scaled ones are all equal
    drop = None
    if top_k is not None:
        drop = logits < torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
    # the best logit becomes 0 and the others <= 0 (-inf at a tiny temperature: greedy); a temperature below float32's
    # smallest normal would round to 0 in the division and give 0/0
    logits = (logits - logits.amax(-1, keepdim=True)) / max(temperature, torch.finfo(logits.dtype).tiny)
    if drop is not None:
        logits = logits.masked_fill(drop, float("-inf"))
    return torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)

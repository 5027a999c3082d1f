"""LLaMA-1 (Touvron et al. 2023): pre-norm RMSNorm blocks, SwiGLU FFN, interleaved RoPE on q/k at every layer, no
absolute position embedding, untied output head, grouped-query attention (n_kv_head) with a KV cache that stores only
the n_kv_head key/value heads. SPEC §4.6 (the paper version; the seed's cached-decoding bugs are not reproduced:
rotary angles use absolute positions pos_offset.., and cached attention uses an explicit offset mask)."""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from model import GPT, Block, CausalSelfAttention, GPTConfig, KVCache, register
from variants.encoder import copy_weights, hf_overrides
from variants.rotary import rope_cos_sin, rope_frequencies, rotate_interleaved


@dataclass
class LlamaConfig(GPTConfig):
    bias: bool = False  # LLaMA has no biases anywhere
    n_kv_head: int = 0  # key/value heads for grouped-query attention; 0 = n_head (plain multi-head)
    ffn_hidden: int = 0  # SwiGLU width; 0 = multiple_of * ceil((8d/3) / multiple_of), 11008 for d = 4096
    multiple_of: int = 256
    norm_eps: float = 1e-5  # the paper's ModelArgs; the released checkpoints use 1e-6
    rope_theta: float = 10000.0

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


class LlamaAttention(CausalSelfAttention):
    def __init__(self, config, layer_idx):
        super().__init__(config, layer_idx)
        self.n_kv_head = config.kv_heads()
        hd = self.head_dim
        # fused [q (n_head heads); k (n_kv_head); v (n_kv_head)]
        self.c_attn = nn.Linear(config.n_embd, (self.n_head + 2 * self.n_kv_head) * hd, bias=False)
        self.register_buffer("rope_freqs", rope_frequencies(hd, config.rope_theta), persistent=False)

    def rotate(self, q, k, pos):
        cos, sin = rope_cos_sin(self.rope_freqs, pos)
        return rotate_interleaved(q, cos, sin), rotate_interleaved(k, cos, sin)

    def qkv(self, x, pos):
        """n_kv_head key/value heads; model.py shares them out after the cache (GQA keeps the cache small)."""
        kv = self.n_kv_head * self.head_dim
        q, k, v = map(self.split_heads, self.c_attn(x).split([self.n_embd, kv, kv], dim=2))
        q, k = self.rotate(q, k, pos)
        return q, k, v


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

    def __init__(self, config):
        super().__init__(config)
        self.transformer.ln_f = nn.RMSNorm(config.n_embd, eps=config.norm_eps)
        # GPT ties wte to lm_head; LLaMA's output projection is its own matrix
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self._init_weights(self.lm_head)

    def make_attention(self, layer_idx):
        return LlamaAttention(self.config, layer_idx)

    def make_block(self, layer_idx):
        block = Block(self.config, self.make_attention(layer_idx), SwiGLU(self.config))  # Block is pre-norm already
        block.ln_1 = nn.RMSNorm(self.config.n_embd, eps=self.config.norm_eps)
        block.ln_2 = nn.RMSNorm(self.config.n_embd, eps=self.config.norm_eps)
        return block

    def make_position_embedding(self):
        return None  # positions enter only through RoPE

    def make_caches(self, batch_size, device, dtype):
        c = self.config
        return [KVCache(batch_size, c.kv_heads(), c.block_size, c.n_embd // c.n_head, device, dtype)
                for _ in range(c.n_layer)]

    # import ---------------------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path, **overrides):
        """Weights from a local Hugging Face LlamaForCausalLM directory (save_pretrained layout)."""
        from transformers import LlamaForCausalLM
        hf = LlamaForCausalLM.from_pretrained(path)
        hc = hf.config
        if getattr(hc, "attention_bias", False) or getattr(hc, "mlp_bias", False):
            raise ValueError("this LLaMA checkpoint has biases; LLaMA-1 has none")
        rope = getattr(hc, "rope_parameters", None) or {"rope_theta": getattr(hc, "rope_theta", 10000.0)}
        if rope.get("rope_type", "default") != "default":
            raise ValueError(f"rope scaling {rope.get('rope_type')!r} is not supported (only plain RoPE)")
        config = LlamaConfig(n_layer=hc.num_hidden_layers, n_head=hc.num_attention_heads,
                             n_kv_head=hc.num_key_value_heads, n_embd=hc.hidden_size, ffn_hidden=hc.intermediate_size,
                             block_size=hc.max_position_embeddings, vocab_size=hc.vocab_size,
                             norm_eps=hc.rms_norm_eps, rope_theta=float(rope["rope_theta"]))
        config.block_size = hf_overrides(config, overrides)  # no position table: nothing to crop
        model = cls(config)
        model.load_hf_state_dict(hf.state_dict())
        return model

    def load_hf_state_dict(self, sd):
        c = self.config
        hd = c.n_embd // c.n_head

        def unpermute(w, heads):
            # HF stores q/k rows permuted for its rotate-half RoPE (convert_llama_weights_to_hf.permute); undo it so
            # our interleaved pairs (2i, 2i+1) see the same rotation
            return w.view(heads, 2, hd // 2, -1).transpose(1, 2).reshape(w.shape)

        ours = {"transformer.wte.weight": sd["model.embed_tokens.weight"],
                "transformer.ln_f.weight": sd["model.norm.weight"],
                "lm_head.weight": sd["lm_head.weight" if "lm_head.weight" in sd else "model.embed_tokens.weight"]}
        for i in range(c.n_layer):
            p = f"model.layers.{i}."
            q = unpermute(sd[p + "self_attn.q_proj.weight"], c.n_head)
            k = unpermute(sd[p + "self_attn.k_proj.weight"], c.kv_heads())
            o = f"transformer.h.{i}."
            ours.update({
                o + "attn.c_attn.weight": torch.cat([q, k, sd[p + "self_attn.v_proj.weight"]]),
                o + "attn.c_proj.weight": sd[p + "self_attn.o_proj.weight"],
                o + "mlp.w1.weight": sd[p + "mlp.gate_proj.weight"],
                o + "mlp.w3.weight": sd[p + "mlp.up_proj.weight"],
                o + "mlp.w2.weight": sd[p + "mlp.down_proj.weight"],
                o + "ln_1.weight": sd[p + "input_layernorm.weight"],
                o + "ln_2.weight": sd[p + "post_attention_layernorm.weight"],
            })
        copy_weights(self, ours)

"""BERT (Devlin et al. 2019), SPEC §4.3 in its paper form: post-LN bidirectional encoder with word + learned position
+ token-type embeddings, MLM (15 %, 80/10/10) through dense -> GELU -> LayerNorm tied to the input embeddings plus a
bias, and NSP through a tanh pooler on [CLS]. Everything but the weight mapping lives in variants/encoder.py."""
from dataclasses import dataclass

import torch

from model import hf_activation, register
from variants.encoder import Encoder, EncoderConfig, hf_linear, hf_overrides


@dataclass
class BertConfig(EncoderConfig):
    pair_task: str = "nsp"


@register("bert")
class Bert(Encoder):
    config_class = BertConfig

    @classmethod
    def from_pretrained(cls, path, **overrides):
        """Weights from a local Hugging Face BertForPreTraining directory (save_pretrained layout)."""
        from transformers import BertForPreTraining
        hf = BertForPreTraining.from_pretrained(path)
        hc = hf.config
        config = BertConfig(n_layer=hc.num_hidden_layers, n_head=hc.num_attention_heads, n_embd=hc.hidden_size,
                            ffn_hidden=hc.intermediate_size, block_size=hc.max_position_embeddings,
                            vocab_size=hc.vocab_size, type_vocab_size=hc.type_vocab_size,
                            layer_norm_eps=hc.layer_norm_eps, hidden_act=hf_activation(hc.hidden_act), bias=True)
        block_size = hf_overrides(config, overrides)
        sd, ours = hf.state_dict(), {}
        e = "bert.embeddings."
        for dst, src in (("wte", "word_embeddings"), ("wpe", "position_embeddings"),
                         ("wtt", "token_type_embeddings")):
            ours[f"transformer.{dst}.weight"] = sd[e + src + ".weight"]
        hf_linear(ours, sd, "transformer.ln_emb", e + "LayerNorm")
        for i in range(config.n_layer):
            p, o = f"bert.encoder.layer.{i}.", f"transformer.h.{i}."
            for part in ("weight", "bias"):
                ours[o + "attn.c_attn." + part] = torch.cat(
                    [sd[p + f"attention.self.{n}.{part}"] for n in ("query", "key", "value")])
            hf_linear(ours, sd, o + "attn.c_proj", p + "attention.output.dense")
            hf_linear(ours, sd, o + "ln_1", p + "attention.output.LayerNorm")
            hf_linear(ours, sd, o + "mlp.c_fc", p + "intermediate.dense")
            hf_linear(ours, sd, o + "mlp.c_proj", p + "output.dense")
            hf_linear(ours, sd, o + "ln_2", p + "output.LayerNorm")
        hf_linear(ours, sd, "pooler", "bert.pooler.dense")
        hf_linear(ours, sd, "mlm_dense", "cls.predictions.transform.dense")
        hf_linear(ours, sd, "mlm_ln", "cls.predictions.transform.LayerNorm")
        ours["mlm_bias"] = sd["cls.predictions.bias"]
        hf_linear(ours, sd, "pair_head", "cls.seq_relationship")
        return cls(config).finish_import(ours, block_size)

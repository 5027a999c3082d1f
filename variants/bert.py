"""BERT (Devlin et al. 2019), SPEC §4.3 in its paper form: post-LN bidirectional encoder with word + learned position
+ token-type embeddings, MLM (15 %, 80/10/10) through dense -> GELU -> LayerNorm tied to the input embeddings plus a
bias, and NSP through a tanh pooler on [CLS]. Everything but the weight mapping lives in variants/encoder.py."""
from dataclasses import dataclass

from model import hf_activation, register
from variants.encoder import Encoder, EncoderConfig, hf_embeddings, hf_fused_qkv, hf_linear, hf_mlm_head, \
    hf_overrides, hf_post_ln_layer


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
        hf_embeddings(ours, sd, "bert.embeddings.")
        for i in range(config.n_layer):
            p, o = f"bert.encoder.layer.{i}.", f"transformer.h.{i}."
            hf_fused_qkv(ours, sd, o, p + "attention.self.")
            hf_post_ln_layer(ours, sd, o, p)
        hf_linear(ours, sd, "pooler", "bert.pooler.dense")
        hf_mlm_head(ours, sd, "cls.predictions.transform.dense", "cls.predictions.transform.LayerNorm",
                    "cls.predictions.bias")
        hf_linear(ours, sd, "pair_head", "cls.seq_relationship")
        return cls(config).finish_import(ours, block_size)

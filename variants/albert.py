"""ALBERT (Lan et al. 2020), SPEC §4.4 in its paper form: factorised embeddings (word, position and token-type
tables of width E, LayerNorm, then one E -> H projection), full cross-layer sharing (one post-LN block applied
n_layer times), SOP instead of NSP, n-gram MLM masking (n <= 3, p(n) ~ 1/n), MLM head H -> E tied to the E-wide word
embeddings. No dropout by default, as in the paper."""
from dataclasses import dataclass

from model import hf_activation, register
from variants.encoder import Encoder, EncoderConfig, hf_embeddings, hf_fused_qkv, hf_linear, hf_mlm_head, \
    hf_overrides, hf_post_ln_layer


@dataclass
class AlbertConfig(EncoderConfig):
    embedding_size: int = 128
    pair_task: str = "sop"
    max_ngram: int = 3


@register("albert")
class Albert(Encoder):
    config_class = AlbertConfig

    def __init__(self, config):
        super().__init__(config)
        # GPT.__init__ built n_layer blocks; ALBERT keeps one and applies it n_layer times
        self.transformer.h = self.transformer.h[:1]
        self.transformer.h[0].attn.applications = config.n_layer  # attention FLOPs counted per application
        self._shared_ids = {id(m) for m in self.transformer.h[0].modules()}

    def run_blocks(self, x, pos, caches=None, attention_mask=None, **batch):
        mask, block = self.shared_mask(x, attention_mask), self.transformer.h[0]
        for _ in range(self.config.n_layer):
            x = block(x, pos, None, mask)
        return x

    def linear_calls_per_token(self, module, T):
        return self.config.n_layer if id(module) in self._shared_ids else super().linear_calls_per_token(module, T)

    @classmethod
    def from_pretrained(cls, path, **overrides):
        """Weights from a local Hugging Face AlbertForPreTraining directory (one layer group, one inner layer)."""
        from transformers import AlbertForPreTraining
        hf = AlbertForPreTraining.from_pretrained(path)
        hc = hf.config
        if hc.num_hidden_groups != 1 or hc.inner_group_num != 1:
            raise ValueError("only full cross-layer sharing (num_hidden_groups = inner_group_num = 1) is supported")
        config = AlbertConfig(n_layer=hc.num_hidden_layers, n_head=hc.num_attention_heads, n_embd=hc.hidden_size,
                              embedding_size=hc.embedding_size, ffn_hidden=hc.intermediate_size,
                              block_size=hc.max_position_embeddings, vocab_size=hc.vocab_size,
                              type_vocab_size=hc.type_vocab_size, layer_norm_eps=hc.layer_norm_eps,
                              hidden_act=hf_activation(hc.hidden_act), bias=True)
        block_size = hf_overrides(config, overrides)
        sd, ours = hf.state_dict(), {}
        hf_embeddings(ours, sd, "albert.embeddings.")
        hf_linear(ours, sd, "transformer.emb_proj", "albert.encoder.embedding_hidden_mapping_in")
        p, o = "albert.encoder.albert_layer_groups.0.albert_layers.0.", "transformer.h.0."
        hf_fused_qkv(ours, sd, o, p + "attention.")
        hf_post_ln_layer(ours, sd, o, p, ("attention.dense", "attention.LayerNorm", "ffn", "ffn_output",
                                          "full_layer_layer_norm"))
        hf_linear(ours, sd, "pooler", "albert.pooler")
        hf_mlm_head(ours, sd, "predictions.dense", "predictions.LayerNorm", "predictions.bias")
        hf_linear(ours, sd, "pair_head", "sop_classifier.classifier")
        return cls(config).finish_import(ours, block_size)

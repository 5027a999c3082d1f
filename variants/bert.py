"""BERT (Devlin et al. 2019), docs/foundational.md §3 in its paper form: post-LN bidirectional encoder with word + learned position
+ token-type embeddings, MLM (15 %, 80/10/10) through dense -> GELU -> LayerNorm tied to the input embeddings plus a
bias, and NSP through a tanh pooler on [CLS]. The model is variants/encoder.py's; the objective objectives.MaskedLM."""
from dataclasses import dataclass

from infra import hf_import
from objectives import MaskedLM
from variants.encoder import Encoder, EncoderConfig
from variants.registry import register


@dataclass
class BertConfig(EncoderConfig):
    pair_task: str = "nsp"


@register("bert", objective=MaskedLM())
class Bert(Encoder):
    config_class = BertConfig
    from_pretrained = classmethod(hf_import.bert)

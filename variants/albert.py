"""ALBERT (Lan et al. 2020), docs/foundational.md §4 in its paper form: factorised embeddings (word, position and token-type
tables of width E, LayerNorm, then one E -> H projection), full cross-layer sharing (one post-LN block applied
n_layer times), SOP instead of NSP, n-gram MLM masking (n <= 3, p(n) ~ 1/n), MLM head H -> E tied to the E-wide word
embeddings. No dropout by default, as in the paper."""
from dataclasses import dataclass

from infra import hf_import
from objectives import MaskedLM
from variants.encoder import Encoder, EncoderConfig
from variants.registry import register


@dataclass
class AlbertConfig(EncoderConfig):
    embedding_size: int = 128
    pair_task: str = "sop"
    max_ngram: int = 3


@register("albert", objective=MaskedLM())
class Albert(Encoder):
    config_class = AlbertConfig
    shared_layers = True
    from_pretrained = classmethod(hf_import.albert)

"""Hugging Face weights into our models: GPT-2, LLaMA, BERT, ALBERT and DeBERTa (local directories in the
save_pretrained layout, or hub names where a network is available).

Each importer reads the HF config into ours, refuses what our model cannot represent, maps the HF tensor names onto
our state-dict keys, and hands them to copy_weights, the one place weights are copied. An importer is a classmethod
body: the variant class calls it as `from_pretrained = classmethod(hf_import.<importer>)`, so this module imports no
model or variant.
"""
import torch


def copy_weights(model, tensors, partial=False):
    """Copy {our state-dict key: tensor} into model. Every key must be ours and fit its shape; unless partial, every
    weight of ours must be covered (partial: parameters a variant adds to the architecture keep their init)."""
    sd = model.state_dict()
    unknown = [k for k in tensors if k not in sd]
    missing = [] if partial else [k for k in sd if k not in tensors]
    if unknown or missing:
        raise ValueError(f"checkpoint does not fit the model: unknown {unknown[:3]}, missing {missing[:3]}")
    with torch.no_grad():
        for k, v in tensors.items():
            if sd[k].shape != v.shape:
                raise ValueError(f"shape mismatch for {k}: ours {tuple(sd[k].shape)}, checkpoint {tuple(v.shape)}")
            sd[k].copy_(v)
    return model


def activation(name):
    """Our hidden_act for a Hugging Face activation name (GPT-2 uses "gelu_new", BERT "gelu")."""
    acts = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
    if name not in acts:
        raise ValueError(f"activation {name!r} is not supported ({', '.join(acts)})")
    return acts[name]


def build(cls, config, overrides, tensors, partial=False):
    """Apply train.py/sample.py overrides (dropout, a variant's own fields, a smaller block_size) to the config read
    from the checkpoint, build the model, copy the weights in, then crop the position tables to block_size."""
    overrides = dict(overrides)
    block_size = overrides.pop("block_size", config.block_size)
    if block_size > config.block_size:
        raise ValueError(f"block_size={block_size} exceeds the checkpoint's {config.block_size} positions")
    for key, value in overrides.items():
        if not hasattr(config, key):
            raise ValueError(f"unknown override {key!r}")
        setattr(config, key, value)
    config.validate()
    model = copy_weights(cls(config), tensors, partial)
    if block_size < config.block_size:
        model.crop_block_size(block_size)
    return model


# ---- decoders -----------------------------------------------------------------------------------------------------

def gpt2(cls, name_or_path, **overrides):
    """GPT-2 weights ('gpt2', 'gpt2-medium', ... or a local HF directory) into a GPT-shaped variant."""
    from transformers import GPT2LMHeadModel
    hf = GPT2LMHeadModel.from_pretrained(name_or_path)
    hc = hf.config
    config = cls.config_class(n_layer=hc.n_layer, n_head=hc.n_head, n_embd=hc.n_embd, block_size=hc.n_positions,
                              vocab_size=hc.vocab_size, bias=True, dropout=0.0,
                              hidden_act=activation(hc.activation_function))
    # HF stores the projections as Conv1D, i.e. transposed Linear weights
    transposed = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    tensors = {k: v.t() if k.endswith(transposed) else v for k, v in hf.state_dict().items()
               if not k.endswith((".attn.bias", ".attn.masked_bias"))}
    return build(cls, config, overrides, tensors, partial=True)


def llama(cls, path, **overrides):
    """A local Hugging Face LlamaForCausalLM directory (LLaMA-1/2 layout: no biases, plain RoPE)."""
    from transformers import LlamaForCausalLM
    hf = LlamaForCausalLM.from_pretrained(path)
    hc = hf.config
    if getattr(hc, "attention_bias", False) or getattr(hc, "mlp_bias", False):
        raise ValueError("this LLaMA checkpoint has biases; LLaMA-1 has none")
    rope = getattr(hc, "rope_parameters", None) or {"rope_theta": getattr(hc, "rope_theta", 10000.0)}
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"rope scaling {rope.get('rope_type')!r} is not supported (only plain RoPE)")
    c = cls.config_class(n_layer=hc.num_hidden_layers, n_head=hc.num_attention_heads,
                         n_kv_head=hc.num_key_value_heads, n_embd=hc.hidden_size, ffn_hidden=hc.intermediate_size,
                         block_size=hc.max_position_embeddings, vocab_size=hc.vocab_size,
                         norm_eps=hc.rms_norm_eps, rope_theta=float(rope["rope_theta"]))
    sd, hd = hf.state_dict(), c.n_embd // c.n_head

    def unpermute(w, heads):
        # HF stores q/k rows permuted for its rotate-half RoPE; undo it so our interleaved pairs (2i, 2i+1) see the
        # same rotation
        return w.view(heads, 2, hd // 2, -1).transpose(1, 2).reshape(w.shape)

    ours = {"transformer.wte.weight": sd["model.embed_tokens.weight"],
            "transformer.ln_f.weight": sd["model.norm.weight"],
            "lm_head.weight": sd["lm_head.weight" if "lm_head.weight" in sd else "model.embed_tokens.weight"]}
    for i in range(c.n_layer):
        p, o = f"model.layers.{i}.", f"transformer.h.{i}."
        q = unpermute(sd[p + "self_attn.q_proj.weight"], c.n_head)
        k = unpermute(sd[p + "self_attn.k_proj.weight"], c.kv_heads())
        ours.update({
            o + "attn.c_attn.weight": torch.cat([q, k, sd[p + "self_attn.v_proj.weight"]]),
            o + "attn.c_proj.weight": sd[p + "self_attn.o_proj.weight"],
            o + "mlp.w1.weight": sd[p + "mlp.gate_proj.weight"],
            o + "mlp.w3.weight": sd[p + "mlp.up_proj.weight"],
            o + "mlp.w2.weight": sd[p + "mlp.down_proj.weight"],
            o + "ln_1.weight": sd[p + "input_layernorm.weight"],
            o + "ln_2.weight": sd[p + "post_attention_layernorm.weight"],
        })
    return build(cls, c, overrides, ours)


# ---- encoders ---------------------------------------------------------------------------------------------------

def _linear(ours, sd, dst, src, bias=True):
    """One HF Linear/LayerNorm (weight, bias) onto ours."""
    ours[dst + ".weight"] = sd[src + ".weight"]
    if bias:
        ours[dst + ".bias"] = sd[src + ".bias"]


def _embeddings(ours, sd, e):
    """HF word, position and token-type tables and the embedding LayerNorm under prefix e (BERT, ALBERT)."""
    for dst, src in (("wte", "word_embeddings"), ("wpe", "position_embeddings"), ("wtt", "token_type_embeddings")):
        ours[f"transformer.{dst}.weight"] = sd[e + src + ".weight"]
    _linear(ours, sd, "transformer.ln_emb", e + "LayerNorm")


def _fused_qkv(ours, sd, o, p):
    """HF's separate query, key and value Linears under p (BERT, ALBERT) as block o's fused c_attn."""
    for part in ("weight", "bias"):
        ours[o + "attn.c_attn." + part] = torch.cat([sd[p + f"{n}.{part}"] for n in ("query", "key", "value")])


BERT_LAYER = ("attention.output.dense", "attention.output.LayerNorm", "intermediate.dense", "output.dense",
              "output.LayerNorm")  # HF names of attn.c_proj, ln_1, mlp.c_fc, mlp.c_proj, ln_2 in BERT and DeBERTa


def _post_ln_layer(ours, sd, o, p, names=BERT_LAYER):
    """An HF post-LN layer's attention output, FFN and two LayerNorms (under p) onto block o."""
    for dst, src in zip(("attn.c_proj", "ln_1", "mlp.c_fc", "mlp.c_proj", "ln_2"), names, strict=True):
        _linear(ours, sd, o + dst, p + src)


def _mlm_head(ours, sd, dense, norm, bias):
    """The MLM transform (dense, LayerNorm) and output bias; the decoder weight is the word embedding matrix."""
    _linear(ours, sd, "mlm_dense", dense)
    _linear(ours, sd, "mlm_ln", norm)
    ours["mlm_bias"] = sd[bias]


def _encoder_config(cls, hc, **fields):
    return cls.config_class(n_layer=hc.num_hidden_layers, n_head=hc.num_attention_heads, n_embd=hc.hidden_size,
                            ffn_hidden=hc.intermediate_size, block_size=hc.max_position_embeddings,
                            vocab_size=hc.vocab_size, type_vocab_size=hc.type_vocab_size,
                            layer_norm_eps=hc.layer_norm_eps, hidden_act=activation(hc.hidden_act), bias=True,
                            **fields)


def bert(cls, path, **overrides):
    """A local Hugging Face BertForPreTraining directory."""
    from transformers import BertForPreTraining
    hf = BertForPreTraining.from_pretrained(path)
    config = _encoder_config(cls, hf.config)
    sd, ours = hf.state_dict(), {}
    _embeddings(ours, sd, "bert.embeddings.")
    for i in range(config.n_layer):
        p, o = f"bert.encoder.layer.{i}.", f"transformer.h.{i}."
        _fused_qkv(ours, sd, o, p + "attention.self.")
        _post_ln_layer(ours, sd, o, p)
    _linear(ours, sd, "pooler", "bert.pooler.dense")
    _mlm_head(ours, sd, "cls.predictions.transform.dense", "cls.predictions.transform.LayerNorm",
              "cls.predictions.bias")
    _linear(ours, sd, "pair_head", "cls.seq_relationship")
    return build(cls, config, overrides, ours)


def albert(cls, path, **overrides):
    """A local Hugging Face AlbertForPreTraining directory (one layer group, one inner layer)."""
    from transformers import AlbertForPreTraining
    hf = AlbertForPreTraining.from_pretrained(path)
    hc = hf.config
    if hc.num_hidden_groups != 1 or hc.inner_group_num != 1:
        raise ValueError("only full cross-layer sharing (num_hidden_groups = inner_group_num = 1) is supported")
    config = _encoder_config(cls, hc, embedding_size=hc.embedding_size)
    sd, ours = hf.state_dict(), {}
    _embeddings(ours, sd, "albert.embeddings.")
    _linear(ours, sd, "transformer.emb_proj", "albert.encoder.embedding_hidden_mapping_in")
    p, o = "albert.encoder.albert_layer_groups.0.albert_layers.0.", "transformer.h.0."
    _fused_qkv(ours, sd, o, p + "attention.")
    _post_ln_layer(ours, sd, o, p, ("attention.dense", "attention.LayerNorm", "ffn", "ffn_output",
                                    "full_layer_layer_norm"))
    _linear(ours, sd, "pooler", "albert.pooler")
    _mlm_head(ours, sd, "predictions.dense", "predictions.LayerNorm", "predictions.bias")
    _linear(ours, sd, "pair_head", "sop_classifier.classifier")
    return build(cls, config, overrides, ours)


def deberta(cls, path, **overrides):
    """A local Hugging Face DebertaForMaskedLM directory (v1, relative attention with c2p|p2c,
    position_biased_input=False, no talking heads). transformers has no EMD, so the model loads with emd=False."""
    from transformers import DebertaForMaskedLM
    hf = DebertaForMaskedLM.from_pretrained(path)
    hc = hf.config
    if (not hc.relative_attention or getattr(hc, "position_biased_input", True) or getattr(hc, "talking_head", False)
            or sorted(hc.pos_att_type or []) != ["c2p", "p2c"]):
        raise ValueError("only DeBERTa v1 with relative_attention, pos_att_type c2p|p2c, "
                         "position_biased_input=False and no talking heads is supported")
    span = hc.max_relative_positions if hc.max_relative_positions > 0 else hc.max_position_embeddings
    config = _encoder_config(cls, hc, max_relative_positions=span, emd=False)
    sd, ours, H = hf.state_dict(), {}, hc.hidden_size
    ours["transformer.wte.weight"] = sd["deberta.embeddings.word_embeddings.weight"]
    if config.type_vocab_size:
        ours["transformer.wtt.weight"] = sd["deberta.embeddings.token_type_embeddings.weight"]
    _linear(ours, sd, "transformer.ln_emb", "deberta.embeddings.LayerNorm")
    ours["transformer.rel.weight"] = sd["deberta.encoder.rel_embeddings.weight"]
    for i in range(config.n_layer):
        p, o = f"deberta.encoder.layer.{i}.", f"transformer.h.{i}."
        # HF's in_proj rows are per head [q_h; k_h; v_h]; ours are [q (all heads); k; v]
        w = sd[p + "attention.self.in_proj.weight"]
        ours[o + "attn.c_attn.weight"] = w.view(config.n_head, 3, -1, H).transpose(0, 1).reshape(3 * H, H)
        for name in ("q_bias", "v_bias"):
            ours[o + "attn." + name] = sd[p + "attention.self." + name]
        _linear(ours, sd, o + "attn.pos_proj", p + "attention.self.pos_proj", bias=False)
        _linear(ours, sd, o + "attn.pos_q_proj", p + "attention.self.pos_q_proj")
        _post_ln_layer(ours, sd, o, p)
    head = "cls.predictions." if hc.legacy else "lm_predictions.lm_head."
    _mlm_head(ours, sd, head + ("transform.dense" if hc.legacy else "dense"),
              head + ("transform.LayerNorm" if hc.legacy else "LayerNorm"), head + "bias")
    return build(cls, config, overrides, ours)

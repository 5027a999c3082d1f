"""Hugging Face weights into and out of our models: GPT-2, LLaMA, BERT, ALBERT and DeBERTa (local directories in the
save_pretrained layout, or hub names where a network is available).

Each family has one name mapping, `<family>_rules(config)`: a list of Rules saying which HF tensors each of our
state-dict tensors is made of and how (transposed, concatenated, rows reordered). Its fields have one table too
(`<FAMILY>_FIELDS`, ours -> HF). The importers read the HF config into ours through the field table, refuse what our
model cannot represent, and apply the rules forwards through copy_weights, the one place weights are copied in.
export.py applies the same rules backwards through export_weights, the one place weights are copied out, into the HF
model that `<family>_target(config)` describes. An importer is a classmethod body: the variant class calls it as
`from_pretrained = classmethod(hf_import.<importer>)`, so this module imports no model or variant.
"""
from dataclasses import dataclass

import torch


@dataclass(frozen=True, eq=False)
class Rule:
    """One of our tensors and the HF tensors it is made of: ours = cat(theirs) along dim 0, transposed when transpose
    (HF's Conv1D stores Linear weights transposed), then rows picked by rows (ours[i] = that[rows[i]]). optional: our
    model may lack the tensor (a bias-free Linear or LayerNorm, no token types); the HF tensor is then zeros, which
    computes the same."""
    ours: str
    theirs: tuple
    transpose: bool = False
    rows: torch.Tensor | None = None
    optional: bool = False

    def to_ours(self, sd):
        parts = [sd[k] for k in self.theirs]
        w = torch.cat(parts) if len(parts) > 1 else parts[0]
        if self.transpose:
            w = w.t()
        return w if self.rows is None else w[self.rows]

    def to_hf(self, w, shapes):
        """{HF name: tensor} of our tensor w (None: zeros), shapes: {HF name: its shape in the HF model}."""
        if w is None:
            return {k: torch.zeros(shapes[k]) for k in self.theirs}
        if self.rows is not None:
            w = w[torch.argsort(self.rows)]
        if self.transpose:
            w = w.t()
        return dict(zip(self.theirs, w.split([shapes[k][0] for k in self.theirs]), strict=True))


@dataclass(frozen=True)
class Target:
    """The transformers model a config of ours exports to: its class name, its config fields, the names of our
    tensors it has no place for (the export leaves them out) and the line that says so."""
    hf_class: str
    fields: dict
    dropped: tuple = ()
    note: str = ""


def _same(ours, theirs=None, **kw):
    return Rule(ours, (ours if theirs is None else theirs,), **kw)


def _affine(dst, src, bias=True, transpose=False):
    """One Linear/LayerNorm: its weight, and its bias unless bias=False."""
    rules = [_same(dst + ".weight", src + ".weight", transpose=transpose)]
    return rules + [_same(dst + ".bias", src + ".bias", optional=True)] if bias else rules


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


def export_weights(rules, state_dict, hf, dropped=()):
    """Fill the HF model hf from our state dict by the rules (load_state_dict, strict): every HF tensor is covered
    (tied ones, such as a decoder sharing the word embeddings, through the tensor they share), and every tensor of
    ours is used except the names in dropped."""
    target = hf.state_dict()
    out, used = {}, set()
    for r in rules:
        if r.ours not in state_dict and not r.optional:
            raise ValueError(f"the model has no {r.ours}")
        used.add(r.ours)
        out.update(r.to_hf(state_dict.get(r.ours), {k: target[k].shape for k in r.theirs}))
    unused = [k for k in state_dict if k not in used and k not in dropped]
    if unused:
        raise ValueError(f"weights with no place in the Hugging Face model: {', '.join(unused[:3])}")
    filled = {target[k].data_ptr(): k for k in out if target[k].numel()}
    for k, t in target.items():
        if k not in out and t.numel() and t.data_ptr() in filled:
            out[k] = out[filled[t.data_ptr()]]
    try:
        hf.load_state_dict(out, strict=True)
    except RuntimeError as e:  # a key the rules miss, or a shape they get wrong
        raise ValueError(f"the weights do not fit {type(hf).__name__}: {' '.join(str(e).split())[:300]}") from None
    return hf


ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}  # HF name -> ours


def activation(name):
    """Our hidden_act for a Hugging Face activation name (GPT-2 uses "gelu_new", BERT "gelu")."""
    if name not in ACTIVATIONS:
        raise ValueError(f"activation {name!r} is not supported ({', '.join(ACTIVATIONS)})")
    return ACTIVATIONS[name]


def hf_activation(ours):
    """The Hugging Face activation name for our hidden_act (the first HF name that maps to it)."""
    return next(hf for hf, o in ACTIVATIONS.items() if o == ours)


def _ours(hc, fields):
    return {o: getattr(hc, t) for o, t in fields.items()}


def _theirs(config, fields):
    return {t: getattr(config, o) for o, t in fields.items()}


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


def _import(rules, sd):
    return {r.ours: r.to_ours(sd) for r in rules}


# ---- decoders -----------------------------------------------------------------------------------------------------

GPT2_FIELDS = {"n_layer": "n_layer", "n_head": "n_head", "n_embd": "n_embd", "block_size": "n_positions",
               "vocab_size": "vocab_size"}
GPT2_LAYER_NORM_EPS = 1e-5  # nn.LayerNorm's default, which model.LayerNorm keeps


def gpt2_rules(config):
    """GPT-2's names are ours; its four projections are Conv1D (transposed Linear weights)."""
    rules = [_same("transformer.wte.weight"), _same("transformer.wpe.weight"), _same("lm_head.weight"),
             *_affine("transformer.ln_f", "transformer.ln_f")]
    for i in range(config.n_layer):
        p = f"transformer.h.{i}."
        for norm in ("ln_1", "ln_2"):
            rules += _affine(p + norm, p + norm)
        for proj in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            rules += _affine(p + proj, p + proj, transpose=True)
    return rules


def gpt2_target(config):
    """GPT2LMHeadModel for a GPT-shaped config of ours: tied head; its biases are zeros when ours has none."""
    return Target("GPT2LMHeadModel", dict(
        _theirs(config, GPT2_FIELDS), activation_function=hf_activation(config.hidden_act),
        layer_norm_epsilon=GPT2_LAYER_NORM_EPS, n_inner=None, resid_pdrop=config.dropout, embd_pdrop=config.dropout,
        attn_pdrop=config.dropout, tie_word_embeddings=True))


def gpt2(cls, name_or_path, **overrides):
    """GPT-2 weights ('gpt2', 'gpt2-medium', ... or a local HF directory) into a GPT-shaped variant."""
    from transformers import GPT2LMHeadModel
    hf = GPT2LMHeadModel.from_pretrained(name_or_path)
    config = cls.config_class(**_ours(hf.config, GPT2_FIELDS), bias=True, dropout=0.0,
                              hidden_act=activation(hf.config.activation_function))
    return build(cls, config, overrides, _import(gpt2_rules(config), hf.state_dict()), partial=True)


LLAMA_FIELDS = {"n_layer": "num_hidden_layers", "n_head": "num_attention_heads", "n_kv_head": "num_key_value_heads",
                "n_embd": "hidden_size", "ffn_hidden": "intermediate_size", "block_size": "max_position_embeddings",
                "vocab_size": "vocab_size", "norm_eps": "rms_norm_eps"}


def llama_rules(config):
    """HF keeps q, k, v apart and stores the q/k rows of each head permuted for its rotate-half RoPE: row (j, i) of
    a head is our row (i, j) (i < head_dim/2, j < 2), so our interleaved pairs (2i, 2i+1) see the same rotation."""
    hd, kv = config.n_embd // config.n_head, config.kv_heads()

    def rope_rows(heads, start):
        return start + torch.arange(heads * hd).view(heads, 2, hd // 2).transpose(1, 2).reshape(-1)

    rows = torch.cat([rope_rows(config.n_head, 0), rope_rows(kv, config.n_embd),
                      config.n_embd + kv * hd + torch.arange(kv * hd)])
    rules = [_same("transformer.wte.weight", "model.embed_tokens.weight"),
             _same("transformer.ln_f.weight", "model.norm.weight"), _same("lm_head.weight")]
    for i in range(config.n_layer):
        p, o = f"model.layers.{i}.", f"transformer.h.{i}."
        rules.append(Rule(o + "attn.c_attn.weight", tuple(p + f"self_attn.{n}_proj.weight" for n in "qkv"),
                          rows=rows))
        for dst, src in (("attn.c_proj", "self_attn.o_proj"), ("mlp.w1", "mlp.gate_proj"), ("mlp.w3", "mlp.up_proj"),
                         ("mlp.w2", "mlp.down_proj"), ("ln_1", "input_layernorm"),
                         ("ln_2", "post_attention_layernorm")):
            rules += _affine(o + dst, p + src, bias=False)
    return rules


def llama_target(config):
    """LlamaForCausalLM for a LLaMA config of ours: no biases, plain RoPE, untied head."""
    return Target("LlamaForCausalLM", dict(
        _theirs(config, LLAMA_FIELDS), num_key_value_heads=config.kv_heads(), intermediate_size=config.hidden(),
        head_dim=config.n_embd // config.n_head, hidden_act="silu", rope_theta=config.rope_theta,
        attention_bias=False, mlp_bias=False, attention_dropout=config.dropout, tie_word_embeddings=False))


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
    config = cls.config_class(**_ours(hc, LLAMA_FIELDS), rope_theta=float(rope["rope_theta"]))
    sd = hf.state_dict()
    sd.setdefault("lm_head.weight", sd["model.embed_tokens.weight"])  # a tied head
    return build(cls, config, overrides, _import(llama_rules(config), sd))


# ---- encoders ---------------------------------------------------------------------------------------------------

ENCODER_FIELDS = {"n_layer": "num_hidden_layers", "n_head": "num_attention_heads", "n_embd": "hidden_size",
                  "ffn_hidden": "intermediate_size", "block_size": "max_position_embeddings",
                  "vocab_size": "vocab_size", "type_vocab_size": "type_vocab_size", "layer_norm_eps": "layer_norm_eps"}
BERT_LAYER = ("attention.output.dense", "attention.output.LayerNorm", "intermediate.dense", "output.dense",
              "output.LayerNorm")  # HF names of attn.c_proj, ln_1, mlp.c_fc, mlp.c_proj, ln_2 in BERT and DeBERTa


def _embedding_rules(e):
    """HF word, position and token-type tables and the embedding LayerNorm under prefix e (BERT, ALBERT); HF always
    has a token-type table, which holds one zero row when ours has none."""
    return [_same("transformer.wte.weight", e + "word_embeddings.weight"),
            _same("transformer.wpe.weight", e + "position_embeddings.weight"),
            _same("transformer.wtt.weight", e + "token_type_embeddings.weight", optional=True),
            *_affine("transformer.ln_emb", e + "LayerNorm")]


def _fused_qkv_rules(o, p):
    """HF's separate query, key and value Linears under p (BERT, ALBERT) as block o's fused c_attn."""
    return [Rule(o + "attn.c_attn." + part, tuple(p + f"{n}.{part}" for n in ("query", "key", "value")),
                 optional=part == "bias") for part in ("weight", "bias")]


def _post_ln_rules(o, p, names=BERT_LAYER):
    """An HF post-LN layer's attention output, FFN and two LayerNorms (under p) as block o's."""
    return [r for dst, src in zip(("attn.c_proj", "ln_1", "mlp.c_fc", "mlp.c_proj", "ln_2"), names, strict=True)
            for r in _affine(o + dst, p + src)]


def _mlm_rules(dense, norm, bias):
    """The MLM transform (dense, LayerNorm) and output bias; the decoder weight is the word embedding matrix."""
    return [*_affine("mlm_dense", dense), *_affine("mlm_ln", norm), _same("mlm_bias", bias)]


def _pair_rules(config, pooler, classifier):
    """The tanh pooler on [CLS] and the pair-task classifier, when the model has a pair task."""
    return [*_affine("pooler", pooler), *_affine("pair_head", classifier)] if config.pair_task != "none" else []


def _encoder_config(cls, hc, **fields):
    return cls.config_class(**{**_ours(hc, ENCODER_FIELDS), "hidden_act": activation(hc.hidden_act), "bias": True,
                               **fields})


def _encoder_target(config):
    return dict(_theirs(config, ENCODER_FIELDS), intermediate_size=config.ffn_hidden or 4 * config.n_embd,
                hidden_act=hf_activation(config.hidden_act), hidden_dropout_prob=config.dropout,
                attention_probs_dropout_prob=config.dropout)


def _pretrained_encoder(path, pretraining, masked_lm):
    """The HF model of a directory: its MLM-only class when the directory says so (no pair task), else the
    pre-training one."""
    hc = pretraining.config_class.from_pretrained(path)
    mlm_only = masked_lm.__name__ in (hc.architectures or ())
    return (masked_lm if mlm_only else pretraining).from_pretrained(path), {"pair_task": "none"} if mlm_only else {}


def bert_rules(config):
    rules = _embedding_rules("bert.embeddings.")
    for i in range(config.n_layer):
        p, o = f"bert.encoder.layer.{i}.", f"transformer.h.{i}."
        rules += _fused_qkv_rules(o, p + "attention.self.") + _post_ln_rules(o, p)
    head = "cls.predictions."
    return (rules + _mlm_rules(head + "transform.dense", head + "transform.LayerNorm", head + "bias")
            + _pair_rules(config, "bert.pooler.dense", "cls.seq_relationship"))


def bert_target(config):
    """BertForPreTraining, or BertForMaskedLM (no pooler, no NSP head) when the model has no pair task."""
    name = "BertForMaskedLM" if config.pair_task == "none" else "BertForPreTraining"
    return Target(name, dict(_encoder_target(config), type_vocab_size=max(config.type_vocab_size, 1)))


def bert(cls, path, **overrides):
    """A local Hugging Face BertForPreTraining (or BertForMaskedLM: pair_task='none') directory."""
    from transformers import BertForMaskedLM, BertForPreTraining
    hf, fields = _pretrained_encoder(path, BertForPreTraining, BertForMaskedLM)
    config = _encoder_config(cls, hf.config, **fields)
    return build(cls, config, overrides, _import(bert_rules(config), hf.state_dict()))


def albert_rules(config):
    p, o = "albert.encoder.albert_layer_groups.0.albert_layers.0.", "transformer.h.0."
    return [*_embedding_rules("albert.embeddings."),
            *_affine("transformer.emb_proj", "albert.encoder.embedding_hidden_mapping_in"),
            *_fused_qkv_rules(o, p + "attention."),
            *_post_ln_rules(o, p, ("attention.dense", "attention.LayerNorm", "ffn", "ffn_output",
                                   "full_layer_layer_norm")),
            *_mlm_rules("predictions.dense", "predictions.LayerNorm", "predictions.bias"),
            *_pair_rules(config, "albert.pooler", "sop_classifier.classifier")]


def albert_target(config):
    """AlbertForPreTraining, or AlbertForMaskedLM when the model has no pair task: one group of one shared layer."""
    name = "AlbertForMaskedLM" if config.pair_task == "none" else "AlbertForPreTraining"
    return Target(name, dict(_encoder_target(config), type_vocab_size=max(config.type_vocab_size, 1),
                             embedding_size=config.emb_dim(), num_hidden_groups=1, inner_group_num=1,
                             classifier_dropout_prob=config.dropout))


def albert(cls, path, **overrides):
    """A local Hugging Face AlbertForPreTraining (or AlbertForMaskedLM: pair_task='none') directory (one layer
    group, one inner layer)."""
    from transformers import AlbertForMaskedLM, AlbertForPreTraining
    hf, fields = _pretrained_encoder(path, AlbertForPreTraining, AlbertForMaskedLM)
    hc = hf.config
    if hc.num_hidden_groups != 1 or hc.inner_group_num != 1:
        raise ValueError("only full cross-layer sharing (num_hidden_groups = inner_group_num = 1) is supported")
    config = _encoder_config(cls, hc, embedding_size=hc.embedding_size, **fields)
    return build(cls, config, overrides, _import(albert_rules(config), hf.state_dict()))


def deberta_rules(config, legacy=True):
    """HF's in_proj rows are per head [q_h; k_h; v_h]; ours are [q (all heads); k; v]. legacy: the MLM head's
    names in transformers' legacy layout (cls.predictions.*) or the newer one (lm_predictions.lm_head.*)."""
    H, hd = config.n_embd, config.n_embd // config.n_head
    rows = torch.arange(3 * H).view(config.n_head, 3, hd).transpose(0, 1).reshape(-1)
    rules = [_same("transformer.wte.weight", "deberta.embeddings.word_embeddings.weight"),
             *_affine("transformer.ln_emb", "deberta.embeddings.LayerNorm"),
             _same("transformer.rel.weight", "deberta.encoder.rel_embeddings.weight")]
    if config.type_vocab_size:
        rules.append(_same("transformer.wtt.weight", "deberta.embeddings.token_type_embeddings.weight"))
    for i in range(config.n_layer):
        p, o = f"deberta.encoder.layer.{i}.", f"transformer.h.{i}."
        a = p + "attention.self."
        rules += [Rule(o + "attn.c_attn.weight", (a + "in_proj.weight",), rows=rows),
                  _same(o + "attn.q_bias", a + "q_bias"), _same(o + "attn.v_bias", a + "v_bias"),
                  *_affine(o + "attn.pos_proj", a + "pos_proj", bias=False),
                  *_affine(o + "attn.pos_q_proj", a + "pos_q_proj"), *_post_ln_rules(o, p)]
    head = "cls.predictions." if legacy else "lm_predictions.lm_head."
    mlm = (head + "transform.dense", head + "transform.LayerNorm") if legacy else (head + "dense", head + "LayerNorm")
    return rules + _mlm_rules(*mlm, head + "bias")


def deberta_target(config):
    """DebertaForMaskedLM (v1: relative attention c2p|p2c, no absolute positions at the input). transformers has no
    Enhanced Mask Decoder, so an emd=True model runs there as emd=False: the last layer (which the EMD re-uses) is
    written, the EMD's absolute position table is not. It has no pair head either."""
    if config.pair_task != "none":
        raise ValueError(f"DebertaForMaskedLM has no pair head: a deberta with pair_task={config.pair_task!r} "
                         "has no Hugging Face form")
    fields = dict(_encoder_target(config), relative_attention=True, position_biased_input=False,
                  pos_att_type=["c2p", "p2c"], max_relative_positions=config.rel_span(), legacy=True)
    if not config.emd:
        return Target("DebertaForMaskedLM", fields)
    return Target("DebertaForMaskedLM", fields, dropped=("transformer.wpe.weight",),
                  note="transformers has no DeBERTa Enhanced Mask Decoder: the export runs without it (emd=False); "
                       "the last layer is written, the EMD's absolute position table is not")


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
    return build(cls, config, overrides, _import(deberta_rules(config, hc.legacy), hf.state_dict()))

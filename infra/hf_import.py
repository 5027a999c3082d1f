"""Hugging Face weights into and out of our models: GPT-2, LLaMA, BERT, ALBERT and DeBERTa (local directories in the
save_pretrained layout, or hub names where a network is available).

Each family has one name mapping, `<family>_rules(config)`: a list of Rules saying which HF tensors each of our
state-dict tensors is made of and how (transposed, concatenated, rows reordered). Its fields have one table too
(`<FAMILY>_FIELDS`, ours -> HF). The importers check the directory's model_type, refuse every config flag our model
does not compute (ValueError naming the flag and its value), read the HF config into ours through the field table,
load the HF weights requiring that they fill the HF model exactly (no missing, unexpected or mis-shaped tensors), and
apply the rules forwards through copy_weights, the one place weights are copied in.
export.py applies the same rules backwards through export_weights, the one place weights are copied out, into the HF
model that `<family>_target(config)` describes. An importer is a classmethod body: the variant class calls it as
`from_pretrained = classmethod(hf_import.<importer>)`, so this module imports no model or variant.
"""
import difflib
import os
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


GPT2_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")


def check_init_from(init_from, own=("scratch", "resume")):
    """ValueError (one line) unless init_from is one of the entry point's own words (own), an existing directory or a
    GPT-2 name: anything else would be taken as a Hugging Face hub name and fail only after minutes of network
    retries."""
    names = [*GPT2_NAMES, *(f"openai-community/{n}" for n in GPT2_NAMES)]
    if init_from in (*own, *names) or os.path.isdir(init_from):
        return
    close = difflib.get_close_matches(init_from, [*own, *names], n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"init_from={init_from!r} is not {', '.join(own)}, an existing directory (Hugging Face weights) "
                     f"or a GPT-2 name ({', '.join(GPT2_NAMES)}, optionally prefixed openai-community/){hint}")


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


def activation(name, flag="hidden_act"):
    """Our hidden_act for a Hugging Face activation name (GPT-2 uses "gelu_new", BERT "gelu"); flag: the HF config
    field it came from, named in the error."""
    if name not in ACTIVATIONS:
        raise ValueError(f"{flag}={name!r} is not supported (only {', '.join(ACTIVATIONS)})")
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


def hf_config(config_class, path, model_type):
    """The HF config of path read as config_class, after checking that the directory's own model_type is
    model_type: transformers reads any config into any class (a LLaMA directory into GPT2Config) and builds the
    model from the fields the two happen to share."""
    found = config_class.get_config_dict(path)[0].get("model_type")
    if found != model_type:
        raise ValueError(f"{path} has model_type={found!r}; this importer reads model_type={model_type!r} only")
    return config_class.from_pretrained(path)


def require(hc, checks):
    """Raise ValueError naming the first HF config flag our model does not compute. checks: (flag, default, ok,
    what our model computes), where ok is the one accepted value or a predicate and default stands for a flag the
    config lacks."""
    for flag, default, ok, what in checks:
        value = getattr(hc, flag, default)
        if not (ok(value) if callable(ok) else value == ok and type(value) is type(ok)):
            raise ValueError(f"{flag}={value!r} is not supported: {what}")


def hf_weights(model_class, path, hc, ignore=()):
    """The state dict of model_class loaded from path with config hc. Every tensor of the model must come from the
    checkpoint and every tensor of the checkpoint must have its place, at its shape: transformers otherwise
    initialises what is missing at random and drops what it does not know. ignore: prefixes of checkpoint tensors
    the model class computes nothing with (a pre-training checkpoint's pair head read into a masked-LM class)."""
    try:  # mis-shaped tensors come back in mismatched_keys
        hf, info = model_class.from_pretrained(path, config=hc, output_loading_info=True, ignore_mismatched_sizes=True)
    except RuntimeError as e:
        raise ValueError(f"{path} does not fit {model_class.__name__}: {' '.join(str(e).split())[:300]}") from None
    info = dict(info, unexpected_keys=[k for k in info.get("unexpected_keys", ()) if not k.startswith(tuple(ignore))])
    problems = [f"{kind.replace('_', ' ')} {', '.join(sorted(map(str, keys))[:3])}"
                for kind in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")
                if (keys := info.get(kind))]
    if problems:
        raise ValueError(f"{path} does not fill {model_class.__name__} exactly: {'; '.join(problems)}")
    return hf.state_dict()


def _tied(what):
    return ("tie_word_embeddings", True, True, what)


def _absolute_positions():
    return ("position_embedding_type", "absolute", "absolute", "learned absolute positions only")


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


def gpt2_checks(hc, tied=True):
    """The GPT-2 config flags our GPT computes one way only. tied: our head shares the token embedding matrix."""
    return [("scale_attn_weights", True, True, "attention scores are scaled by 1/sqrt(head_dim)"),
            ("scale_attn_by_inverse_layer_idx", False, False, "scores are not scaled by 1/(layer index + 1)"),
            ("layer_norm_epsilon", GPT2_LAYER_NORM_EPS, GPT2_LAYER_NORM_EPS,
             f"model.LayerNorm's eps is {GPT2_LAYER_NORM_EPS:g}"),
            ("n_inner", None, lambda v: v in (None, 4 * hc.n_embd), f"the MLP is 4 * n_embd = {4 * hc.n_embd} wide"),
            ("add_cross_attention", False, False, "the blocks have no cross-attention"),
            *([_tied("lm_head shares the token embedding matrix")] if tied else [])]


def gpt2(cls, name_or_path, **overrides):
    """GPT-2 weights ('gpt2', 'gpt2-medium', ... or a local HF directory) into a GPT-shaped variant."""
    from transformers import GPT2LMHeadModel
    hc = hf_config(GPT2LMHeadModel.config_class, name_or_path, "gpt2")
    require(hc, gpt2_checks(hc, cls.tie_embeddings))
    config = cls.config_class(**_ours(hc, GPT2_FIELDS), bias=True, dropout=0.0,
                              hidden_act=activation(hc.activation_function, "activation_function"))
    sd = hf_weights(GPT2LMHeadModel, name_or_path, hc)
    return build(cls, config, overrides, _import(gpt2_rules(config), sd), partial=True)


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
    """A local Hugging Face LlamaForCausalLM directory (LLaMA-1/2 layout: no biases, plain RoPE, SiLU)."""
    from transformers import LlamaForCausalLM
    hc = hf_config(LlamaForCausalLM.config_class, path, "llama")
    rope = getattr(hc, "rope_parameters", None) or {"rope_theta": getattr(hc, "rope_theta", 10000.0)}
    head_dim = hc.hidden_size // hc.num_attention_heads
    require(hc, [("hidden_act", "silu", "silu", "the MLP is SwiGLU (SiLU gate)"),
                 ("attention_bias", False, False, "the attention projections have no biases"),
                 ("mlp_bias", False, False, "the MLP has no biases"),
                 ("head_dim", head_dim, head_dim, f"head_dim is hidden_size / num_attention_heads = {head_dim}"),
                 ("rope_scaling", None, lambda v: not v or v.get("rope_type", v.get("type")) == "default",
                  "plain RoPE only")])
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"rope_parameters rope_type={rope.get('rope_type')!r} is not supported: plain RoPE only")
    config = cls.config_class(**_ours(hc, LLAMA_FIELDS), rope_theta=float(rope["rope_theta"]))
    sd = hf_weights(LlamaForCausalLM, path, hc)
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


def _pretrained_encoder(path, pretraining, masked_lm, model_type, checks, pair_head):
    """(the HF config, the state dict, our fields it implies) of a directory: read by its MLM-only class when the directory says
    so (no pair task), else by the pre-training one, after the config passes checks(hc). pair_head: prefixes of the
    pooler and pair classifier, which a pre-training checkpoint read as MLM-only carries and the MLM-only class
    leaves unused."""
    hc = hf_config(pretraining.config_class, path, model_type)
    require(hc, checks(hc))
    mlm_only = masked_lm.__name__ in (hc.architectures or ())
    sd = hf_weights(masked_lm if mlm_only else pretraining, path, hc, pair_head if mlm_only else ())
    return hc, sd, {"pair_task": "none"} if mlm_only else {}


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


def bert_checks(hc):
    """The BERT config flags our encoder computes one way only."""
    return [("is_decoder", False, False, "attention is bidirectional"),
            ("add_cross_attention", False, False, "the layers have no cross-attention"),
            _absolute_positions(), _tied("the MLM decoder is the word embedding matrix")]


def bert(cls, path, **overrides):
    """A local Hugging Face BertForPreTraining (or BertForMaskedLM: pair_task='none') directory."""
    from transformers import BertForMaskedLM, BertForPreTraining
    hc, sd, fields = _pretrained_encoder(path, BertForPreTraining, BertForMaskedLM, "bert", bert_checks,
                                         ("bert.pooler.", "cls.seq_relationship."))
    config = _encoder_config(cls, hc, **fields)
    return build(cls, config, overrides, _import(bert_rules(config), sd))


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


def albert_checks(hc):
    """The ALBERT config flags our encoder computes one way only."""
    return [("num_hidden_groups", 1, 1, "one layer group, shared by every layer"),
            ("inner_group_num", 1, 1, "one layer in the group"),
            _absolute_positions(), _tied("the MLM decoder is the word embedding matrix")]


def albert(cls, path, **overrides):
    """A local Hugging Face AlbertForPreTraining (or AlbertForMaskedLM: pair_task='none') directory (one layer
    group, one inner layer)."""
    from transformers import AlbertForMaskedLM, AlbertForPreTraining
    hc, sd, fields = _pretrained_encoder(path, AlbertForPreTraining, AlbertForMaskedLM, "albert", albert_checks,
                                         ("albert.pooler.", "sop_classifier."))
    config = _encoder_config(cls, hc, embedding_size=hc.embedding_size, **fields)
    return build(cls, config, overrides, _import(albert_rules(config), sd))


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


def deberta_checks(hc):
    """The DeBERTa (v1) config flags our model computes one way only."""
    return [("relative_attention", False, True, "attention has the relative c2p and p2c terms"),
            ("position_biased_input", True, False, "no absolute positions at the input"),
            ("pos_att_type", None, lambda v: sorted(v or []) == ["c2p", "p2c"], "the relative terms are c2p|p2c"),
            ("talking_head", False, False, "no talking-heads projections"),
            ("embedding_size", hc.hidden_size, hc.hidden_size, "embeddings are hidden_size wide"),
            *([_tied("the MLM decoder is the word embedding matrix")] if getattr(hc, "legacy", True) else [])]


def deberta(cls, path, **overrides):
    """A local Hugging Face DebertaForMaskedLM directory (v1, relative attention with c2p|p2c,
    position_biased_input=False, no talking heads). transformers has no EMD, so the model loads with emd=False."""
    from transformers import DebertaForMaskedLM
    hc = hf_config(DebertaForMaskedLM.config_class, path, "deberta")
    require(hc, deberta_checks(hc))
    span = hc.max_relative_positions if hc.max_relative_positions > 0 else hc.max_position_embeddings
    config = _encoder_config(cls, hc, max_relative_positions=span, emd=False)
    sd = hf_weights(DebertaForMaskedLM, path, hc)
    return build(cls, config, overrides, _import(deberta_rules(config, hc.legacy), sd))

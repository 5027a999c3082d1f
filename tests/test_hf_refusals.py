"""The Hugging Face importers read only what they compute: a directory of another model type, a config flag our model
does not implement, or weights that do not fill the HF model exactly raise one ValueError naming the cause; a
supported config imports with transformers' logits."""
import json

import pytest
import torch

import variants
from model import GPT
from variants.llama import Llama

T = pytest.importorskip("transformers")

GPT2 = dict(n_layer=2, n_head=4, n_embd=32, n_positions=24, vocab_size=61, resid_pdrop=0.0, embd_pdrop=0.0,
            attn_pdrop=0.0)
LLAMA = dict(vocab_size=61, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=24)
ENCODER = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
               max_position_embeddings=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
DEBERTA = dict(relative_attention=True, position_biased_input=False, pos_att_type=["c2p", "p2c"],
               max_relative_positions=4)


def saved(tmp_path, hf_class, config):
    """A transformers model of config with random weights away from the init (biases and norm gains included),
    saved to tmp_path; returns (directory, the model)."""
    torch.manual_seed(0)
    hf = hf_class(config).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.normal_(1.0 if p.dim() == 1 and not name.endswith("bias") else 0.0, 0.1)
    hf.save_pretrained(tmp_path)
    return str(tmp_path), hf


def gpt2_dir(tmp_path, **kw):
    return saved(tmp_path, T.GPT2LMHeadModel, T.GPT2Config(**{**GPT2, **kw}))


# ---- GPT-2 ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("flag,value", [("scale_attn_by_inverse_layer_idx", True), ("scale_attn_weights", False),
                                        ("tie_word_embeddings", False), ("layer_norm_epsilon", 1e-2),
                                        ("layer_norm_epsilon", 1e-6)])
def test_gpt2_flag_our_model_does_not_compute_is_refused(tmp_path, flag, value):
    path, _ = gpt2_dir(tmp_path, **{flag: value})
    with pytest.raises(ValueError, match=rf"{flag}={value!r} is not supported"):
        GPT.from_pretrained(path)


def test_gpt2_checkpoint_missing_a_tensor_is_refused(tmp_path):
    """Weights that leave a tensor of the HF model to its random init."""
    from safetensors.torch import load_file, save_file
    path, _ = gpt2_dir(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    del tensors["transformer.h.1.mlp.c_fc.weight"]
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"missing keys transformer\.h\.1\.mlp\.c_fc\.weight"):
        GPT.from_pretrained(path)


def test_gpt2_checkpoint_whose_shapes_disagree_with_its_config_is_refused(tmp_path):
    path, _ = gpt2_dir(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "vocab_size": 70}))
    with pytest.raises(ValueError, match=r"mismatched keys \('transformer\.wte\.weight'"):
        GPT.from_pretrained(path)


# ---- another model, or a flag our model does not compute -------------------------------------------------------

@pytest.mark.parametrize("hf_class,config,ours,message", [
    ("LlamaForCausalLM", ("LlamaConfig", LLAMA), "gpt", "model_type='llama'"),
    ("LlamaForCausalLM", ("LlamaConfig", {**LLAMA, "hidden_act": "gelu"}), "llama", "hidden_act='gelu' is not supported"),
    # Qwen2 has the LLaMA tensor names plus q/k/v biases
    ("Qwen2ForCausalLM", ("Qwen2Config", LLAMA), "llama", "model_type='qwen2'"),
    ("BertForPreTraining", ("BertConfig", {**ENCODER, "is_decoder": True}), "bert", "is_decoder=True is not supported"),
    ("DebertaV2ForMaskedLM", ("DebertaV2Config", {**ENCODER, **DEBERTA}), "deberta", "model_type='deberta-v2'"),
])
def test_a_directory_the_importer_cannot_represent_is_refused(tmp_path, hf_class, config, ours, message):
    path, _ = saved(tmp_path, getattr(T, hf_class), getattr(T, config[0])(**config[1]))
    with pytest.raises(ValueError, match=message):
        variants.get(ours).model_class.from_pretrained(path)


# ---- what is supported still imports ----------------------------------------------------------------------------

def supported(name, tmp_path):
    """(our model imported from a transformers directory, that transformers model, a function of both giving
    (ours, theirs) logits on one batch)."""
    if name == "gpt2":
        path, hf = gpt2_dir(tmp_path, reorder_and_upcast_attn=True)  # fp32 attention: what ours computes
        return GPT.from_pretrained(path).eval(), hf, lambda m, h, x: (m(x), h(x).logits)
    if name == "llama_tied":
        path, hf = saved(tmp_path, T.LlamaForCausalLM, T.LlamaConfig(**LLAMA, tie_word_embeddings=True,
                                                                     rms_norm_eps=1e-6))
        return Llama.from_pretrained(path).eval(), hf, lambda m, h, x: (m(x), h(x).logits)
    if name == "bert_mlm_of_pretraining":  # a pre-training checkpoint whose config names the MLM-only class
        path, _ = saved(tmp_path, T.BertForPreTraining, T.BertConfig(**ENCODER))
        config = json.loads((tmp_path / "config.json").read_text())
        (tmp_path / "config.json").write_text(json.dumps({**config, "architectures": ["BertForMaskedLM"]}))
        hf = T.BertForMaskedLM.from_pretrained(path).eval()
        model = variants.get("bert").model_class.from_pretrained(path).eval()
        assert model.config.pair_task == "none"
        return model, hf, lambda m, h, x: (m(x)["mlm"], h(input_ids=x).logits)
    if name == "albert":
        path, hf = saved(tmp_path, T.AlbertForPreTraining,
                         T.AlbertConfig(**ENCODER, embedding_size=16, classifier_dropout_prob=0.0))
        return (variants.get("albert").model_class.from_pretrained(path).eval(), hf,
                lambda m, h, x: (m(x)["mlm"], h(input_ids=x).prediction_logits))
    path, hf = saved(tmp_path, T.DebertaForMaskedLM, T.DebertaConfig(**ENCODER, **DEBERTA))
    return (variants.get("deberta").model_class.from_pretrained(path).eval(), hf,
            lambda m, h, x: (m(x)["mlm"], h(input_ids=x).logits))


@pytest.mark.parametrize("name", ["gpt2", "llama_tied", "bert_mlm_of_pretraining", "albert", "deberta"])
def test_supported_configs_import_with_transformers_logits(name, tmp_path):
    model, hf, logits = supported(name, tmp_path)
    torch.manual_seed(1)
    idx = torch.randint(0, 60, (2, 12))
    with torch.no_grad():
        ours, theirs = logits(model, hf, idx)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)

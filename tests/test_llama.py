"""LLaMA and the lecture char GPT: HF parity, causality, paths, GQA cache, spec values, presets, train/sample."""
import json

import pytest
import torch

from infra import checkpoint, configurator
import variants
from conftest import REPO, assert_cached_greedy_equals_uncached, assert_same_outputs_and_grads, future_gradient
from variants.char_gpt import CharGPT, CharGPTConfig
from variants.llama import Llama, LlamaConfig

TINY = dict(n_layer=2, n_head=4, n_kv_head=2, n_embd=32, block_size=24, vocab_size=50, ffn_hidden=48)


def tiny(**kw):
    torch.manual_seed(0)
    return Llama(LlamaConfig(**{**TINY, **kw}))


@pytest.mark.parametrize("n_kv_head", [1, 2, 4])  # MQA, GQA, MHA
def test_parity_with_transformers_llama(tmp_path, n_kv_head):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hc = transformers.LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=n_kv_head, max_position_embeddings=32,
                                  rms_norm_eps=1e-5)
    hf = transformers.LlamaForCausalLM(hc).eval()
    with torch.no_grad():  # non-trivial norm gains, so a swapped norm would show
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    hf.save_pretrained(tmp_path)
    ours = Llama.from_pretrained(str(tmp_path)).eval()
    assert ours.config.kv_heads() == n_kv_head and ours.config.hidden() == 48
    idx = torch.randint(0, 50, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx), hf(idx).logits, atol=1e-4, rtol=0)
    # a cropped context loads too
    assert Llama.from_pretrained(str(tmp_path), block_size=16).config.block_size == 16


@pytest.mark.parametrize("impl", ["sdpa", "dense"])
def test_causal_by_gradients(impl):
    model = tiny(attn_impl=impl)
    idx = torch.randint(0, 50, (2, 16))
    for t in (0, 9):
        future, past = future_gradient(model, idx, t)
        assert future == 0.0 and past > 0.0


def test_sdpa_and_dense_paths_agree_with_gradients():
    idx, tgt = torch.randint(0, 50, (3, 20)), torch.randint(0, 50, (3, 20))
    objective = variants.get("llama").objective
    outs = []
    for impl in ("sdpa", "dense"):
        model = tiny(attn_impl=impl)
        logits, loss = objective.step(model, objective.prepare(model.config, idx, tgt))
        loss.backward()
        outs.append((logits, {n: p.grad for n, p in model.named_parameters()}))
    assert_same_outputs_and_grads(*outs)


def test_gqa_cache_holds_kv_heads_and_uses_absolute_rotary_offsets():
    model = tiny().eval()
    caches = model.make_caches(2, "cpu", torch.float32)
    assert caches[0].k.shape == (2, 2, 24, 8)  # n_kv_head = 2 heads cached, not 4
    idx = torch.randint(0, 50, (2, 12))
    full = model(idx)
    steps = [model(idx[:, :5], caches=caches, last_only=True)]
    for t in range(5, 12):  # each new token is rotated by its absolute position t, not by 0
        steps.append(model(idx[:, t:t + 1], pos=torch.tensor([t]), caches=caches, last_only=True))
    torch.testing.assert_close(torch.cat(steps, 1), full[:, 4:], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("prompt_len,new", [(1, 12), (6, 30)])  # the second outgrows block_size
def test_cached_greedy_equals_uncached(prompt_len, new):
    model = tiny().eval()
    idx = torch.randint(0, 50, (2, prompt_len))
    assert_cached_greedy_equals_uncached(model, idx, new)


def test_structure_follows_the_paper():
    model = tiny()
    assert "wpe" not in model.transformer  # no absolute positions
    assert model.lm_head.weight is not model.transformer.wte.weight  # untied
    assert isinstance(model.transformer.h[0].ln_1, torch.nn.RMSNorm)
    assert all(m.bias is None for m in model.modules() if isinstance(m, torch.nn.Linear))
    # relative positions only: shifting the whole sequence by p rotates q and k alike, so logits are unchanged
    idx = torch.randint(0, 50, (1, 10))
    with torch.no_grad():
        a = model(idx)
        b = model(idx, pos=torch.arange(7, 17))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("size,hidden,params", [("7b", 11008, 6_738_415_616), ("13b", 13824, 13_015_864_320),
                                                ("33b", 17920, 32_528_943_616), ("65b", 22016, 65_285_660_672)])
def test_size_presets_give_the_published_shapes(size, hidden, params):
    values = configurator.parse_args([str(REPO / f"config/llama_{size}.py")])
    config = LlamaConfig(**{k: v for k, v in values.items() if k in LlamaConfig.__dataclass_fields__})
    assert config.hidden() == hidden  # 256 * ceil(8d/3 / 256)
    with torch.device("meta"):  # shapes only, no memory
        assert Llama(config).num_params() == params  # the parameter counts of the released checkpoints


def test_config_errors_are_clear():
    with pytest.raises(ValueError, match="n_kv_head=3 must divide n_head=4"):
        tiny(n_kv_head=3)
    with pytest.raises(ValueError, match="no biases"):
        tiny(bias=True)
    with pytest.raises(ValueError, match="even head dim"):
        tiny(n_embd=20)


def test_train_checkpoint_and_sample(shakespeare_dir, tmp_path, capsys):
    import sample
    import train
    out = tmp_path / "llama"
    train.main([f"--data_dir={shakespeare_dir}", f"--out_dir={out}", "--variant=llama", "--device=cpu",
                "--n_layer=2", "--n_head=4", "--n_kv_head=2", "--n_embd=32", "--block_size=32", "--batch_size=4",
                "--max_iters=15", "--lr_decay_iters=15", "--warmup_iters=2", "--eval_interval=15", "--eval_iters=2",
                "--learning_rate=3e-3"])
    evals = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"eval"' in x]
    assert evals[-1]["val/loss"] < evals[0]["val/loss"] - 0.3
    ckpt = checkpoint.load(out / "ckpt.pt")
    model = checkpoint.build_model(ckpt, variants.get)
    assert isinstance(model, Llama) and model.config.n_kv_head == 2
    capsys.readouterr()
    sample.main([f"--out_dir={out}", "--start=ROMEO:", "--num_samples=1", "--max_new_tokens=20", "--temperature=0"])
    assert capsys.readouterr().out.startswith("ROMEO:")


# ----------------------------------------------------------------------------------------------------------------
# the lecture's char-level GPT

def test_char_gpt_matches_the_lecture_model():
    with torch.device("meta"):
        model = CharGPT(CharGPTConfig())
    # gpt.py prints 10.788929 M parameters (token + position embeddings, 6 blocks, ln_f, biased lm_head)
    assert model.num_params(non_embedding=False) == 10_788_929
    assert model.lm_head.bias is not None and model.lm_head.weight is not model.transformer.wte.weight
    assert isinstance(model.transformer.h[0].mlp.act, torch.nn.ReLU)
    assert model.transformer.h[0].attn.c_attn.bias is None  # Head: key/query/value without bias
    small = CharGPT(CharGPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, dropout=0.0))
    future, past = future_gradient(small, torch.randint(0, 65, (2, 8)), 3)
    assert future == 0.0 and past > 0.0


@pytest.mark.parametrize("name,block,batch", [("ctx8", 8, 4), ("ctx256", 256, 64)])
def test_char_gpt_configs(name, block, batch):
    values = configurator.parse_args([str(REPO / f"config/shakespeare_char_gpt_{name}.py")])
    assert values["variant"] == "char_gpt" and values["block_size"] == block and values["batch_size"] == batch
    assert variants.get("char_gpt").model_class is CharGPT

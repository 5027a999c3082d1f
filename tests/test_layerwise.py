"""Layer-wise sliding windows (docs/layerwise.md): schedule tables, window semantics, banded kernel == dense reference with
gradients, causality and locality, rolling-cache generation, GPT-2 import with windows, checkpoints, config errors."""

import pytest
import torch

from infra import checkpoint
import variants
from attention import AttnMask, RollingKVCache, banded_attention, dense_attention, sdpa_attention
from conftest import (
    assert_cached_greedy_equals_uncached, assert_same_outputs_and_grads, embedding_grad, future_gradient, run)
from variants.layerwise_window import LayerwiseConfig, LayerwiseGPT, layer_windows

F_ = None  # full causal
WINDOW_TABLE = {  # docs/layerwise.md §1, layers 0..11
    "full": [F_] * 12,
    "half": [F_] * 6 + [256, 128, 64, 32, 16, 16],
    "quarter": [F_] * 3 + [512, 256, 128, 64, 32, 16, 8, 4, 4],
    "aggressive": [F_, 512, 256, 128, 64, 32, 16, 8, 4, 2, 1, 1],
}
TINY = dict(n_layer=4, n_head=2, n_embd=16, block_size=40, vocab_size=37, dropout=0.0)


def tiny(**kw):
    torch.manual_seed(0)
    return LayerwiseGPT(LayerwiseConfig(**{**TINY, **kw}))


def windows_of(model):
    return [b.attn.window for b in model.transformer.h]


@pytest.mark.parametrize("schedule", list(WINDOW_TABLE))
def test_12_layer_schedules_equal_spec_table(schedule):
    assert layer_windows(LayerwiseConfig(schedule=schedule)) == WINDOW_TABLE[schedule]
    model = LayerwiseGPT(LayerwiseConfig(schedule=schedule, n_layer=12, n_head=2, n_embd=8, block_size=8,
                                         vocab_size=11))
    assert windows_of(model) == WINDOW_TABLE[schedule]


def test_seed_json_and_progressive_forms_reproduce_the_presets():
    for name, (start_layer, start_window, end_window) in {"half": (6, 512, 16), "quarter": (3, 1024, 4),
                                                           "aggressive": (1, 1024, 1)}.items():
        as_json = (f'{{"type": "progressive", "start_layer": {start_layer}, "start_window": {start_window}, '
                   f'"end_window": {end_window}}}')
        assert layer_windows(LayerwiseConfig(schedule=as_json)) == WINDOW_TABLE[name]
        prog = LayerwiseConfig(schedule="progressive", start_layer=start_layer, start_window=start_window,
                               end_window=end_window)
        assert layer_windows(prog) == WINDOW_TABLE[name]
    # docs/layerwise.md §1's prose: the first masked layer keeps start_window
    assert layer_windows(LayerwiseConfig(schedule="half", first_window_is_start=True))[5:] == \
        [None, 512, 256, 128, 64, 32, 16]
    assert layer_windows(LayerwiseConfig(n_layer=3, schedule='{"windows": [null, 8, 0]}')) == [None, 8, None]


def test_other_depths_lists_and_patterns():
    # same formula, start layer scaled with depth (ceil(start * n / 12))
    assert layer_windows(LayerwiseConfig(n_layer=6, schedule="aggressive")) == [None, 512, 256, 128, 64, 32]
    assert layer_windows(LayerwiseConfig(n_layer=6, schedule="half")) == [None] * 3 + [256, 128, 64]
    assert layer_windows(LayerwiseConfig(n_layer=24, schedule="quarter"))[:7] == [None] * 6 + [512]
    assert layer_windows(LayerwiseConfig(n_layer=3, windows=[0, 5, 2])) == [None, 5, 2]
    assert layer_windows(LayerwiseConfig(n_layer=6, block_size=64, window_pattern="SSL")) == [32, 32, None] * 2
    assert layer_windows(LayerwiseConfig(n_layer=5, window_pattern="L,100,S", short_window=7)) == \
        [None, 100, 7, None, 100]
    assert layer_windows(LayerwiseConfig(n_layer=2, window_pattern="LS", long_window=64, short_window=8)) == [64, 8]


@pytest.mark.parametrize("kw,message", [
    (dict(schedule="halfish"), "unknown schedule 'halfish'"),
    (dict(windows=[1, 2]), "windows lists 2 layers but n_layer=4"),
    (dict(windows=[1, 2, -3, 4]), "windows must be integers >= 0"),
    (dict(window_pattern="SXL"), "token 'X'"),
    (dict(schedule="half", windows=[1, 1, 1, 1]), "set only one of"),
    (dict(schedule='{"type": "linear"}'), "type must be 'progressive'"),
    (dict(schedule='{"start_layer": 1}'), "lacks start_window, end_window"),
    (dict(schedule='{"start_layer": 1,'), "does not parse"),
    (dict(schedule="progressive", end_window=0), "end_window must be >= 1"),
    (dict(attn_block=-1), "attn_block must be >= 0"),
])
def test_config_errors_are_clear(kw, message):
    with pytest.raises(ValueError, match=message):
        tiny(**kw)


def test_config_errors_through_train_cli(tmp_path):
    proc = run(["train.py", "--variant=layerwise", "--schedule=agressive", f"--out_dir={tmp_path}"], check=False)
    assert proc.returncode == 2 and "unknown schedule 'agressive'" in proc.stderr


@pytest.mark.parametrize("w", [1, 3, 7, 40])
def test_window_mask_semantics(w):
    attn = tiny(windows=[w] * 4).transformer.h[0].attn
    T = 12
    keep = attn.mask(T, T, 0).dense_allowed(T, T, "cpu")
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    assert torch.equal(keep, (j <= i) & (j >= (i - w + 1).clamp(min=0)))
    assert keep.sum().item() == attn.attended_entries(T)
    if w >= T:  # a window the sequence cannot exceed is plain causal (and takes the causal fast path)
        assert attn.mask(T, T, 0).is_plain_causal()


@pytest.mark.parametrize("B,T,w,block", [(2, 50, 7, 8), (1, 64, 1, 16), (2, 40, 13, 5), (3, 33, 2, 32), (1, 90, 30, 4)])
def test_banded_kernel_equals_dense_with_gradients(B, T, w, block):
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, 3, T, 8, requires_grad=True) for _ in range(3))
    results = []
    for fn in (lambda: banded_attention(q, k, v, AttnMask(window=w), w, block),
               lambda: dense_attention(q, k, v, AttnMask(window=w))):
        y = fn()
        results.append((y.detach(), torch.autograd.grad(y.pow(2).sum(), (q, k, v))))
    assert_same_outputs_and_grads(*results)


def test_banded_kernel_only_computes_reachable_keys(sdpa_calls):
    seen = sdpa_calls
    q = torch.randn(1, 2, 256, 8)
    y = sdpa_attention(q, q, q, AttnMask(window=16, block=32))
    assert len(seen) == 1  # one batched call, no python loop over blocks
    (qs, ks), = seen
    assert qs[-2] == 32 and ks[-2] == 32 + 16 - 1 and qs[0] == 256 // 32  # query blocks folded into the batch
    torch.testing.assert_close(y, dense_attention(q, q, q, AttnMask(window=16)), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("schedule", [dict(schedule="aggressive", attn_block=2), dict(windows=[3, 1, 0, 9], attn_block=2),
                                      dict(windows=[3, 1, 0, 9], attn_block=16)])  # banded kernel; masked SDPA
def test_fast_and_dense_model_paths_agree_with_gradients(schedule):
    idx = torch.randint(0, 37, (3, 40))
    tgt = torch.randint(0, 37, (3, 40))
    objective = variants.get("layerwise").objective
    outs = []
    for impl in ("sdpa", "dense"):
        model = tiny(attn_impl=impl, **schedule)
        logits, loss = objective.step(model, objective.prepare(model.config, idx, tgt))
        loss.backward()
        outs.append((logits, {n: p.grad.clone() for n, p in model.named_parameters()}))
    assert_same_outputs_and_grads(*outs)


@pytest.mark.parametrize("impl", ["sdpa", "dense"])
def test_causal_and_window_limited_by_gradients(impl):
    model = tiny(attn_impl=impl, windows=[3, 2, 3, 1], attn_block=2)
    idx = torch.randint(0, 37, (2, 40))
    for t in (0, 17, 38):
        future, past = future_gradient(model, idx, t)
        assert future == 0.0 and past > 0.0
    # receptive field of stacked windows: sum(w - 1) = 5 tokens back; nothing older may matter
    g = embedding_grad(model, 30, idx=idx)
    assert g[:25].max() == 0.0 and g[25] > 0 and g[30] > 0


def test_flops_count_only_the_window():
    full, aggressive = tiny(), tiny(windows=[0, 4, 2, 1])
    T = 40

    def attention_flops(model):  # forward QK^T and AV FLOPs of one length-T sequence, all layers
        return sum(b.attn.attention_flops(T) for b in model.transformer.h)
    per_pair = 4 * 16  # 4 * head_dim * n_head
    assert attention_flops(full) == 4 * per_pair * T * (T + 1) // 2
    assert attention_flops(aggressive) == per_pair * (T * (T + 1) // 2 + (10 + 36 * 4) + (3 + 38 * 2) + T)


@pytest.mark.parametrize("prompt_len,new", [(1, 25), (9, 20), (30, 25)])  # the last outgrows block_size=40
def test_rolling_cache_greedy_equals_uncached(prompt_len, new):
    model = tiny(windows=[4, 0, 2, 1]).eval()
    idx = torch.randint(0, 37, (2, prompt_len))
    assert_cached_greedy_equals_uncached(model, idx, new)


def test_rolling_cache_keeps_only_the_window_and_matches_full_forward():
    model = tiny(windows=[4, 0, 2, 1]).eval()
    idx = torch.randint(0, 37, (2, 30))
    full = model(idx)
    caches = model.make_caches(2, "cpu", torch.float32)
    assert [type(c).__name__ for c in caches] == ["RollingKVCache", "KVCache", "RollingKVCache", "RollingKVCache"]
    steps = [model(idx[:, :9], caches=caches, last_only=True)]
    for t in range(9, 30):
        steps.append(model(idx[:, t:t + 1], pos=torch.tensor([t]), caches=caches, last_only=True))
    torch.testing.assert_close(torch.cat(steps, 1), full[:, 8:], atol=1e-5, rtol=1e-4)
    assert [caches[0].len, caches[2].len, caches[3].len] == [3, 1, 0]
    assert caches[0].k.shape == (2, 2, 3, 8)


def test_rolling_cache_unit():
    cache = RollingKVCache(2)  # a window of 3 keeps the last 2 keys
    k = torch.arange(5.0).view(1, 1, 5, 1)
    keys, _ = cache.append(k, k)
    assert keys.size(-2) == 5 and cache.len == 2 and cache.k.flatten().tolist() == [3.0, 4.0]
    keys, _ = cache.append(k[..., :1, :] + 10, k[..., :1, :])
    assert keys.flatten().tolist() == [3.0, 4.0, 10.0] and cache.len == 2


def make_hf_gpt2(path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=3, n_head=2, n_embd=16, n_positions=48, vocab_size=61,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    hf.save_pretrained(path)
    return hf


def test_finetune_init_from_hf_gpt2_applies_windows(tmp_path):
    hf = make_hf_gpt2(tmp_path)
    idx = torch.randint(0, 61, (2, 48))
    with torch.no_grad():
        theirs = hf(idx).logits
        full = LayerwiseGPT.from_pretrained(str(tmp_path)).eval()
        assert windows_of(full) == [None] * 3
        torch.testing.assert_close(full(idx), theirs, atol=1e-4, rtol=1e-4)  # full schedule == GPT-2
        windowed = LayerwiseGPT.from_pretrained(str(tmp_path), windows=[0, 4, 2], block_size=40).eval()
        assert windows_of(windowed) == [None, 4, 2] and windowed.config.windows == [0, 4, 2]
        assert windowed.config.block_size == 40 and windowed.transformer.wpe.weight.shape == (40, 16)
        ours = windowed(idx[:, :40])
    # the same GPT-2 weights, position table cropped to block_size
    full_sd = full.state_dict()
    for name, tensor in windowed.state_dict().items():
        torch.testing.assert_close(tensor, full_sd[name][:40] if name == "transformer.wpe.weight" else full_sd[name],
                                   atol=0, rtol=0, msg=name)
    torch.testing.assert_close(ours[:, :2], theirs[:, :2], atol=1e-4, rtol=1e-4)  # windows do not bind yet
    assert (ours[:, 10:] - theirs[:, 10:40]).abs().max() > 1e-3  # they do later
    with pytest.raises(ValueError, match="windows lists 4 layers but n_layer=3"):
        LayerwiseGPT.from_pretrained(str(tmp_path), windows=[8, 2, 2, 2])
    with pytest.raises(ValueError, match="exceeds the checkpoint's 48 positions"):
        LayerwiseGPT.from_pretrained(str(tmp_path), windows=[8, 2, 2], block_size=64)


def test_finetune_gpt2_with_windows_through_train(tmp_path, shakespeare_dir):
    # GPT-2's depth (12 layers), so a 12-entry windows list fits the config train.py validates before loading
    hf_dir, out = tmp_path / "hf", tmp_path / "out"
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=12, n_head=2, n_embd=16, n_positions=64,
                                                         vocab_size=80)).save_pretrained(hf_dir)
    windows = [0] * 6 + [16, 8, 8, 4, 2, 1]
    run(["train.py", "--variant=layerwise", f"--init_from={hf_dir}", f"--windows={windows}", "--block_size=32",
         f"--out_dir={out}", f"--data_dir={shakespeare_dir}", "--max_iters=2", "--eval_iters=1", "--eval_interval=2",
         "--batch_size=2", "--warmup_iters=0", "--lr_decay_iters=10", "--learning_rate=1e-4"])
    ckpt = checkpoint.load(out / "ckpt.pt")
    model = checkpoint.build_model(ckpt, variants.get)
    assert ckpt["iter_num"] == 2 and model.config.block_size == 32
    assert windows_of(model) == [None] * 6 + [16, 8, 8, 4, 2, 1]


def test_checkpoint_round_trip_keeps_windows(tmp_path):
    from dataclasses import asdict
    model = tiny(schedule='{"type": "progressive", "start_layer": 1, "start_window": 16, "end_window": 2}').eval()
    path = tmp_path / "ckpt.pt"
    checkpoint.save({"variant": "layerwise", "model_args": asdict(model.config), "model": model.state_dict()}, path)
    loaded = checkpoint.build_model(checkpoint.load(path), variants.get).eval()
    assert windows_of(loaded) == windows_of(model) == [None, 8, 4, 2]
    idx = torch.randint(0, 37, (1, 40))
    torch.testing.assert_close(loaded(idx), model(idx))


def test_train_from_scratch_loss_goes_down(tmp_path, shakespeare_dir):
    out = tmp_path / "scratch"
    run(["train.py", "--variant=layerwise", "--schedule=aggressive", "--n_layer=4", "--n_head=2", "--n_embd=32",
         "--block_size=64", f"--out_dir={out}", f"--data_dir={shakespeare_dir}", "--max_iters=30", "--eval_iters=2",
         "--eval_interval=30", "--batch_size=8", "--warmup_iters=0", "--lr_decay_iters=30", "--learning_rate=3e-3"])
    import json
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [e for e in evals if e["kind"] == "eval"]
    assert evals[-1]["val/loss"] < evals[0]["val/loss"] - 0.3
    model = checkpoint.build_model(checkpoint.load(out / "ckpt.pt"), variants.get)
    assert windows_of(model) == [None, 512, 256, 128]

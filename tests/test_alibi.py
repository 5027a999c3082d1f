"""ALiBi (variants/alibi.py): slopes, the mask against its definition, path equality, causality, cached decoding,
FLOP accounting, training on real text, and the registry entry."""
import math

import numpy as np
import pytest
import torch
from conftest import REPO, assert_cached_greedy_equals_uncached, assert_same_outputs_and_grads, future_gradient

from infra import configurator, flops
import variants
from attention import dense_attention
from model import GPT, GPTConfig
from variants.alibi import AlibiGPT, alibi_slopes


def config(**kw):
    base = dict(block_size=32, vocab_size=50, n_layer=2, n_head=4, n_embd=32, dropout=0.0, bias=True)
    return GPTConfig(**{**base, **kw})


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    return variants.get("alibi").build(config(**kw))


# ---- slopes ------------------------------------------------------------------------------------------------------
def test_slopes_power_of_two_heads_are_the_papers():
    assert alibi_slopes(8).tolist() == [1 / 2, 1 / 4, 1 / 8, 1 / 16, 1 / 32, 1 / 64, 1 / 128, 1 / 256]
    assert alibi_slopes(4).tolist() == [1 / 4, 1 / 16, 1 / 64, 1 / 256]
    assert alibi_slopes(1).tolist() == [1 / 256]


@pytest.mark.parametrize("n", [6, 12])
def test_slopes_other_head_counts_interpolate(n):
    # the paper: the closest power of two p's slopes, then every other slope of 2p
    p = 2 ** int(math.log2(n))
    geometric = lambda k: [2 ** (-8 / k * (h + 1)) for h in range(k)]  # noqa: E731
    expected = geometric(p) + geometric(2 * p)[0::2][:n - p]
    torch.testing.assert_close(alibi_slopes(n), torch.tensor(expected), rtol=0, atol=0)
    if n == 6:  # written out: 4 heads' slopes, then slopes 1 and 3 of 8 heads
        assert alibi_slopes(6).tolist() == [1 / 4, 1 / 16, 1 / 64, 1 / 256, 1 / 2, 1 / 8]


# ---- the mask equals its definition ------------------------------------------------------------------------------
def by_hand(q, k, slopes, q_offset):
    """softmax(q k^T / sqrt(hd) - m_h (i - j)) with -inf where j > i, i and j absolute positions."""
    Tq, Tk, hd = q.size(-2), k.size(-2), q.size(-1)
    i = torch.arange(Tq)[:, None] + q_offset
    j = torch.arange(Tk)[None, :]
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd) - slopes[:, None, None] * (i - j)
    scores = scores.masked_fill(j > i, float("-inf"))
    return torch.softmax(scores, dim=-1)


@pytest.mark.parametrize("Tq,Tk,q_offset", [(16, 16, 0), (3, 12, 9), (1, 32, 31)])
def test_mask_matches_definition(Tq, Tk, q_offset):
    model = tiny(attn_impl="dense", n_head=4)
    attn = model.transformer.h[0].attn
    slopes = torch.tensor([2 ** (-8 / 4 * (h + 1)) for h in range(4)])
    mask = attn.mask(Tq, Tk, q_offset)
    assert mask.causal and mask.window is None and mask.bias is None
    assert mask.distance_bias.shape == (4, q_offset + Tq)  # every distance present, nothing beyond
    torch.manual_seed(1)
    q, k, v = (torch.randn(2, 4, T, 8) for T in (Tq, Tk, Tk))
    _, weights = dense_attention(q, k, v, mask, return_weights=True)
    torch.testing.assert_close(weights, by_hand(q, k, slopes, q_offset), atol=1e-6, rtol=1e-5)


def test_attention_layer_forward_uses_the_mask():
    # one layer's forward (dense kernel) equals the projections around the hand-computed probabilities
    model = tiny(attn_impl="dense")
    attn = model.transformer.h[1].attn
    x, T = torch.randn(2, 20, 32), 20
    q, k, v = attn.qkv(x, torch.arange(T))
    probs = by_hand(q, k, torch.tensor([2 ** (-2 * (h + 1)) for h in range(4)]), 0)
    expected = attn.c_proj((probs @ v).transpose(1, 2).reshape(2, T, 32))
    torch.testing.assert_close(attn(x, torch.arange(T)), expected, atol=1e-5, rtol=1e-4)


# ---- fast path = reference, causality, decoding -------------------------------------------------------------------
def logits_and_grads(model, idx):
    model.zero_grad()
    logits = model(idx)
    logits.pow(2).mean().backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("T", [32, 13])
def test_sdpa_equals_dense_outputs_and_grads(T):
    sdpa, dense = tiny(attn_impl="sdpa"), tiny(attn_impl="dense")
    dense.load_state_dict(sdpa.state_dict())
    idx = torch.randint(0, 50, (3, T), generator=torch.Generator().manual_seed(2))
    assert_same_outputs_and_grads(logits_and_grads(sdpa, idx), logits_and_grads(dense, idx))


@pytest.mark.parametrize("impl", ["sdpa", "dense"])
def test_no_logit_depends_on_a_future_token(impl):
    model = tiny(attn_impl=impl)
    idx = torch.randint(0, 50, (2, 24), generator=torch.Generator().manual_seed(3))
    for t in (0, 10, 22):
        future, past = future_gradient(model, idx, t)
        assert future == 0.0 and past > 0


def test_cached_decoding_equals_uncached():
    model = tiny(seed=4, block_size=16).eval()
    idx = torch.randint(0, 50, (2, 5), generator=torch.Generator().manual_seed(5))
    assert_cached_greedy_equals_uncached(model, idx, 30)  # runs past block_size (16)
    # logits too: a prefix, then one token at a time through the caches, against one full forward pass
    seq = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        full = model(seq)
        caches = model.make_caches(2, seq.device, torch.float32)
        steps = [model(seq[:, :6], caches=caches)]
        steps += [model(seq[:, t:t + 1], pos=torch.arange(t, t + 1), caches=caches) for t in range(6, 16)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-4)


# ---- FLOPs -------------------------------------------------------------------------------------------------------
def test_flops_match_flop_counter_on_the_dense_path():
    model = tiny(attn_impl="dense")
    B, T = 2, 24
    idx = torch.randint(0, 50, (B, T))
    measured, analytic = flops.counter_check(model, lambda: model(idx), B * T)
    assert measured == analytic
    # the analytic count, by hand: every pair's QK^T and AV in each layer, plus 2 FLOPs per weight of every Linear
    attention = sum(b.attn.attention_flops(T, pairs=T * T) for b in model.transformer.h)
    linear_weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert measured * B * T == B * (attention + 2 * linear_weights * T)


# ---- training ----------------------------------------------------------------------------------------------------
def test_loss_goes_down_on_tiny_shakespeare(shakespeare_dir):
    from data.common import load_meta, open_split
    meta = load_meta(shakespeare_dir)
    train, val = open_split(shakespeare_dir, "train", meta), open_split(shakespeare_dir, "val", meta)
    spec = variants.get("alibi")
    T, B = 32, 8
    torch.manual_seed(0)
    model = spec.build(config(block_size=T, vocab_size=spec.objective.vocab_size(meta["vocab_size"]), n_layer=2,
                              n_head=4, n_embd=32, bias=False))
    rng = np.random.default_rng(0)

    def batch(data):
        starts = rng.integers(0, len(data) - T - 1, B)
        x = torch.from_numpy(np.stack([data[s:s + T] for s in starts]).astype(np.int64))
        y = torch.from_numpy(np.stack([data[s + 1:s + T + 1] for s in starts]).astype(np.int64))
        return spec.objective.prepare(model.config, x, y)

    held_out = [batch(val) for _ in range(4)]

    def val_loss():
        model.eval()
        with torch.no_grad():
            loss = sum(spec.objective.step(model, b)[1].item() for b in held_out) / len(held_out)
        model.train()
        return loss

    before = val_loss()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(40):
        _, loss = spec.objective.step(model, batch(train))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = val_loss()
    assert before > 4.0 and after < before - 0.8, (before, after)  # ln(65) = 4.17 at init


# ---- registry, state, config -------------------------------------------------------------------------------------
def test_registered_without_position_embedding():
    assert "alibi" in variants.names()
    spec = variants.get("alibi")
    assert spec.model_class is AlibiGPT and spec.objective.causal
    model = tiny()
    assert "wpe" not in model.transformer
    # the bias table is a buffer built from the config, not state: the state dict is GPT's minus wpe
    plain = set(GPT(config()).state_dict())
    assert set(model.state_dict()) == plain - {"transformer.wpe.weight"}
    assert all(b.attn.alibi.shape == (4, 32) for b in model.transformer.h)


def test_weights_carry_to_a_longer_context():
    # train short, test long: nothing depends on block_size, so the weights load into a longer model unchanged
    short = tiny(block_size=16).eval()
    long = tiny(block_size=64).eval()
    long.load_state_dict(short.state_dict())
    idx = torch.randint(0, 50, (2, 64))
    with torch.no_grad():
        torch.testing.assert_close(long(idx[:, :16]), short(idx[:, :16]))
        assert torch.isfinite(long(idx)).all()


def test_config_recipe():
    values = configurator.read_config_file(REPO / "config" / "shakespeare_char_alibi.py")
    cpu = configurator.read_config_file(REPO / "config" / "train_shakespeare_char_cpu.py")
    assert values["variant"] == "alibi" and values["out_dir"] != cpu["out_dir"]
    same = lambda d: {k: v for k, v in d.items() if k not in ("variant", "out_dir")}  # noqa: E731
    assert same(values) == same(cpu)  # the CPU recipe, only the variant (and where it writes) differ
    model_config = configurator.build(variants.get(values["variant"]).config_class, values)
    model_config.validate()
    assert (model_config.block_size, model_config.n_head) == (64, 4)

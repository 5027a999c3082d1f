"""FlexAttention (attn_impl="flex") against the dense reference, on CPU: torch's eager Flex forward (it has no CPU
backward), fp32, without autograd. Every masking variant is built twice with the same weights and must give the same
logits (<= 1e-5), and the same tokens and per-step logits with KV caches where the variant decodes. Also: the block
masks (cached, shared by layers, tiles really skipped), which masks sdpa_attention routes to Flex on CUDA, and the
one-line refusal to train through Flex on CPU."""
import warnings

import pytest
import torch

import attention
import variants
from attention import (
    FLEX_NO_CPU_BACKWARD, FLEX_NO_DROPOUT, AttnMask, check_trainable, dense_attention, flex_attention,
    flex_block_mask, flex_pays, use_flex)
from model import GPTConfig
from objectives import Batch, DuoMask, NextTokenLM, duo_allowed
from variants.duo_predict import GroupedDuoMask, group_streams

SHAPE = dict(n_layer=2, n_head=2, n_embd=16, block_size=48, vocab_size=40, dropout=0.0)
SPAN = dict(softness_span_mask=4.0, span_init=6.0, span_block=8)  # reach ~ 6 + 4 -> 16 of 48: a limited reach
DECODERS = {
    "gpt": ("gpt", {}),
    "char_gpt": ("char_gpt", {"dropout": 0.2}),  # its default dropout; eval() turns it off
    "llama_gqa": ("llama", {"bias": False, "n_head": 4, "n_kv_head": 2, "multiple_of": 16}),
    "layerwise_windows": ("layerwise", {"n_layer": 4, "windows": [3, 0, 7, 1]}),
    "layerwise_pattern": ("layerwise", {"n_layer": 3, "window_pattern": "SSL", "short_window": 5}),
    "layerwise_half": ("layerwise", {"n_layer": 12, "schedule": "half"}),
    "layerwise_quarter": ("layerwise", {"n_layer": 12, "schedule": "quarter"}),
    "layerwise_aggressive": ("layerwise", {"n_layer": 12, "schedule": "aggressive"}),
    "span": ("adaptive_span", SPAN),
    "span_periodic": ("adaptive_span", {**SPAN, "use_triangle_wave_masking": True}),
    "alibi": ("alibi", {"n_head": 4}),
    "drift_diffusion": ("drift_diffusion", {}),
    "parallel_mean": ("parallel", {}),
    "parallel_concat_batched": ("parallel", {"bottleneck_method": "concat", "pair_impl": "batched"}),
    "rotating_head_lr": ("rotating_head", {"rotatinghead": "lr"}),
    "rotating_head_gp": ("rotating_head", {"rotatinghead": "gp", "rope_freq_norm": True}),
    "duo_predict_plain": ("duo_predict", {}),  # outside its layout: an ordinary causal LM
}
# decoding where the variant's cache or mask differs (the others decode as gpt does)
DECODING = ["gpt", "char_gpt", "llama_gqa", "layerwise_windows", "layerwise_aggressive", "span", "span_periodic",
            "alibi", "parallel_concat_batched", "rotating_head_gp", "duo_predict_plain"]
ENCODERS = {"bert": {}, "albert": {"embedding_size": 8}, "deberta": {"max_relative_positions": 6}}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny shapes gain nothing from threads, and on a busy machine a second thread costs waits on every op."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def build(name, impl, **fields):
    torch.manual_seed(0)
    spec = variants.get(name)
    config = spec.config_class(**{**SHAPE, **fields, "attn_impl": impl})
    if name in ENCODERS:
        config.vocab_size = spec.objective.vocab_size(SHAPE["vocab_size"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duo's readme pattern warns that it leaks
        return spec.build(config)


def pair(name, **fields):
    """(flex model, dense model) with the same weights, in eval mode. Learned masks are moved off their init so that
    heads differ (a head mix-up shows) and the periodic wave really drops distances."""
    dense = build(name, "dense", **fields)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in dense.named_parameters():
            if n.endswith(("span_params", "period_w", "ratio_w")):
                p.add_(torch.randn(p.shape, generator=g))
    flex = build(name, "flex", **fields)
    flex.load_state_dict(dense.state_dict())
    return flex.eval(), dense.eval()


def assert_close(a, b):
    assert a.shape == b.shape
    assert (a - b).abs().max().item() <= 1e-5


def tokens(B=2, T=SHAPE["block_size"], seed=0):
    return torch.randint(0, SHAPE["vocab_size"], (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("case", list(DECODERS))
def test_logits_equal_dense(case):
    name, fields = DECODERS[case]
    flex, dense = pair(name, **fields)
    assert flex.transformer.h[0].attn.kernel is flex_attention
    x = tokens()
    with torch.inference_mode():
        assert_close(flex(x), dense(x))


@pytest.mark.parametrize("case", DECODING)
def test_kv_cache_decoding_equals_dense_uncached(case):
    """Cached greedy generation through Flex (a prefill, then one query per step against rolling or full caches)
    gives dense uncached decoding's tokens, and every cached step's logits equal the dense forward's, also once
    rolling caches have dropped keys (reaches here are at most 16)."""
    name, fields = DECODERS[case]
    flex, dense = pair(name, **fields)
    prompt = tokens(B=1, T=5)
    assert torch.equal(flex.generate(prompt, 12, temperature=0, use_cache=True),
                       dense.generate(prompt, 12, temperature=0, use_cache=False))
    x, prefill = tokens(T=24), 6
    with torch.inference_mode():
        caches = flex.make_caches(2, x.device, torch.float32)
        steps = [flex(x[:, :prefill], pos=torch.arange(prefill), caches=caches)]
        steps += [flex(x[:, t:t + 1], pos=torch.arange(t, t + 1), caches=caches) for t in range(prefill, x.size(1))]
        assert_close(torch.cat(steps, dim=1), dense(x))


@pytest.mark.parametrize("variant", ["code", "readme"])
def test_duo_interleaved_layout_equals_dense(variant):
    flex, dense = pair("duo_predict", duo_mask_variant=variant)
    objective = variants.get("duo_predict").objective
    x, y = tokens(T=20), tokens(T=20, seed=1)
    batch = objective.prepare(flex.config, x, y)
    assert isinstance(batch.mask, DuoMask) and batch.idx.size(1) == 39
    with torch.inference_mode():
        assert_close(objective.logits(flex, batch), objective.logits(dense, batch))


def test_grouped_duo_pattern_is_the_code_pattern_reordered():
    for N in (1, 2, 7, 20):
        L = 2 * N - 1
        order = group_streams(torch.arange(L)[:, None])[:, 0]  # grouped position -> interleaved position
        interleaved = duo_allowed(L, "code")
        assert torch.equal(GroupedDuoMask(originals=N).dense_allowed(L, L, "cpu"), interleaved[order][:, order])


@pytest.mark.parametrize("name", list(ENCODERS))
@pytest.mark.parametrize("padded", [False, True])
def test_encoders_with_key_padding_equal_dense(name, padded):
    """Padding arrives as the mask's (B, 1, 1, T) bias: Flex excludes those keys in its block mask (DeBERTa's bias
    varies over queries too, so there it is only a score_mod)."""
    flex, dense = pair(name, **ENCODERS[name])
    T = SHAPE["block_size"]
    idx = torch.randint(5, 40, (2, T), generator=torch.Generator().manual_seed(0))
    inputs = {"idx": idx}
    if padded:
        keep = torch.ones(2, T, dtype=torch.long)
        keep[1, 30:] = 0
        inputs["attention_mask"] = keep
    if flex.config.type_vocab_size:
        inputs["token_types"] = (torch.arange(T) >= T // 2).long().expand(2, T)
    with torch.inference_mode():
        out, ref = flex(**inputs), dense(**inputs)
    assert out.keys() == ref.keys()
    for key in out:
        assert_close(out[key], ref[key])


DOC_CASES = {
    "gpt": ("gpt", {}),
    "layerwise": ("layerwise", {"windows": [0, 6]}),
    "span_periodic": ("adaptive_span", {**SPAN, "use_triangle_wave_masking": True}),
    "alibi": ("alibi", {}),
    "llama": ("llama", {"bias": False, "multiple_of": 16}),
}


@pytest.mark.parametrize("case", list(DOC_CASES))
@pytest.mark.parametrize("restart", [False, True])
def test_document_segments_equal_dense(case, restart):
    name, fields = DOC_CASES[case]
    flex, dense = pair(name, **fields)
    x = tokens()
    x[0, [9, 30, 31]] = 0  # separators: several documents per row, an empty one too
    x[1, 40] = 0
    batch = NextTokenLM().documents(Batch(x, x), 0, restart_positions=restart)
    with torch.inference_mode():
        assert_close(flex(x, pos=batch.pos, mask=batch.mask), dense(x, pos=batch.pos, mask=batch.mask))


def test_block_masks_cached_and_shared_by_layers(monkeypatch):
    """A tensor-free pattern (window, reach) is built once per (pattern, lengths) and shared by every layer and call;
    a mask reading tensors (documents) is built once per forward pass, not once per layer."""
    built, real = [], attention.create_block_mask
    monkeypatch.setattr(attention, "create_block_mask", lambda *a, **kw: built.append(a[3:5]) or real(*a, **kw))
    monkeypatch.setattr(attention, "_block_masks", type(attention._block_masks)())
    flex, _ = pair("layerwise", n_layer=4, windows=[5, 5, 0, 5])
    x = tokens()
    with torch.inference_mode():
        flex(x)
        flex(x)
    assert built == [(48, 48)] * 2  # window 5 and plain causal, each once
    assert flex_block_mask(AttnMask(window=5), 48, 48, 2, "cpu") is flex_block_mask(AttnMask(window=5), 48, 48, 3,
                                                                                     "cpu")
    built.clear()
    seg = torch.zeros(2, 48, dtype=torch.long)
    seg[:, 20:] = 1
    with torch.no_grad():  # (inference tensors keep no version counter, so this test runs with plain ones)
        flex(x, mask=AttnMask(causal=True, segments=seg))
        assert built == [(48, 48)] * 2  # documents + window 5 and documents + causal: the layers share them
        seg.add_(0)  # an in-place change is a new pattern
        flex(x, mask=AttnMask(causal=True, segments=seg))
    assert len(built) == 4
    built.clear()
    bert, _ = pair("bert", n_layer=3)
    keep = torch.ones(2, 48, dtype=torch.long)
    keep[1, 40:] = 0
    with torch.inference_mode():
        bert(tokens(), attention_mask=keep)
    assert built == [(48, 48)]  # key padding: once for the three layers


def tiles(block_mask):
    return int(block_mask.to_dense().sum())


def test_block_masks_skip_the_tiles_no_pair_reaches():
    T, n = 1024, 8  # 8 x 8 tiles of 128
    causal = flex_block_mask(AttnMask(), T, T, 1, "cpu")
    assert tiles(causal) == n * (n + 1) // 2
    assert tiles(flex_block_mask(AttnMask(window=128), T, T, 1, "cpu")) == 2 * n - 1
    table = torch.zeros(2, 200)  # a span's (H, D) log-mask: reach 200 keys
    assert tiles(flex_block_mask(AttnMask(distance_bias=table), T, T, 1, "cpu")) == 3 * n - 3
    pad = torch.zeros(2, 1, 1, T)
    pad[1, ..., 300:] = torch.finfo(torch.float32).min  # row 1 holds 300 tokens: 3 key tiles
    padded = flex_block_mask(AttnMask(causal=False, bias=pad), T, T, 2, "cpu")
    assert tiles(padded) == n * n + n * 3
    L, n = 2 * 1024 - 1, 16  # duo: grouped, originals causal, masks over originals causal, masks over masks the
    grouped = tiles(flex_block_mask(GroupedDuoMask(originals=1024), L, L, 1, "cpu"))  # diagonal: 87 of 256 tiles
    interleaved = tiles(flex_block_mask(DuoMask(), L, L, 1, "cpu"))  # interleaved: 151, more than the triangle
    assert grouped < 0.35 * n * n and n * (n + 1) // 2 < interleaved


def test_routing_to_flex_on_cuda():
    """Which masks auto_attention hands to Flex on CUDA (the rule itself runs anywhere); on CPU nothing changes."""
    pad = torch.zeros(2, 1, 1, 16)
    content = torch.zeros(2, 2, 16, 16)
    pays = {
        "plain causal": (AttnMask(), False),
        "bidirectional, no padding": (AttnMask(causal=False), False),
        "window": (AttnMask(window=4), True),
        "span / ALiBi distance bias": (AttnMask(distance_bias=torch.zeros(2, 16)), True),
        "documents": (AttnMask(segments=torch.zeros(2, 16, dtype=torch.long)), True),
        "key padding": (AttnMask(causal=False, bias=pad), True),
        "DeBERTa content bias": (AttnMask(causal=False, bias=content), False),
        "duo": (DuoMask(), True),
        "duo grouped": (GroupedDuoMask(originals=8), True),
    }
    for label, (mask, expected) in pays.items():
        assert flex_pays(mask, 16) is expected, label
        assert use_flex(torch.zeros(1, 2, 16, 8), mask) is False, label  # CPU
    assert flex_pays(AttnMask(window=4, q_offset=20), 1) is False  # one decoding query: SDPA


def test_auto_takes_flex_where_use_flex_says_and_sdpa_never_does(monkeypatch):
    """The routing itself, on any machine: with use_flex answering yes (as on CUDA), "auto" calls flex_attention and
    "sdpa" still runs SDPA; with no, both run SDPA."""
    calls = []
    monkeypatch.setattr(attention, "flex_attention", lambda q, k, v, mask, **kw: calls.append(1) or q)
    q, mask = torch.randn(1, 2, 16, 8), AttnMask(window=4)
    for flex in (True, False):
        monkeypatch.setattr(attention, "use_flex", lambda *a, answer=flex: answer)
        calls.clear()
        attention.auto_attention(q, q, q, mask)
        attention.sdpa_attention(q, q, q, mask)
        assert len(calls) == flex


def test_training_through_flex_on_cpu_refused_in_one_line():
    for device in ("cpu", torch.device("cpu")):
        with pytest.raises(ValueError) as e:
            check_trainable("flex", device)
        assert str(e.value) == FLEX_NO_CPU_BACKWARD and "\n" not in str(e.value) and "--attn_impl=auto" in str(e.value)
    with pytest.raises(ValueError, match="no attention dropout"):
        check_trainable("flex", "cuda", dropout=0.1)
    check_trainable("flex", "cuda:1")
    check_trainable("sdpa", "cpu", dropout=0.1)
    check_trainable("dense", "cpu")
    model = build("gpt", "flex").train()
    with pytest.raises(ValueError) as e:  # a forward that could be backpropagated fails at once, at the first layer
        model(tokens())
    assert str(e.value) == FLEX_NO_CPU_BACKWARD
    with pytest.raises(ValueError) as e:
        flex_attention(*(torch.zeros(1, 1, 4, 8) for _ in range(3)), AttnMask(), dropout_p=0.1)
    assert str(e.value) == FLEX_NO_DROPOUT


def test_attn_impl_choices():
    GPTConfig(attn_impl="flex").validate()
    with pytest.raises(ValueError, match="attn_impl must be one of auto, sdpa, flex, dense"):
        GPTConfig(attn_impl="flx").validate()


def test_flex_kernel_matches_dense_on_raw_masks():
    """The translation on its own: offsets (cached queries), non-causal reach, scale, a per-key bias with finite
    values, a distance table with -inf entries, and a head-broadcast table."""
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 2, 7, 8), torch.randn(2, 2, 19, 8), torch.randn(2, 2, 19, 8)
    table = torch.randn(2, 9)
    table[0, 3] = float("-inf")
    key = torch.randn(2, 1, 1, 19)
    key[0, ..., 5] = float("-inf")
    masks = [AttnMask(q_offset=12), AttnMask(q_offset=12, window=5), AttnMask(causal=False, window=4, q_offset=12),
             AttnMask(q_offset=12, distance_bias=table), AttnMask(q_offset=12, distance_bias=table[:1]),
             AttnMask(q_offset=12, bias=key), AttnMask(causal=False, bias=key, distance_bias=table)]
    with torch.inference_mode():
        for mask in masks:
            assert_close(flex_attention(q, k, v, mask, scale=0.3), dense_attention(q, k, v, mask, scale=0.3))

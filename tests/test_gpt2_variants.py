"""The four GPT-2 variants of docs/gpt2_variants.md: drift-diffusion, parallel, duo-predict, rotating head."""
import math
import warnings
from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from infra import checkpoint
import objectives
import variants
from attention import AttnMask, dense_attention, sdpa_attention
from conftest import assert_cached_greedy_equals_uncached, assert_same_outputs_and_grads, embedding_grad, run
from objectives import DuoMask, InterleavedLM, NextTokenLM
from variants import duo_predict as duo
from variants.rotating_head import gp_frequencies

V = 40
TINY = dict(n_layer=2, n_head=2, n_embd=16, block_size=12, vocab_size=V, dropout=0.0)
CAUSAL_SETUPS = [
    ("drift_diffusion", {}), ("drift_diffusion", {"baseline_each_head": False, "apply_diffusion": False}),
    ("parallel", {"bottleneck_method": "mean"}), ("parallel", {"bottleneck_method": "concat", "pair_impl": "batched"}),
    ("parallel", {"bottleneck_method": "add", "n_layer": 4}),
    ("rotating_head", {"rotatinghead": "lr"}), ("rotating_head", {"rotatinghead": "gp", "rope_freq_norm": True}),
    ("duo_predict", {}),  # plain mode: an ordinary causal LM
]


def build(name, seed=0, **kw):
    torch.manual_seed(seed)
    spec = variants.get(name)
    return spec.build(spec.config_class(**{**TINY, **kw}))


def plain_lm_step(model, x, y):
    """(logits, loss) of next-token LM on plain token blocks: every variant here, duo-predict in its plain mode."""
    lm = NextTokenLM()
    return lm.step(model, lm.prepare(model.config, x, y))


def duo_batch(model, x, y):
    """The interleaved duo Batch of originals x and next tokens y."""
    return variants.get("duo_predict").objective.prepare(model.config, x, y)


def duo_inputs(model, x, y):
    """The model inputs of the interleaved duo layout (for embedding_grad)."""
    b = duo_batch(model, x, y)
    return dict(idx=b.idx, pos=b.pos, mask=b.mask)


# ---------------------------------------------------------------------------------------------------------------
# every causal variant: causality, fast == dense with gradients, cached generation, save/load

@pytest.mark.parametrize("name,kw", CAUSAL_SETUPS)
@pytest.mark.parametrize("impl", ["sdpa", "dense"])
def test_causal_by_gradients(name, kw, impl):
    idx = torch.randint(0, V, (2, 12))
    model = build(name, attn_impl=impl, **kw).eval()  # eval: diffusion noise off
    for t in (0, 5, 10):
        g = embedding_grad(model, t, idx=idx)
        assert g[t + 1:].max() == 0.0
        assert g[:t + 1].min() > 0.0


@pytest.mark.parametrize("name,kw", CAUSAL_SETUPS)
def test_fast_and_dense_paths_agree_with_gradients(name, kw):
    idx, tgt = torch.randint(0, V, (3, 12)), torch.randint(0, V, (3, 12))
    outs = []
    for impl in ("sdpa", "dense"):
        model = build(name, attn_impl=impl, **kw).eval()
        logits, loss = plain_lm_step(model, idx, tgt)
        loss.backward()
        outs.append((logits, {n: p.grad for n, p in model.named_parameters()}))
    assert_same_outputs_and_grads(*outs)


@pytest.mark.parametrize("name,kw", CAUSAL_SETUPS)
def test_cached_greedy_equals_uncached(name, kw, prompt_len=4, new=11):  # outgrows block_size: crop + recompute
    model = build(name, **kw).eval()
    idx = torch.randint(0, V - 1, (2, prompt_len))
    assert_cached_greedy_equals_uncached(model, idx, new)


@pytest.mark.parametrize("name,kw", CAUSAL_SETUPS)
def test_cached_logits_match_full_forward(name, kw):
    """Cached decoding at the right position offsets (rotary angles, parallel caches left then right)."""
    model = build(name, **kw).eval()
    idx = torch.randint(0, V, (2, 10))
    full = model(idx)
    caches = model.make_caches(2, "cpu", torch.float32)
    steps = [model(idx[:, :4], caches=caches)]
    steps += [model(idx[:, t:t + 1], pos=torch.tensor([t]), caches=caches) for t in range(4, 10)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name,kw", CAUSAL_SETUPS[::2] + [("duo_predict", {"duo_loss": "hf_double_shift"})])
def test_checkpoint_save_load(name, kw, tmp_path):
    model = build(name, **kw).eval()
    state = {"variant": name, "model_args": asdict(model.config), "model": model.state_dict()}
    checkpoint.save(state, tmp_path / "ckpt.pt")  # as train.py writes it (format version, checksum)
    loaded = checkpoint.build_model(checkpoint.load(tmp_path / "ckpt.pt"), variants.get, dropout=0.0).eval()
    idx = torch.randint(0, V - 1, (2, 12))
    assert type(loaded) is type(model) and loaded.config == model.config
    torch.testing.assert_close(loaded(idx), model(idx), atol=0, rtol=0)


@pytest.mark.parametrize("name,kw,message", [
    ("drift_diffusion", {"apply_drift": False, "apply_diffusion": False}, "needs apply_drift or apply_diffusion"),
    ("parallel", {"n_layer": 3}, "n_layer must be even, got 3"),
    ("parallel", {"bottleneck_method": "max"}, "bottleneck_method must be mean, concat or add"),
    ("parallel", {"pair_impl": "vmap"}, "pair_impl must be sequential or batched"),
    ("rotating_head", {"rotatinghead": "xy"}, "rotatinghead must be lr or gp"),
    ("rotating_head", {"n_embd": 18, "n_head": 2}, "even head_dim"),
    ("duo_predict", {"duo_mask_variant": "paper"}, "duo_mask_variant must be code or readme"),
    ("duo_predict", {"duo_loss": "hf"}, "duo_loss must be intended or hf_double_shift"),
    ("duo_predict", {"mask_token_id": V}, "mask_token_id must be in"),
])
def test_config_errors(name, kw, message):
    with pytest.raises(ValueError, match=message):
        build(name, **kw)


# ---------------------------------------------------------------------------------------------------------------
# drift-diffusion (docs/gpt2_variants.md §1)

def test_drift_diffusion_parameters_and_init():
    model = build("drift_diffusion", n_layer=2, n_head=8, n_embd=512)
    a = model.transformer.h[0].attn
    assert a.drift_param.shape == a.baseline.shape == a.diffusion_param.shape == (8, 64)
    assert abs(a.drift_param.std().item() - 1) < 0.1 and abs(a.diffusion_param.std().item() - 1) < 0.1
    assert abs(a.baseline.std().item() - 1e-3) < 1e-4
    plain = build("gpt", n_head=8, n_embd=512)
    assert model.num_params() - plain.num_params() == 2 * 3 * 8 * 64  # 3 (H, hd) tensors per layer
    assert not hasattr(build("drift_diffusion", apply_diffusion=False, baseline_each_head=False).transformer.h[0]
                       .attn.baseline, "shape")


def test_drift_formula_and_diffusion_train_only():
    """attend = the plain kernel's per-head outputs y, then drift (and, in training, diffusion) on y."""
    a = build("drift_diffusion").transformer.h[0].attn
    q, k, v = torch.randn(3, 3, 2, 5, 8).unbind(0)
    mask = AttnMask(causal=True)
    y = dense_attention(q, k, v, mask)
    gate = torch.sigmoid(a.drift_param)[:, None]
    a.eval()
    torch.testing.assert_close(a.attend(q, k, v, mask), y + gate * (y - a.baseline[:, None]))  # eval: no noise
    a.train()
    torch.manual_seed(1)
    noisy = a.attend(q, k, v, mask)
    torch.manual_seed(1)
    eps = torch.randn_like(y)
    torch.testing.assert_close(noisy, y + gate * (y - a.baseline[:, None]) + a.diffusion_param[:, None] * eps)
    b = build("drift_diffusion", baseline_each_head=False, apply_diffusion=False).transformer.h[0].attn.train()
    torch.testing.assert_close(b.attend(q, k, v, mask), y * (1 + torch.sigmoid(b.drift_param)[:, None]))


def test_diffusion_gradient_reaches_sigma_only_in_training():
    model = build("drift_diffusion", apply_drift=False)
    idx = torch.randint(0, V, (2, 12))
    model.train()
    plain_lm_step(model, idx, idx)[1].backward()
    assert model.transformer.h[0].attn.diffusion_param.grad.abs().sum() > 0
    model.zero_grad()
    model.eval()
    plain_lm_step(model, idx, idx)[1].backward()
    assert model.transformer.h[0].attn.diffusion_param.grad is None or \
        model.transformer.h[0].attn.diffusion_param.grad.abs().sum() == 0


# ---------------------------------------------------------------------------------------------------------------
# parallel (docs/gpt2_variants.md §2)

@pytest.mark.parametrize("method", ["mean", "concat", "add"])
def test_parallel_pair_wiring(method):
    model = build("parallel", n_layer=4, bottleneck_method=method).eval()
    x = torch.randn(2, 6, 16)
    pos = torch.arange(6)
    h = model.transformer.h
    merge = {"mean": lambda a, b: (a + b) / 2, "add": lambda a, b: a + b,
             "concat": lambda a, b: model.bottleneck(torch.cat((a, b), -1))}[method]
    expected = x
    for i in (0, 2):
        expected = merge(h[i](expected, pos), h[i + 1](expected, pos))
    torch.testing.assert_close(model.run_blocks(x, pos), expected)
    shared = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.in_features == 32]
    assert len(shared) == (1 if method == "concat" else 0)  # ONE bottleneck for all stages


def test_parallel_batched_pair_equals_sequential_with_gradients():
    idx, tgt = torch.randint(0, V, (3, 12)), torch.randint(0, V, (3, 12))
    outs = []
    for impl in ("sequential", "batched"):
        model = build("parallel", n_layer=4, bottleneck_method="concat", pair_impl=impl)
        logits, loss = plain_lm_step(model, idx, tgt)
        loss.backward()
        outs.append((logits, {n: p.grad for n, p in model.named_parameters()}))
    assert_same_outputs_and_grads(*outs)


def test_parallel_flops_count_the_shared_bottleneck_per_stage():
    """The ONE concat bottleneck runs once per stage (n_layer / 2 times), every other Linear once per token."""
    model = build("parallel", n_layer=4, bottleneck_method="concat", attn_impl="dense")
    T = 12
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randint(0, V, (1, T)))
    per_token = sum(2 * m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    per_token += 2 * model.bottleneck.weight.numel() * (4 // 2 - 1)  # counted once above, applied in 2 stages
    dense_attn = 4 * 4 * 16 * T * T  # the dense path computes all T*T pairs in each of the 4 layers
    assert counter.get_total_flops() == per_token * T + dense_attn


# ---------------------------------------------------------------------------------------------------------------
# rotating head (docs/gpt2_variants.md §4)

def test_gp_frequencies_spec_values():
    f = gp_frequencies(16, 64)
    base = 10000.0 ** (-torch.arange(32) * 2 / 64)
    assert f.shape == (16, 32)
    torch.testing.assert_close(f[0], base)
    torch.testing.assert_close(f[-1], base * 0.1)
    torch.testing.assert_close(f[5], base * 10 ** (-5 / 15))
    model = build("rotating_head", rotatinghead="gp")
    assert not any("freqs" in k for k in model.state_dict())  # fixed: a non-persistent buffer
    assert model.transformer.h[1].attn.freqs.requires_grad is False


def test_rotation_is_interleaved_per_head_and_keeps_wpe():
    model = build("rotating_head", rotatinghead="lr")
    a = model.transformer.h[0].attn
    assert "wpe" in model.transformer and a.freqs.shape == (2, 4) and a.freqs.requires_grad
    q = torch.randn(1, 2, 3, 8)
    pos = torch.tensor([0, 4, 9])
    rq, rk = a.rotate(q, q.clone(), pos)
    torch.testing.assert_close(rq, rk)
    h, t, i = 1, 2, 3  # pair (6, 7) of head 1 at position 9
    phi = 9 * a.freqs[h, i]
    x0, x1 = q[0, h, t, 2 * i], q[0, h, t, 2 * i + 1]
    torch.testing.assert_close(rq[0, h, t, 2 * i], x0 * phi.cos() - x1 * phi.sin())
    torch.testing.assert_close(rq[0, h, t, 2 * i + 1], x0 * phi.sin() + x1 * phi.cos())
    torch.testing.assert_close(rq[0, :, 0], q[0, :, 0])  # position 0: no rotation


def test_rope_freq_norm_normalises_each_head():
    model = build("rotating_head", rotatinghead="lr", rope_freq_norm=True, n_head=4, n_embd=64)
    f = model.transformer.h[0].attn.frequencies()
    torch.testing.assert_close(f.mean(-1), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(f.var(-1, unbiased=False), torch.ones(4), atol=1e-3, rtol=0)
    assert model.transformer.h[0].attn.freq_norm.weight.shape == (8,)  # one affine shared by the heads


def test_gp_cached_tables_match_recomputed_angles():
    a = build("rotating_head", rotatinghead="gp").transformer.h[0].attn
    pos = torch.tensor([3, 7, 11])
    cos, sin = a.cos_sin(pos)
    angles = pos[:, None].float() * a.freqs[:, None, :]
    torch.testing.assert_close(cos, angles.cos())
    torch.testing.assert_close(sin, angles.sin())


# ---------------------------------------------------------------------------------------------------------------
# duo-predict (docs/gpt2_variants.md §3)

CODE_MASK_L7 = [[1, 0, 0, 0, 0, 0, 0], [0, 1, 1, 0, 0, 0, 0], [1, 0, 1, 0, 0, 0, 0], [1, 0, 0, 1, 1, 0, 0],
                [1, 0, 1, 0, 1, 0, 0], [1, 0, 1, 0, 0, 1, 1], [1, 0, 1, 0, 1, 0, 1]]
README_MASK_8X8 = [[1, 1, 0, 0, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0, 0, 0],
                   [1, 0, 1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1, 0, 0], [1, 0, 1, 0, 1, 1, 1, 0],
                   [1, 1, 1, 1, 1, 1, 1, 1], [1, 0, 1, 0, 1, 0, 1, 1]]


def test_duo_masks_match_spec_and_seed_readme():
    assert objectives.duo_allowed(7, "code").int().tolist() == CODE_MASK_L7
    assert objectives.duo_allowed(8, "readme").int().tolist() == README_MASK_8X8
    assert DuoMask(variant="code").dense_allowed(7, 7, "cpu").int().tolist() == CODE_MASK_L7
    for L in range(3, 22, 2):
        m = objectives.duo_allowed(L, "code")
        assert not m[0::2, 1::2].any()  # originals never see masks
        assert all(not m[2 * k + 1, 2 * k] for k in range((L - 1) // 2))  # a mask never sees the token it hides


def test_duo_layout_targets_positions_and_vocab():
    obj = variants.get("duo_predict").objective
    assert isinstance(obj, InterleavedLM) and obj.fills
    assert obj.vocab_size(50257) == 50258  # <|MASK|> appended, not padded: it is the last id
    model = build("duo_predict")
    M = objectives.mask_token_id(model.config)
    assert M == V - 1
    assert objectives.mask_token_id(build("duo_predict", mask_token_id=7).config) == 7
    x = torch.tensor([[10, 11, 12, 13]])
    y = torch.tensor([[11, 12, 13, 14]])
    b = obj.prepare(model.config, x, y)
    assert isinstance(b.mask, DuoMask) and b.mask.variant == "code"
    assert b.idx.tolist() == [[10, M, 11, M, 12, M, 13]]
    assert b.targets.tolist() == [[11, 10, 12, 11, 13, 12, 14]]  # original -> next token, mask -> hidden token
    assert b.pos.tolist() == [0, 0, 1, 1, 2, 2, 3]  # t_k and the mask after it share position k
    assert torch.equal(b.next_tokens, y)
    with pytest.warns(UserWarning, match="leak"):
        readme = build("duo_predict", duo_mask_variant="readme")
    assert obj.prepare(readme.config, x, y).mask.variant == "readme"
    hf = obj.prepare(build("duo_predict", duo_loss="hf_double_shift").config, x, y).targets
    assert hf.tolist() == [[10, 12, 11, 13, 12, -1, -1]]  # original copies t_k, mask -> t_{k+2} (docs/gpt2_variants.md §3.4)
    with pytest.raises(ValueError, match="block_size"):
        obj.prepare(model.config, torch.zeros(1, 13, dtype=torch.long), torch.zeros(1, 13, dtype=torch.long))


@pytest.mark.parametrize("N,block", [(2, 128), (7, 128), (12, 5), (9, 1)])
def test_duo_fast_path_equals_dense_with_gradients(N, block):
    idx = torch.randint(0, V - 1, (2, N))
    outs = []
    for impl in ("sdpa", "dense"):
        model = build("duo_predict", attn_impl=impl, duo_block=block)
        batch = duo_batch(model, idx, torch.randint(0, V - 1, (2, N)))
        logits, loss = variants.get("duo_predict").objective.step(model, batch)
        loss.backward()
        outs.append((logits, {n: p.grad for n, p in model.named_parameters()}))
    assert_same_outputs_and_grads(*outs)


@pytest.mark.parametrize("variant", ["code", "readme"])
def test_duo_attn_impl_routes_the_interleaved_pattern(variant, monkeypatch):
    """attn_impl picks the route: sdpa sends the code pattern through duo_code_attention, which never materialises the
    (2N-1)^2 pattern; dense (and the readme pattern on either) builds it once per layer. Same outputs either way."""
    built = []
    real = DuoMask.dense_allowed

    def spy(self, Tq, Tk, device):
        built.append((Tq, Tk))
        return real(self, Tq, Tk, device)

    monkeypatch.setattr(DuoMask, "dense_allowed", spy)
    x, y = torch.randint(0, V - 1, (2, 9)), torch.randint(0, V - 1, (2, 9))
    outs = {}
    for impl in ("sdpa", "dense"):
        built.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the readme pattern warns that it leaks
            model = build("duo_predict", attn_impl=impl, duo_mask_variant=variant).eval()
        assert model.transformer.h[0].attn.kernel is {"sdpa": sdpa_attention, "dense": dense_attention}[impl]
        outs[impl] = model(**duo_inputs(model, x, y))
        fast = impl == "sdpa" and variant == "code"
        assert built == ([] if fast else [(17, 17)] * TINY["n_layer"])
    torch.testing.assert_close(outs["sdpa"], outs["dense"], atol=1e-5, rtol=1e-4)


def test_duo_fast_path_builds_no_dense_mask(monkeypatch):
    seen = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kw):
        seen.append((q.size(-2), k.size(-2), None if attn_mask is None else tuple(attn_mask.shape)))
        return real(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(duo.F, "scaled_dot_product_attention", spy)
    N, block = 64, 16
    q = torch.randn(1, 1, 2 * N - 1, 8)
    duo.duo_code_attention(q, q, q, block=block)
    assert seen[0] == (N, N, None)  # originals: one causal call, no mask tensor
    masks = [s[2] for s in seen[1:]]
    assert len(masks) == -(-(N - 1) // block) and all(m[0] <= block for m in masks)
    assert sum(m[0] * m[1] for m in masks) < (2 * N - 1) ** 2 / 3  # vs the dense (2N-1)^2 pattern


def test_duo_code_mask_causality_and_readme_leak():
    N = 6
    idx = torch.randint(0, V - 1, (1, N))
    for impl in ("sdpa", "dense"):
        for k in (0, 2, 5):
            model = build("duo_predict", attn_impl=impl)
            g = embedding_grad(model, 2 * k, **duo_inputs(model, idx, idx))
            assert g[2 * k + 1:].sum() == 0 and g[1::2].sum() == 0  # original t_k: no future, no mask
            assert g[0:2 * k + 1:2].min() > 0
        for k in (0, 3):  # the mask after t_k: only t_<k, itself and t_{k+1} (directly or through depth)
            model = build("duo_predict", attn_impl=impl)
            g = embedding_grad(model, 2 * k + 1, **duo_inputs(model, idx, idx))
            assert g[2 * k + 3:].sum() == 0 and g[2 * k + 2] > 0 and g[2 * k + 1] > 0
    # the readme pattern is NOT causal: original t_0 already depends on t_1 (via the mask) at two layers
    with pytest.warns(UserWarning, match="leak"):
        model = build("duo_predict", duo_mask_variant="readme")
    g = embedding_grad(model, 0, **duo_inputs(model, idx, idx))
    assert g[2] > 0, "expected the readme pattern to leak the next original token"


def test_duo_mask_stream_sees_its_hidden_token_through_depth():
    """A finding, not a wish: with the code pattern the mask after t_k never attends t_k directly, but it attends
    t_{k+1}, whose hidden state (causal over originals) has attended t_k. One layer: no dependence; two: there is."""
    idx = torch.randint(0, V - 1, (1, 6))
    for n_layer, leaks in ((1, False), (2, True)):
        model = build("duo_predict", n_layer=n_layer)
        g = embedding_grad(model, 2 * 2 + 1, **duo_inputs(model, idx, idx))
        assert (g[2 * 2] > 0) == leaks


def test_duo_eval_metrics_use_original_positions():
    model = build("duo_predict").eval()
    obj = variants.get("duo_predict").objective
    x, y = torch.randint(0, V - 1, (2, 8)), torch.randint(0, V - 1, (2, 8))
    batch = obj.prepare(model.config, x, y)
    logits, loss = obj.step(model, batch)
    m = obj.metrics(logits, batch)
    ce = F.cross_entropy(logits[:, 0::2].reshape(-1, V), y.reshape(-1))
    assert m["loss"][1] == 16 and math.isclose(m["loss"][0] / m["loss"][1], ce.item(), rel_tol=1e-5)
    mask_ce = F.cross_entropy(logits[:, 1::2].reshape(-1, V), x[:, :-1].reshape(-1))
    assert math.isclose(m["mask_loss"][0] / m["mask_loss"][1], mask_ce.item(), rel_tol=1e-5)
    both = F.cross_entropy(logits.reshape(-1, V), batch.targets.reshape(-1))
    assert math.isclose(loss.item(), both.item(), rel_tol=1e-5)  # training loss: one mean over both streams
    # originals never see masks, so plain-mode logits equal the interleaved ones at original positions
    torch.testing.assert_close(model(x), logits[:, 0::2], atol=1e-5, rtol=1e-4)


def test_duo_fill_mask():
    model = build("duo_predict").eval()
    obj = variants.get("duo_predict").objective
    out = obj.fill_mask(model, [[1, 2, 3], [4, 5], [6]], top_k=3)
    assert len(out) == 2 and all(len(c) == 3 for c in out)
    assert all(t != objectives.mask_token_id(model.config) for c in out for t, _ in c)
    assert all(c[0][1] >= c[1][1] >= c[2][1] > 0 for c in out)
    # each gap is predicted by the mask standing in for it: hole h of originals [1 2 3 M 4 5 M 6] is mask 2h+1
    x = torch.tensor([[1, 2, 3, V - 1, 4, 5, V - 1, 6]])
    logits = model(**duo_inputs(model, x, x))[0, [2 * 3 + 1, 2 * 6 + 1]]
    logits[:, V - 1] = float("-inf")
    assert [c[0][0] for c in out] == logits.argmax(-1).tolist()
    with pytest.raises(ValueError, match="text after the last mask"):
        obj.fill_mask(model, [[1, 2], []])


@pytest.mark.parametrize("impl,case", [("dense", "even"), ("sdpa", "even"), ("dense", "cache"), ("sdpa", "cache")])
def test_duo_pattern_rejects_input_that_is_not_one_whole_interleaved_sequence(impl, case):
    """The duo pattern is defined for a whole interleaved sequence [t0, M, ..., t_{N-1}] (odd length 2N-1, no KV
    cache); anything else is refused with a ValueError by either kernel rather than computed with a wrong pattern."""
    model = build("duo_predict", attn_impl=impl).eval()
    with pytest.raises(ValueError):
        if case == "even":
            model(torch.zeros(1, 6, dtype=torch.long), pos=torch.arange(6) // 2, mask=DuoMask())
        else:
            caches = model.make_caches(1, "cpu", torch.float32)
            model(torch.zeros(1, 5, dtype=torch.long), pos=torch.arange(5) // 2, mask=DuoMask(), caches=caches)
            model(torch.zeros(1, 1, dtype=torch.long), pos=torch.tensor([2]), mask=DuoMask(), caches=caches)


def test_duo_trains_and_fills_through_the_entry_points(shakespeare_dir, tmp_path):
    out = tmp_path / "duo"
    run(["train.py", "config/train_shakespeare_char_cpu.py", f"--data_dir={shakespeare_dir}", f"--out_dir={out}",
         "--variant=duo_predict", "--n_layer=2", "--n_embd=32", "--block_size=16", "--batch_size=4",
         "--max_iters=4", "--eval_interval=4", "--eval_iters=2", "--warmup_iters=1", "--lr_decay_iters=4",
         "--always_save_checkpoint=True"])
    assert (out / "ckpt.pt").exists()
    ckpt = checkpoint.load(out / "ckpt.pt")
    assert ckpt["model_args"]["vocab_size"] == ckpt["data_meta"]["vocab_size"] + 1
    proc = run(["sample.py", f"--out_dir={out}", "--mode=fill", "--start=not to [MASK] be", "--top_k=3"])
    assert "[MASK] #1:" in proc.stdout and len(proc.stdout.splitlines()[0]) == len("not to X be")

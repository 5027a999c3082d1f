"""Adaptive span + periodic masking (docs/adaptive_span.md): mask values, densities, FLOP counts, path equivalence with gradients,
causality, rolling-cache generation, span loss, span plots, checkpoints, config errors."""
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import attention as attention_module
import variants
from adaptive_attention_span import AdaptiveSpanConfig, AdaptiveSpanGPT, TriangleWave, plot_spans
from attention import RollingKVCache, sdpa_attention
from tests.conftest import assert_cached_greedy_equals_uncached, assert_same_outputs_and_grads, future_gradient, run

# reach = ceil(10 + 4) = 14, rounded up to 16
TINY = dict(n_layer=2, n_head=4, n_embd=32, block_size=64, vocab_size=50, dropout=0.0, softness_span_mask=4.0,
            span_init=10.0, span_block=8)
OBJECTIVE = variants.get("adaptive_span").objective


def tiny(**kw):
    torch.manual_seed(0)
    model = AdaptiveSpanGPT(AdaptiveSpanConfig(**{**TINY, **kw}))
    with torch.no_grad():  # distinct spans per head, so a head mix-up shows
        for attn in model.span_attentions():
            attn.span_params.add_(torch.linspace(-0.3, 0.3, attn.n_head))
    return model


def set_wave(wave, period, ratio):
    """Point every head of a TriangleWave at (period, ratio); endpoints of the range via large logits."""
    frac = (period - wave.p_min) / (wave.p_max - wave.p_min)
    with torch.no_grad():
        wave.period_w.fill_(30.0 if frac >= 1 else -30.0 if frac <= 0 else math.log(frac / (1 - frac)))
        wave.ratio_w.fill_(math.log((ratio + 0.25) / (0.25 - ratio)))


@pytest.mark.parametrize("period,ratio,expected", [
    (4, 0.0, [1, .5, 0, .5, 1, .5, 0, .5, 1]),
    (6, 0.0, [1, .997, .003, 0, .003, .997, 1]),
    (8, -0.1, [1, .673, 0, 0, 0, 0, 0, .673, 1]),
    (2, 0.0, [.967, .033, .967, .033]),
])
def test_triangle_wave_matches_spec_values(period, ratio, expected):
    wave = TriangleWave(3, 2.0, 8.0, 5)
    set_wave(wave, period, ratio)
    got = wave.wave(torch.arange(len(expected), dtype=torch.float32)).clamp(0, 1)
    torch.testing.assert_close(got, torch.tensor(expected).expand(3, -1), atol=6e-4, rtol=0)


def test_span_ramp_and_log_mask_values():
    model = tiny(softness_span_mask=4.0, span_init=6.0)
    attn = model.transformer.h[0].attn
    with torch.no_grad():
        attn.span_params.zero_().add_(math.log(6.0 / (64 - 6.0)))  # z = 6 for every head
    m_span, m_tri = attn.mask_values(12)
    assert m_tri is None
    torch.testing.assert_close(m_span[0], torch.tensor([1, 1, 1, 1, 1, 1, 1, .75, .5, .25, 0, 0.]))
    bias = attn.log_mask(12)[0]
    assert torch.isinf(bias[10:]).all() and (bias[10:] < 0).all()  # mask 0 -> -inf
    torch.testing.assert_close(bias[:10].exp(), m_span[0, :10])
    assert attn.reach() == 16  # ceil(6 + 4) = 10, rounded up to the block of 8
    for block in tiny().transformer.h:  # every distance the span mask keeps lies within the reach
        m_span, _ = block.attn.mask_values(64)
        assert (m_span > 1e-6).sum(-1).max() <= block.attn.reach() < 64


def test_combined_mask_and_density():
    model = tiny(use_triangle_wave_masking=True)
    attn = model.transformer.h[1].attn
    set_wave(attn.wave, 4.0, 0.0)
    m_span, m_tri = attn.mask_values(20)
    bias = attn.log_mask(20)
    expected = torch.log(m_span.clamp_min(1e-6)) + torch.log(m_tri.clamp_min(1e-6))
    dead = torch.minimum(m_span, m_tri) <= 1e-6
    assert dead.any() and (~dead).any()
    assert torch.isneginf(bias[dead]).all()
    torch.testing.assert_close(bias[~dead], expected[~dead])
    # rho = beta = 1/p + 2r + 1/2 = 0.75 for p=4, r=0; continuous at beta = 1 (p=4, r=1/8)
    torch.testing.assert_close(attn.wave.density(), torch.full((4,), 0.75))
    set_wave(attn.wave, 4.0, 0.125 - 1e-5)
    below = attn.wave.density()
    set_wave(attn.wave, 4.0, 0.125 + 1e-5)
    torch.testing.assert_close(below, attn.wave.density(), atol=1e-3, rtol=0)


@pytest.mark.parametrize("periodic", [False, True])
def test_analytic_entries_match_a_brute_force_count(periodic):
    model = tiny(use_triangle_wave_masking=periodic)
    attn = model.transformer.h[0].attn
    T = 40
    s = (attn.spans() + attn.softness).clamp(0, T).floor()
    d = (torch.arange(T)[:, None] - torch.arange(T)[None, :]).float()  # (query, key) distances
    if periodic:  # docs/adaptive_span.md §6: keep(d) = [m_tri(d) > 0 and d <= s_h]
        wave = attn.wave.wave(d.clamp_min(0).flatten()).view(-1, T, T)
        keep = (d >= 0) & (d <= s[:, None, None]) & (wave > 0)
    else:  # causal triangle minus the part beyond the span: d < s_h
        keep = (d >= 0) & (d < s[:, None, None])
    torch.testing.assert_close(attn.entries_per_head(T), keep.sum((-1, -2)).double())
    assert attn.attended_entries(T) < T * (T + 1) / 2


def loss_of(model, idx, tgt):
    """(logits, loss) of the training objective; in training mode the loss includes the span regulariser."""
    return OBJECTIVE.step(model, OBJECTIVE.prepare(model.config, idx, tgt))


def grads_of(model, idx, tgt):
    logits, loss = loss_of(model, idx, tgt)
    loss.backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("periodic", [False, True])
def test_blocked_fast_path_equals_dense_with_gradients(periodic, monkeypatch):
    torch.manual_seed(1)
    idx, tgt = torch.randint(0, 50, (2, 128)), torch.randint(0, 50, (2, 128))  # 128 >= 4 x (8 + 24 - 1): banded
    calls = []
    real = attention_module.banded_attention
    monkeypatch.setattr(attention_module, "banded_attention", lambda *a: calls.append(1) or real(*a))
    results = {}
    for impl in ("sdpa", "dense"):
        model = tiny(attn_impl=impl, use_triangle_wave_masking=periodic, block_size=128).train()
        results[impl] = grads_of(model, idx, tgt)
    assert calls, "the blocked fast path was not taken"
    assert_same_outputs_and_grads(results["sdpa"], results["dense"])
    ga = results["sdpa"][1]
    learned = [n for n in ga if n.endswith(("span_params", "period_w", "ratio_w"))]
    assert len(learned) == (6 if periodic else 2)
    for name in learned:  # the mask parameters really receive gradient (not only from the span loss)
        assert ga[name].abs().sum() > 0, name


def test_mask_gradient_reaches_span_and_period_through_attention():
    """d(output)/du and d(output)/dperiod without the regulariser, on both kernels."""
    torch.manual_seed(2)
    for impl in ("sdpa", "dense"):
        model = tiny(attn_impl=impl, use_triangle_wave_masking=True, span_reg=0.0)
        logits = model(torch.randint(0, 50, (1, 64)))
        logits.pow(2).mean().backward()
        attn = model.transformer.h[0].attn
        assert attn.span_params.grad.abs().min() > 0
        assert attn.wave.period_w.grad.abs().min() > 0


@pytest.mark.parametrize("impl", ["sdpa", "dense"])
@pytest.mark.parametrize("periodic", [False, True])
def test_causal_by_gradients(impl, periodic):
    model = tiny(attn_impl=impl, use_triangle_wave_masking=periodic)
    idx = torch.randint(0, 50, (2, 64))
    for t in (0, 30, 62):
        future, past = future_gradient(model, idx, t)
        assert future == 0.0
        assert past > 0.0


def test_keys_beyond_the_reach_are_never_computed():
    model = tiny(n_layer=1, block_size=128)
    attn = model.transformer.h[0].attn
    q, k, v = (torch.randn(2, attn.n_head, 128, attn.head_dim) for _ in range(3))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        sdpa_attention(q, k, v, attn.mask(128, 128, 0))
    D, b = attn.reach(), attn.block
    executed = -(-128 // b) * b * (b + D - 1)  # blocks of b queries, b + D - 1 keys each
    assert counter.get_total_flops() == 2 * attn.n_head * 4 * attn.head_dim * executed  # QK^T and AV, batch 2
    assert executed == attn.executed_entries(128) < 128 * 129 / 2


@pytest.mark.parametrize("periodic", [False, True])
@pytest.mark.parametrize("prompt_len,new", [(1, 40), (20, 30), (50, 30)])  # the last outgrows block_size
def test_cached_greedy_equals_uncached_with_a_rolling_cache(periodic, prompt_len, new):
    model = tiny(use_triangle_wave_masking=periodic).eval()
    idx = torch.randint(0, 50, (2, prompt_len))
    assert_cached_greedy_equals_uncached(model, idx, new)
    caches = model.make_caches(2, "cpu", torch.float32)
    assert len(caches) == len(model.transformer.h) and all(isinstance(c, RollingKVCache) for c in caches)
    model(torch.randint(0, 50, (2, 40)), caches=caches)
    assert all(c.k.size(-2) == blk.attn.reach() - 1 < 40 for c, blk in zip(caches, model.transformer.h))


def test_span_loss_only_in_training_and_eval_loss_is_pure_ce():
    model = tiny(use_triangle_wave_masking=True, span_reg=1e-2)
    idx, tgt = torch.randint(0, 50, (2, 64)), torch.randint(0, 50, (2, 64))
    model.eval()
    batch = OBJECTIVE.prepare(model.config, idx, tgt)
    logits, eval_loss = OBJECTIVE.step(model, batch)
    ce = F.cross_entropy(logits.view(-1, 50), tgt.view(-1))
    torch.testing.assert_close(eval_loss, ce)
    torch.testing.assert_close(OBJECTIVE.metrics(logits, batch)["loss"][0] / (2 * 64), ce)
    model.train()
    _, train_loss = OBJECTIVE.step(model, batch)
    expected = sum(((a.spans() + 4.0) * a.wave.density()).mean() for a in model.span_attentions()) * 1e-2
    torch.testing.assert_close(train_loss - ce, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(model.aux_loss(), expected)
    span_only = tiny(span_reg=1e-2).train()
    logits, loss = loss_of(span_only, idx, tgt)
    reg = 1e-2 * sum(a.spans().mean() for a in span_only.span_attentions())
    torch.testing.assert_close(loss - F.cross_entropy(logits.view(-1, 50), tgt.view(-1)), reg, atol=1e-5, rtol=1e-4)
    assert tiny(span_reg=0.0).aux_loss() is None and tiny(use_adaptive_attention=False).aux_loss() is None


def test_baseline_twin_is_plain_attention_with_block_position_embeddings():
    model = tiny(use_adaptive_attention=False)
    assert not model.span_attentions() and model.log_metrics() == {}
    assert model.transformer.h[0].pos_emb is None and model.transformer.h[1].pos_emb is not None
    assert model.attention_flops_report(64)["executed_fraction"] == 1.0
    assert tiny(block_pos_emb=False).transformer.h[1].pos_emb is None


def test_flops_report_and_span_init():
    model = tiny(span_init=None)
    torch.testing.assert_close(model.transformer.h[0].attn.spans().mean(), torch.tensor(32.0))  # u = 0: S/2
    model = tiny(block_size=512, span_init=16.0, span_block=32, softness_span_mask=16.0)
    report = model.attention_flops_report(512)
    assert 0 < report["analytic_fraction"] < report["executed_fraction"] < 1


def test_flops_per_token_counts_the_analytic_fraction():
    """Attention FLOPs per token are the dense causal n_layer * 4 * n_embd * (T + 1) / 2 times the report's analytic
    fraction."""
    from infra import flops
    model = tiny(block_size=512, span_init=16.0, span_block=32, softness_span_mask=16.0)
    report = model.attention_flops_report(512)
    f = flops.flops_per_token(model, 512)
    dense = model.config.n_layer * 4 * model.config.n_embd * (512 + 1) / 2
    torch.testing.assert_close(torch.tensor(f["attention"]), torch.tensor(dense * report["analytic_fraction"]))


@pytest.mark.parametrize("kw,message", [
    (dict(use_adaptive_attention=False, use_triangle_wave_masking=True), "requires use_adaptive_attention"),
    (dict(period_min_triangle_wave_masking=8.0, period_max_triangle_wave_masking=2.0), "period_min"),
    (dict(span_init=64.0), "span_init must lie strictly between 0 and max_span=64"),
    (dict(softness_span_mask=0.0), "softness_span_mask must be > 0"),
    (dict(span_reg=-1.0), "span_reg must be >= 0"),
    (dict(max_span=0), "max_span must be >= 1"),
])
def test_config_errors(kw, message):
    with pytest.raises(ValueError, match=message):
        AdaptiveSpanGPT(AdaptiveSpanConfig(**{**TINY, **kw}))


def test_train_logs_spans_and_checkpoint_round_trips(shakespeare_dir, tmp_path):
    from infra import checkpoint
    out = tmp_path / "run"
    run(["train.py", "config/enwik8_cpu_span_periodic.py", f"--data_dir={shakespeare_dir}", f"--out_dir={out}",
         "--max_iters=3", "--eval_interval=3", "--eval_iters=1", "--batch_size=2", "--block_size=64", "--n_layer=2",
         "--n_embd=32", "--n_head=2", "--span_block=16"], env={"OMP_NUM_THREADS": "1"})
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"eval"' in line]
    assert "model/span_mean/1" in evals[-1] and "model/period_mean/0" in evals[-1]
    assert 0 < evals[-1]["model/attn_flop_fraction"] < 1
    ckpt = checkpoint.load(out / "ckpt.pt")
    model = checkpoint.build_model(ckpt, variants.get).eval()
    assert type(model) is AdaptiveSpanGPT and model.config.use_triangle_wave_masking
    saved = ckpt["model"]
    for name, p in model.state_dict().items():
        assert torch.equal(p, saved[name]), name
    idx = torch.randint(0, 10, (1, 20))
    assert torch.equal(model.generate(idx, 10, temperature=0), model.generate(idx, 10, temperature=0, use_cache=False))


def test_no_grad_mask_cache_follows_parameter_updates():
    model = tiny(use_triangle_wave_masking=True).eval()
    attn = model.transformer.h[0].attn
    idx = torch.randint(0, 50, (1, 64))
    with torch.no_grad():
        before = model(idx)
        assert torch.equal(attn.mask(64, 64, 0).distance_bias, attn.log_mask(attn.reach()))
        attn.span_params.sub_(1.0)  # shorter spans: the cached mask must not be reused
        attn.wave.period_w.add_(0.5)
        after = model(idx)
        torch.testing.assert_close(attn.mask(64, 64, 0).distance_bias, attn.log_mask(attn.reach()))
    assert not torch.allclose(before, after)
    grad_path = model(idx)  # the differentiable path computes the same numbers
    torch.testing.assert_close(grad_path.detach(), after)


def test_plot_spans_writes_a_png(tmp_path):
    """One heatmap panel of spans per layer and head, and a second of periods when the model masks periodically."""
    widths = []
    for periodic in (False, True):
        path = tmp_path / f"spans_{periodic}.png"
        plot_spans(tiny(use_triangle_wave_masking=periodic), path)
        data = path.read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000
        widths.append(int.from_bytes(data[16:20], "big"))  # the IHDR chunk's image width
    assert widths[1] == 2 * widths[0] > 0
    with pytest.raises(ValueError, match="no adaptive-span layers"):
        plot_spans(tiny(use_adaptive_attention=False), tmp_path / "none.png")

"""The CUDA-only code, marked `cuda` and skipped without a GPU (`pytest -m cuda` runs only these):
FlexAttention as the CUDA route of attn_impl="auto" for every masking variant (outputs and gradients equal to the dense
reference, through the compiled Flex kernel), Flex decoding with KV caches, compiled models with Flex inside the graph
(adaptive span's gradients reaching its span, period and ratio parameters, in fp32 and under bf16 autocast), bf16
autocast forward/backward, the fused AdamW step, pinned-memory batches, TF32, and train.py end to end on CUDA."""
import json
from types import SimpleNamespace

import pytest
import torch

import attention
from infra import runtime
import variants
from attention import check_trainable, flex_attention
from conftest import run

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

DEV = torch.device("cuda")
# head_dim 16 (Flex's Triton kernels want >= 16), two 128-tiles per sequence so block masks have tiles to skip
SHAPE = dict(n_layer=2, n_head=4, n_embd=64, block_size=256, vocab_size=64, dropout=0.0)
SPAN = dict(softness_span_mask=8.0, span_init=40.0, span_block=32)
CASES = {
    "gpt": ("gpt", {}),
    "layerwise": ("layerwise", {"n_layer": 4, "windows": [0, 64, 16, 1]}),
    "span": ("adaptive_span", SPAN),
    "span_periodic": ("adaptive_span", {**SPAN, "use_triangle_wave_masking": True}),
    "alibi": ("alibi", {}),
    "llama_gqa": ("llama", {"bias": False, "n_kv_head": 2, "multiple_of": 16}),
    "duo_predict": ("duo_predict", {}),
    "bert_padded": ("bert", {}),
    "gpt_documents": ("gpt", {}),
}
ROUTED = {"layerwise", "span", "span_periodic", "alibi", "duo_predict", "bert_padded", "gpt_documents"}


@pytest.fixture(autouse=True)
def exact_fp32():
    """TF32 off inside these tests, so fp32 comparisons are fp32; restored afterwards."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def build(name, impl, **fields):
    torch.manual_seed(0)
    spec = variants.get(name)
    config = spec.config_class(**{**SHAPE, **fields, "attn_impl": impl})
    config.vocab_size = spec.objective.vocab_size(SHAPE["vocab_size"])
    model = spec.build(config)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # learned masks off their init: heads differ, the periodic wave drops distances
        for n, p in model.named_parameters():
            if n.endswith(("span_params", "period_w", "ratio_w")):
                p.add_(torch.randn(p.shape, generator=g))
    return model.to(DEV)


def inputs(case, model):
    """Keyword inputs of one forward pass of the case (B = 2, a whole block)."""
    T, g = SHAPE["block_size"], torch.Generator().manual_seed(0)
    x = torch.randint(5, SHAPE["vocab_size"], (2, T), generator=g)
    if case == "duo_predict":
        batch = variants.get("duo_predict").objective.prepare(model.config, x[:, :T // 2], x[:, 1:T // 2 + 1])
        return {"idx": batch.idx.to(DEV), "pos": batch.pos.to(DEV), "mask": batch.mask}
    if case == "bert_padded":
        keep = torch.ones(2, T, dtype=torch.long)
        keep[1, 150:] = 0
        return {"idx": x.to(DEV), "attention_mask": keep.to(DEV)}
    if case == "gpt_documents":
        x[0, [40, 41, 200]] = 0
        x[1, 129] = 0
        from objectives import Batch, NextTokenLM
        batch = NextTokenLM().documents(Batch(x, x), 0)
        return {"idx": x.to(DEV), "mask": attention.AttnMask(causal=True, segments=batch.mask.segments.to(DEV))}
    return {"idx": x.to(DEV)}


def logits_of(out):
    return out["mlm"] if isinstance(out, dict) else out


def forward_backward(model, case, autocast=None):
    """(logits, {parameter name: gradient}) of a squared-logit loss."""
    model.zero_grad(set_to_none=True)
    with autocast or torch.autocast("cuda", enabled=False):
        out = logits_of(model(**inputs(case, model)))
    out.float().pow(2).mean().backward()
    return out.detach().float(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_match(a, b, atol, rtol):
    torch.testing.assert_close(a[0], b[0], atol=atol, rtol=rtol)
    assert a[1].keys() == b[1].keys()
    for name in a[1]:
        torch.testing.assert_close(a[1][name], b[1][name], atol=atol, rtol=rtol, msg=name)


@pytest.mark.parametrize("case", list(CASES))
def test_auto_on_cuda_routes_masks_to_flex_with_dense_outputs_and_gradients(case, monkeypatch):
    """attn_impl="auto" on CUDA: the masks SDPA cannot skip work for go through the compiled Flex kernel (plain
    causal does not), and outputs and every gradient equal the dense reference's (fp32)."""
    calls, real = [], attention.flex_attention
    monkeypatch.setattr(attention, "flex_attention", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    name, fields = CASES[case]
    fast = forward_backward(build(name, "auto", **fields), case)
    assert bool(calls) == (case in ROUTED)
    assert_match(fast, forward_backward(build(name, "dense", **fields), case), atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("case", ["layerwise", "span", "alibi"])
def test_flex_kv_cache_decoding_on_cuda(case):
    name, fields = CASES[case]
    flex, dense = build(name, "flex", **fields).eval(), build(name, "dense", **fields).eval()
    prompt = torch.randint(0, SHAPE["vocab_size"], (1, 7), device=DEV)
    assert torch.equal(flex.generate(prompt, 40, temperature=0, use_cache=True),
                       dense.generate(prompt, 40, temperature=0, use_cache=False))


@pytest.mark.parametrize("case", ["span", "span_periodic", "layerwise", "duo_predict", "bert_padded"])
def test_compiled_model_with_flex_matches_dense(case):
    """torch.compile of the whole model, with the block masks built inside its graph: forward and backward equal the
    eager dense reference in fp32; for adaptive span that includes d/d span, period and ratio."""
    name, fields = CASES[case]
    model = build(name, "flex", **fields)
    compiled = torch.compile(model)
    fast = forward_backward(compiled, case)
    reference = forward_backward(build(name, "dense", **fields), case)
    assert_match(fast, reference, atol=2e-4, rtol=2e-3)
    if case.startswith("span"):
        assert any(n.endswith("span_params") for n in fast[1])
        assert all(fast[1][n].abs().sum() > 0 for n in fast[1] if n.endswith(("span_params", "period_w", "ratio_w")))


@pytest.mark.parametrize("case", ["span_periodic", "gpt"])
def test_bf16_autocast_forward_backward(case):
    """bf16 autocast (what dtype="auto" resolves to on CUDA), compiled Flex for the span model: the loss within bf16
    tolerance of fp32, every gradient finite and in fp32, and the span gradients pointing the fp32 way."""
    device, dtype = runtime.resolve("cuda", "auto")
    assert dtype == torch.bfloat16
    name, fields = CASES[case]
    impl = "flex" if case.startswith("span") else "auto"
    model = build(name, impl, **fields)
    low = forward_backward(torch.compile(model), case, runtime.autocast(device, dtype))
    full = forward_backward(build(name, "dense", **fields), case)
    assert torch.allclose(low[0].pow(2).mean(), full[0].pow(2).mean(), rtol=3e-2)
    assert low[1].keys() == full[1].keys()
    for n, grad in low[1].items():
        assert grad.dtype == torch.float32 and torch.isfinite(grad).all(), n
    cos = torch.nn.functional.cosine_similarity
    flat = lambda grads, names: torch.cat([grads[n].flatten() for n in names])
    assert cos(flat(low[1], low[1]), flat(full[1], low[1]), dim=0) > 0.99
    for n in (n for n in low[1] if n.endswith(("span_params", "period_w", "ratio_w"))):
        assert cos(low[1][n], full[1][n], dim=0) > 0.9, n


def test_fused_adamw_step_matches_unfused():
    """train.py's optimizer on CUDA is the fused AdamW kernel, and it steps as the unfused one does."""
    import train
    cfg = SimpleNamespace(learning_rate=1e-3, beta1=0.9, beta2=0.95, weight_decay=0.1)
    models = [build("gpt", "auto") for _ in range(2)]
    fused, plain = train.make_optimizer(models[0], cfg, "cuda"), train.make_optimizer(models[1], cfg, "cpu")
    assert fused.defaults["fused"] is True and not plain.defaults["fused"]
    for _ in range(3):
        for model, opt in zip(models, (fused, plain)):
            forward_backward(model, "gpt")
            opt.step()
    for (n, a), b in zip(models[0].named_parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=n)


def test_pinned_memory_batches(shakespeare_dir):
    import train
    from data.common import load_meta
    meta = load_meta(shakespeare_dir)
    gpu = train.BatchSampler(shakespeare_dir, meta, 64, 8, seed=3, device=DEV)
    cpu = train.BatchSampler(shakespeare_dir, meta, 64, 8, seed=3, device=torch.device("cpu"))
    for index in (0, 5):
        (xg, yg), (xc, yc) = gpu.get("train", index), cpu.get("train", index)
        assert xg.device.type == "cuda" and yg.device.type == "cuda"
        torch.cuda.synchronize()  # non_blocking copies from pinned memory
        assert torch.equal(xg.cpu(), xc) and torch.equal(yg.cpu(), yc)


def test_train_py_sets_tf32_and_trains_on_cuda(shakespeare_dir, tmp_path):
    """In process, so the TF32 flags train.py sets can be read; bf16 autocast, fused AdamW, pinned batches."""
    import train
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    train.main([f"--data_dir={shakespeare_dir}", f"--out_dir={tmp_path}", "--device=cuda", "--n_layer=2",
                "--n_head=2", "--n_embd=64", "--block_size=64", "--batch_size=8", "--max_iters=20",
                "--eval_interval=20", "--eval_iters=2", "--warmup_iters=2", "--lr_decay_iters=20", "--dropout=0.0"])
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["resolved_dtype"] == "bfloat16"
    evals = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [e["val/loss"] for e in evals if e["kind"] == "eval"]
    assert losses and all(l == l for l in losses)


@pytest.mark.parametrize("impl,extra", [("flex", ["--variant=adaptive_span", "--span_init=16.0"]),
                                        ("auto", ["--variant=layerwise", "--windows=[0,16]"])])
def test_train_py_compiled_flex_on_cuda(shakespeare_dir, tmp_path, impl, extra):
    """train.py --compile=True through FlexAttention (explicitly, and as auto's CUDA route): the loss goes down."""
    run(["train.py", f"--data_dir={shakespeare_dir}", f"--out_dir={tmp_path}", "--device=cuda", "--compile=True",
         f"--attn_impl={impl}", *extra, "--n_layer=2", "--n_head=2", "--n_embd=64", "--block_size=128",
         "--batch_size=16", "--max_iters=60", "--eval_interval=30", "--eval_iters=4", "--warmup_iters=5",
         "--lr_decay_iters=60", "--learning_rate=3e-3", "--dropout=0.0"], timeout=900)
    evals = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [e["val/loss"] for e in evals if e["kind"] == "eval"]
    assert losses[-1] < losses[0] - 0.3


def test_flex_is_trainable_on_cuda_without_dropout():
    check_trainable("flex", DEV)
    with pytest.raises(ValueError, match="no attention dropout"):
        check_trainable("flex", DEV, dropout=0.1)
    q = torch.randn(1, 2, 256, 16, device=DEV, requires_grad=True)
    out = flex_attention(q, q, q, attention.AttnMask(window=32))
    out.sum().backward()
    assert torch.isfinite(q.grad).all()

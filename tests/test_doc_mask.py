"""Document-aware training on packed text (doc_mask): attention never crosses a document separator, through the same
mask description every kernel reads (dense, SDPA, banded windows and spans), for every causal variant whose mask
composes with it; positions may restart per document."""
import json

import pytest
import torch

import attention
import variants
from attention import AttnMask, dense_attention, sdpa_attention
from conftest import assert_same_outputs_and_grads, embedding_grad, need_shared, run
from objectives import Batch, NextTokenLM

SEP = 0
SHAPE = dict(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=50, dropout=0.0)
COMPOSING = [("gpt", {}), ("layerwise", {"windows": [0, 6], "attn_block": 8}), ("alibi", {}),
             ("adaptive_span", {"max_span": 8, "softness_span_mask": 4.0, "span_block": 8}),
             ("adaptive_span", {"use_triangle_wave_masking": True, "max_span": 8, "softness_span_mask": 4.0,
                                "span_block": 8}),
             ("llama", {"bias": False, "multiple_of": 16}), ("rotating_head", {}), ("drift_diffusion", {}),
             ("parallel", {})]


def build(name, **kw):
    torch.manual_seed(0)
    spec = variants.get(name)
    return spec.build(spec.config_class(**{**SHAPE, **kw}))


def packed(B=2, T=64, seed=0):
    """Token rows with separators (id 0) at a few places: several documents per row."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(1, 50, (B, T), generator=g)
    x[0, [9, 30, 31]] = SEP  # an empty document between two separators too
    x[1, [40]] = SEP
    return x


def test_segments_and_restarted_positions():
    x = torch.tensor([[5, 6, SEP, 7, 8, SEP, SEP, 9]])
    batch = NextTokenLM().documents(Batch(x, x), SEP, restart_positions=True)
    assert batch.mask.segments.tolist() == [[0, 0, 0, 1, 1, 1, 2, 3]]  # a separator ends its own document
    assert batch.pos.tolist() == [[0, 1, 2, 0, 1, 2, 0, 0]]
    assert NextTokenLM().documents(Batch(x, x), SEP).pos is None


@pytest.mark.parametrize("name,kw", COMPOSING)
@pytest.mark.parametrize("restart", [False, True])
def test_no_gradient_crosses_a_document_boundary(name, kw, restart):
    model = build(name, **kw)
    x = packed()
    batch = variants.get(name).objective.documents(Batch(x, x), SEP, restart_positions=restart)
    inputs = dict(idx=batch.idx, pos=batch.pos, mask=batch.mask)
    # row 1: separator at 40, so positions 41.. are the second document
    for t, first in ((50, 41), (63, 41), (40, 0)):
        g = embedding_grad(model, t, row=1, **inputs)
        assert g[:first].sum() == 0, (name, t)  # nothing from an earlier document
        assert g[first:t + 1].abs().max() > 0  # its own document does matter
        assert g[t + 1:].abs().sum() == 0  # and still causal


@pytest.mark.parametrize("window,bias", [(None, False), (6, False), (6, True), (None, True)])
def test_kernels_agree_on_document_masks_with_gradients(window, bias, monkeypatch):
    """Dense reference vs SDPA; windows and distance biases take the banded path (one fused call per layer)."""
    torch.manual_seed(0)
    B, H, T, hd = 2, 2, 64, 8
    q, k, v = (torch.randn(B, H, T, hd, requires_grad=True) for _ in range(3))
    table = torch.randn(H, 8, requires_grad=True) if bias else None
    seg = torch.cumsum(packed() == SEP, dim=1) - (packed() == SEP).long()
    mask = AttnMask(causal=True, window=window, distance_bias=table, segments=seg, block=8)

    banded, real = [], attention.banded_attention
    monkeypatch.setattr(attention, "banded_attention", lambda *a, **kw: banded.append(1) or real(*a, **kw))

    def run_path(kernel):
        out = kernel(q, k, v, mask)
        grads = torch.autograd.grad(out.pow(2).sum(), [q, k, v] + ([table] if bias else []))
        return out, list(grads)

    assert_same_outputs_and_grads(run_path(sdpa_attention), run_path(dense_attention))
    assert banded == ([1] if window or bias else [])  # reach-limited masks keep the banded O(T * reach) kernel


def test_one_document_equals_the_plain_forward():
    model = build("layerwise", windows=[0, 6], attn_block=8).eval()
    x = torch.randint(1, 50, (2, 64))  # no separator: one document per row
    batch = NextTokenLM().documents(Batch(x, x), SEP)
    torch.testing.assert_close(model(x, mask=batch.mask), model(x), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", ["duo_predict", "bert"])
def test_objectives_with_their_own_layout_refuse(name):
    x = packed()
    with pytest.raises(ValueError, match="doc_mask applies to next-token"):
        variants.get(name).objective.documents(Batch(x, x), SEP)


def test_cached_generation_still_equals_uncached_after_doc_masked_training():
    model = build("layerwise", windows=[0, 6], attn_block=8)
    x = packed()
    objective = variants.get("layerwise").objective
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(3):
        _, loss = objective.step(model, objective.documents(objective.prepare(model.config, x, x), SEP))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    prompt = x[:1, :5]
    assert torch.equal(model.generate(prompt, 30, temperature=0, use_cache=True),
                       model.generate(prompt, 30, temperature=0, use_cache=False))


@pytest.fixture(scope="module")
def tinystories(tmp_path_factory):
    src = need_shared("data", "tinystories", "validation_prefix")
    out = tmp_path_factory.mktemp("tinystories")
    source = next(p for p in sorted(src.rglob("*")) if p.is_file())
    run(["data/tinystories/prepare.py", "--source", str(source), "--out_dir", str(out)])
    return out


def test_train_with_doc_mask_on_tinystories(tinystories, tmp_path):
    meta = json.loads((tinystories / "meta.json").read_text())
    assert meta["doc_separator"] == meta["eot_token"] == 50256
    args = ["train.py", f"--data_dir={tinystories}", "--device=cpu", "--n_layer=1", "--n_head=2", "--n_embd=32",
            "--block_size=64", "--batch_size=2", "--max_iters=3", "--eval_interval=3", "--eval_iters=1",
            "--warmup_iters=1", "--lr_decay_iters=3", "--doc_mask=True", "--doc_positions=True"]
    proc = run([*args, f"--out_dir={tmp_path / 'a'}", "--variant=layerwise", "--windows=[8]"])
    assert "mfu" in proc.stdout and "eta" in proc.stdout
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["doc_mask"] and config["doc_positions"]
    bad = run([*args, f"--out_dir={tmp_path / 'b'}", "--variant=duo_predict"], check=False)
    assert bad.returncode == 2 and "doc_mask applies to next-token" in bad.stderr
    assert not (tmp_path / "b").exists()


def test_doc_mask_needs_a_separator_in_the_data(shakespeare_dir, tmp_path):
    proc = run(["train.py", f"--data_dir={shakespeare_dir}", f"--out_dir={tmp_path}", "--doc_mask=True",
                "--device=cpu"], check=False)
    assert proc.returncode == 2 and "names no doc_separator" in proc.stderr
    proc = run(["train.py", f"--data_dir={shakespeare_dir}", f"--out_dir={tmp_path}", "--doc_positions=True"],
               check=False)
    assert proc.returncode == 2 and "doc_positions needs doc_mask=True" in proc.stderr


def test_wikitext_prepare_marks_articles(tmp_path):
    src = need_shared("data", "wikitext", "wikitext-2-raw")
    out = tmp_path / "wt2"
    run(["data/wikitext103/prepare.py", "--train", str(src / "wiki.valid.raw"), "--val", str(src / "wiki.test.raw"),
         "--out_dir", str(out), "--mark_articles"])
    meta = json.loads((out / "meta.json").read_text())
    assert meta["doc_separator"] == meta["eot_token"]
    import numpy as np
    ids = np.fromfile(out / "train.bin", dtype=np.uint16)
    text = (src / "wiki.valid.raw").read_text(encoding="utf-8")
    headings = sum(1 for line in text.splitlines() if line.startswith(" = ") and not line.startswith(" = = "))
    assert int((ids == meta["eot_token"]).sum()) == headings + 1  # every article, and the text before the first
    assert ids[-1] == meta["eot_token"]

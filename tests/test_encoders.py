"""BERT, ALBERT, DeBERTa: parity with transformers, bidirectionality, paths, batch construction (pairs, MLM 80/10/10,
n-grams), EMD, FLOP accounting of the shared layer, errors, and train.py / sample.py --mode=fill end to end."""
import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from infra import checkpoint
import variants
from conftest import assert_same_outputs_and_grads, embedding_grad
from objectives import special_ids
from variants.deberta import Deberta, DebertaConfig, RelMask

ENCODERS = ["bert", "albert", "deberta"]
EXTRA = {"bert": {}, "albert": {"embedding_size": 16}, "deberta": {"max_relative_positions": 4}}


def tiny(name, **kw):
    torch.manual_seed(0)
    spec = variants.get(name)
    config = spec.config_class(**{**dict(n_layer=2, n_head=4, n_embd=32, block_size=16,
                                         vocab_size=spec.objective.vocab_size(60), dropout=0.0), **EXTRA[name], **kw})
    return spec.build(config)


def objective(name):
    return variants.get(name).objective


def randomise(hf):
    """Random biases and LayerNorm affines (zero/one defaults would hide swapped or missing terms) and weights 5x the
    0.02 init, so that small terms such as DeBERTa's p2c move the logits well above the 1e-4 tolerance."""
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if p.dim() == 1:
                p.normal_(0.0 if name.endswith("bias") else 1.0, 0.1)
            else:
                p.normal_(0.0, 0.1)


def hf_pair(name, tmp_path):
    """(ours, theirs) sharing the same random weights through save_pretrained / from_pretrained."""
    T = pytest.importorskip("transformers")
    torch.manual_seed(0)
    common = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                  max_position_embeddings=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    if name == "bert":
        hf = T.BertForPreTraining(T.BertConfig(**common))
    elif name == "albert":
        hf = T.AlbertForPreTraining(T.AlbertConfig(embedding_size=16, classifier_dropout_prob=0.0, **common))
    else:
        hf = T.DebertaForMaskedLM(T.DebertaConfig(relative_attention=True, position_biased_input=False,
                                                  pos_att_type=["c2p", "p2c"], max_relative_positions=4, **common))
    randomise(hf)
    hf.eval().save_pretrained(tmp_path)
    return variants.get(name).model_class.from_pretrained(str(tmp_path)).eval(), hf


@pytest.mark.parametrize("name", ENCODERS)
def test_parity_with_transformers(name, tmp_path):
    ours, hf = hf_pair(name, tmp_path)
    torch.manual_seed(1)
    idx = torch.randint(0, 64, (2, 14))  # 14 > 2k = 8: DeBERTa's relative distances are clamped
    types = torch.cat([torch.zeros(2, 6, dtype=torch.long), torch.ones(2, 8, dtype=torch.long)], 1)
    attn = torch.ones(2, 14, dtype=torch.long)
    attn[1, 10:] = 0  # padding in the second row
    kw = {} if name == "deberta" else {"token_type_ids": types}
    with torch.no_grad():
        theirs = hf(input_ids=idx, attention_mask=attn, **kw)
        logits = ours(idx, token_types=kw.get("token_type_ids"), attention_mask=attn)
    keep = attn.bool()
    mlm_theirs = theirs.logits if name == "deberta" else theirs.prediction_logits
    torch.testing.assert_close(logits["mlm"][keep], mlm_theirs[keep], atol=1e-4, rtol=0)
    if name != "deberta":
        pair = theirs.seq_relationship_logits if name == "bert" else theirs.sop_logits
        torch.testing.assert_close(logits["pair"], pair, atol=1e-4, rtol=0)


def test_deberta_p2c_reads_the_official_index(tmp_path):
    """The parity above pins p2c at Q_r[clamp(i-j+k)] for query i, key j (official code and transformers); reading
    the other diagonal, Q_r[clamp(j-i+k)], gives different scores, so the parity test can tell the two apart."""
    ours, _ = hf_pair("deberta", tmp_path)
    attn = ours.transformer.h[0].attn
    q, k = torch.randn(1, 4, 10, 8), torch.randn(1, 4, 10, 8)
    rel = ours.transformer.rel.weight
    bias = attn.relative_bias(q, k, rel)
    span, scale = attn.span, (3 * 8) ** -0.5
    q_r = attn.pos_q_proj(rel).view(-1, 4, 8).transpose(0, 1)
    k_r = attn.pos_proj(rel).view(-1, 4, 8).transpose(0, 1)
    i, j = 7, 2
    d = min(max(i - j + span, 0), 2 * span - 1)
    expected = (q[0, :, i] * k_r[:, d]).sum(-1) + (k[0, :, j] * q_r[:, d]).sum(-1)
    torch.testing.assert_close(bias[0, :, i, j], expected * scale, atol=1e-5, rtol=1e-4)
    d_other = min(max(j - i + span, 0), 2 * span - 1)
    other = (q[0, :, i] * k_r[:, d]).sum(-1) + (k[0, :, j] * q_r[:, d_other]).sum(-1)
    assert (bias[0, :, i, j] - other * scale).abs().max() > 1e-2


def test_deberta_emd_is_the_paper_decoder():
    """transformers' DebertaForMaskedLM has no Enhanced Mask Decoder (so parity runs with emd=False). With emd=True
    the MLM head reads the last layer applied twice to queries I = absolute positions + H_{L-1}, keys/values H_{L-1}."""
    model = tiny("deberta", n_layer=3).eval()
    assert model.config.emd and "wpe" in model.transformer
    idx = torch.randint(0, 60, (2, 12))
    head_input = []  # the hidden states the MLM head reads
    model.mlm_dense.register_forward_hook(lambda module, args, output: head_input.append(args[0]))
    with torch.no_grad():
        logits = model(idx)["mlm"]
        pos = torch.arange(12)
        x = model.embed(idx, pos)
        mask = RelMask(causal=False, rel=model.transformer.rel.weight)  # every layer reads the one relative table
        for block in model.transformer.h[:-1]:
            x = block(x, pos, None, mask)
        q = model.transformer.wpe(pos) + x
        last = model.transformer.h[-1]
        q = last(x, pos, None, mask, query=q)
        q = last(x, pos, None, mask, query=q)
        torch.testing.assert_close(head_input[0], q, atol=1e-5, rtol=1e-4)
        model.config.emd = False  # plain encoder output (what transformers computes) differs
        assert (model(idx)["mlm"] - logits).abs().max() > 1e-3
    # absolute positions enter only through the EMD: without it, the input embedding has no position term
    with torch.no_grad():
        e = model.embed(idx, pos)
        torch.testing.assert_close(e[:, :6], model.embed(idx[:, :6], pos[:6]))
        torch.testing.assert_close(e[:, 6:], model.embed(idx[:, 6:], pos[:6]))  # the same tokens at other positions


@pytest.mark.parametrize("name", ENCODERS)
@pytest.mark.parametrize("impl", ["sdpa", "dense"])
def test_bidirectional_by_gradients(name, impl):
    model = tiny(name, attn_impl=impl)
    idx = torch.randint(0, 60, (2, 12))
    g = embedding_grad(model, 3, pick="mlm", idx=idx)
    assert g[4:].amax() > 0 and g[:3].amax() > 0  # position 3 sees later and earlier tokens


@pytest.mark.parametrize("name", ENCODERS)
def test_sdpa_and_dense_paths_agree_with_gradients(name):
    x = torch.randint(0, 60, (4, 16))
    attn = torch.ones(4, 16, dtype=torch.long)
    attn[2, 11:] = 0
    obj = objective(name)
    outs = []
    for impl in ("sdpa", "dense"):
        model = tiny(name, attn_impl=impl)
        batch = obj.prepare(model.config, x, x, torch.Generator().manual_seed(0))
        logits = model(batch.idx, token_types=batch.token_types, attention_mask=attn, predict=batch.targets != -1)
        loss = obj.loss(logits, batch)
        loss.backward()
        outs.append((logits["mlm"], {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    assert_same_outputs_and_grads(*outs)


@pytest.mark.parametrize("name", ["bert", "albert"])
def test_sentence_pairs(name):
    model = tiny(name)
    sp = special_ids(model.config.vocab_size)
    x = torch.randint(0, 60, (64, 16))
    ids, types, labels = objective(name).make_pairs(model.config, x, torch.Generator().manual_seed(0))
    assert ids.shape == (64, 16) and 0.3 < labels.float().mean() < 0.7
    assert (ids[:, 0] == sp["cls"]).all() and (ids[:, -1] == sp["sep"]).all()
    for r in range(64):
        seps = (ids[r] == sp["sep"]).nonzero().flatten().tolist()
        first, second = ids[r, 1:seps[0]], ids[r, seps[0] + 1:-1]
        assert (types[r, :seps[0] + 1] == 0).all() and (types[r, seps[0] + 1:] == 1).all()
        la = len(first) if not (labels[r] and name == "albert") else len(second)
        a, b = x[r, :la], x[r, la:13]
        if labels[r] == 0:  # positive: A then its continuation B, in order
            assert torch.equal(first, a) and torch.equal(second, b)
        elif name == "bert":  # NSP negative: A, then a segment that is not A's continuation
            assert torch.equal(first, a) and not torch.equal(second, b)
        else:  # SOP negative: the same two segments swapped
            assert torch.equal(first, b) and torch.equal(second, a)


@pytest.mark.parametrize("name", ENCODERS)
def test_mlm_masking_rates(name):
    model = tiny(name, block_size=128)
    sp = special_ids(model.config.vocab_size)
    x = torch.randint(0, 60, (64, 128))
    batch = objective(name).prepare(model.config, x, x, torch.Generator().manual_seed(0))
    ids, t = batch.idx, batch.targets
    chosen = t != -1
    normal = ids < sp["pad"]
    assert not (chosen & (ids == sp["cls"])).any() and not (chosen & (ids == sp["sep"])).any()
    rate = chosen.sum() / (chosen | normal).sum()
    assert 0.13 < rate < 0.17
    as_mask = (ids[chosen] == sp["mask"]).float().mean()
    kept = (ids[chosen] == t[chosen]).float().mean()
    assert 0.76 < as_mask < 0.84 and 0.07 < kept < 0.14  # 80 % [MASK], 10 % kept (+ random hits), 10 % random
    assert not (ids == sp["mask"])[~chosen].any()
    runs = chosen[:, 1:] & chosen[:, :-1]
    adjacent = runs.sum() / chosen.sum()
    if name == "albert":  # n-gram spans: many chosen tokens sit next to another chosen one
        assert adjacent > 0.3
    else:
        assert adjacent < 0.25


def batch_tensors(batch):
    return {k: v for k, v in vars(batch).items() if isinstance(v, torch.Tensor)}


def test_eval_masks_are_deterministic_and_training_masks_vary():
    """Without a generator (evaluation) the masks are seeded from the tokens: the same blocks always get the same
    batch. With one (train.py hands its generator), successive batches of the same blocks differ."""
    model = tiny("bert")
    obj = objective("bert")
    x = torch.randint(0, 60, (4, 16))
    a, b = batch_tensors(obj.prepare(model.config, x, x)), batch_tensors(obj.prepare(model.config, x, x))
    assert a.keys() == {"idx", "targets", "token_types", "pair_labels"}
    assert all(torch.equal(a[k], b[k]) for k in a)
    g = torch.Generator().manual_seed(0)
    c, d = batch_tensors(obj.prepare(model.config, x, x, g)), batch_tensors(obj.prepare(model.config, x, x, g))
    assert not all(torch.equal(c[k], d[k]) for k in c)


def test_albert_shares_one_layer_applied_n_layer_times():
    albert, bert = tiny("albert", n_layer=4, attn_impl="dense"), tiny("bert", n_layer=4)
    assert len(albert.transformer.h) == 1 and len(bert.transformer.h) == 4
    assert albert.transformer.wte.weight.shape[1] == 16  # factorised E = 16 -> H = 32
    T = 16
    x, pos = torch.randn(1, T, 32), torch.arange(T)
    block = albert.transformer.h[0]
    with torch.no_grad():
        with FlopCounterMode(display=False) as stack:
            out = albert.run_blocks(x, pos)
        with FlopCounterMode(display=False) as once:
            expected = block(x, pos)
        for _ in range(3):
            expected = block(expected, pos)
    torch.testing.assert_close(out, expected)
    assert stack.get_total_flops() == 4 * once.get_total_flops() > 0


def test_albert_counts_its_flops_per_application():
    """flops.py's analytic count of the shared layer, once per application, equals FlopCounterMode's."""
    from infra import flops
    albert = tiny("albert", n_layer=4, attn_impl="dense")
    T = 16
    x = torch.randn(1, T, 32)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        albert.run_blocks(x, torch.arange(T))
    analytic = flops.count(albert, lambda: albert.run_blocks(x, torch.arange(T)), T, dense=True)
    assert counter.get_total_flops() == analytic["total"] * T
    assert analytic["attention"] == 4 * albert.transformer.h[0].attn.attention_flops(T, T * T) / T


@pytest.mark.parametrize("name", ENCODERS)
def test_fill_mask_and_refusals(name):
    model = tiny(name).eval()
    obj = objective(name)
    assert obj.fills and not obj.causal  # fill-mask applies, generation does not
    out = obj.fill_mask(model, [[1, 2, 3], [4, 5], [6]], top_k=3)
    assert len(out) == 2 and all(len(c) == 3 for c in out)
    for cands in out:
        probs = [p for _, p in cands]
        assert probs == sorted(probs, reverse=True) and all(t < 60 for t, _ in cands)
    assert not hasattr(model, "generate") and not hasattr(model, "make_caches")
    with pytest.raises(ValueError, match="block_size"):
        obj.fill_mask(model, [list(range(10)), list(range(10))])


def test_config_errors_are_clear():
    with pytest.raises(ValueError, match="pair_task must be one of"):
        tiny("bert", pair_task="mlm")
    with pytest.raises(ValueError, match="needs type_vocab_size"):
        tiny("bert", type_vocab_size=0)
    with pytest.raises(ValueError, match="Enhanced Mask Decoder needs n_layer >= 2"):
        Deberta(DebertaConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=64))
    with pytest.raises(ValueError, match="batch_size must be >= 2"):
        objective("bert").prepare(tiny("bert").config, torch.zeros(1, 16, dtype=torch.long), None)


@pytest.mark.parametrize("name", ENCODERS)
def test_train_resume_eval_and_fill(name, shakespeare_dir, tmp_path, capsys):
    """The real loop (in-process, to skip interpreter start-up): MLM/pair metrics logged, the checkpoint rebuilds the
    variant (ALBERT's single shared layer, DeBERTa's tables) and training resumes from it."""
    import train
    out = tmp_path / name
    common = [f"--data_dir={shakespeare_dir}", f"--out_dir={out}", f"--variant={name}", "--device=cpu",
              "--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=4", "--eval_iters=2",
              "--dropout=0.0"] + [f"--{k}={v}" for k, v in EXTRA[name].items()]
    train.main([*common, "--max_iters=6", "--lr_decay_iters=6", "--warmup_iters=1", "--eval_interval=6"])
    evals = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"eval"' in x]
    last = evals[-1]
    assert {"val/loss", "val/mlm_acc", "val/bpc"} <= last.keys()  # bpc: char data; MLM CE in bits
    assert ("val/nsp_acc" in last) == (name == "bert") and ("val/sop_acc" in last) == (name == "albert")
    model = checkpoint.build_model(checkpoint.load(out / "ckpt.pt"), variants.get)
    assert type(model) is variants.get(name).model_class and model.config.vocab_size == 69  # 65 chars + 4 specials
    train.main([*common, "--init_from=resume", "--max_iters=8", "--lr_decay_iters=8", "--warmup_iters=1",
                "--eval_interval=2"])  # resumes the variant with its optimiser state and goes on
    evals = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"eval"' in x]
    assert [e["iter"] for e in evals] == [0, 6, 8]
    capsys.readouterr()
    if name == "bert":
        import sample
        sample.main([f"--out_dir={out}", "--mode=fill", "--start=ROM[MASK]O", "--top_k=3"])
        printed = capsys.readouterr().out
        assert printed.startswith("ROM") and "[MASK] #1:" in printed

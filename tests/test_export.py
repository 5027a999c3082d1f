"""export.py: checkpoints of ours as transformers directories. Each exportable variant loads through transformers'
Auto classes offline with the same logits (and the same greedy generations for the decoders), and imports back
through the variant's own from_pretrained to bit-identical weights; the GPT-2 tokenizer files encode as tiktoken;
unexportable variants, a non-empty target and a failed write are handled without leaving anything half-written."""
from dataclasses import asdict

import pytest
import torch

from infra import checkpoint
from tools import export
import variants
from conftest import run
from objectives import special_ids

T = pytest.importorskip("transformers")

CHAR_META = {"tokenizer": "char", "vocab_size": 57}
GPT2_META = {"tokenizer": "gpt2", "vocab_size": 50257, "eot_token": 50256}
TOL = 1e-5
DECODERS = {
    "gpt": ("gpt", dict(n_layer=2, n_head=4, n_embd=32, block_size=32, vocab_size=61)),
    "gpt_tanh_no_bias": ("gpt", dict(n_layer=2, n_head=4, n_embd=32, block_size=32, vocab_size=61,
                                     hidden_act="gelu_tanh", bias=False)),
    "llama_gqa": ("llama", dict(n_layer=2, n_head=4, n_kv_head=2, n_embd=32, block_size=32, vocab_size=61,
                                ffn_hidden=48, norm_eps=1e-6, rope_theta=500.0)),
}
ENCODER_SHAPE = dict(n_layer=3, n_head=4, n_embd=32, block_size=16, vocab_size=64)
ENCODERS = {"bert": {}, "albert": {"embedding_size": 16}, "deberta": {"max_relative_positions": 4, "emd": False}}
HF_LOADER = {"gpt": "AutoModelForCausalLM", "llama": "AutoModelForCausalLM", "bert": "AutoModelForPreTraining",
             "albert": "AutoModelForPreTraining", "deberta": "AutoModelForMaskedLM"}


def build(name, **kw):
    """A model of variant name with random weights well away from the init (non-zero biases, norm gains around 1),
    so a swapped, transposed or missing tensor moves the logits."""
    torch.manual_seed(0)
    spec = variants.get(name)
    model = spec.build(spec.config_class(**kw))
    with torch.no_grad():
        for pname, p in model.named_parameters():
            p.normal_(0.0 if p.dim() > 1 or pname.endswith("bias") else 1.0, 0.1)
    return model.eval()


def save_run(run_dir, name, model, meta=CHAR_META):
    """A checkpoint as train.py's Trainer.save writes it (the fields export reads, plus the bookkeeping)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint.save({"variant": name, "model_args": asdict(model.config), "model": model.state_dict(),
                     "iter_num": 0, "best_val_loss": float("inf"), "eval_done": True, "config": {"variant": name},
                     "data_meta": meta}, run_dir / "ckpt.pt")
    return run_dir


def export_cli(capsys, *args):
    """(exit code, stdout, stderr) of export.main(args) in this process."""
    try:
        export.main(list(args))
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def exported(tmp_path, capsys, name, model, meta=CHAR_META):
    """Export model's checkpoint to RUN/hf (the default target); (directory, stdout)."""
    run_dir = save_run(tmp_path / "run", name, model, meta)
    code, out, err = export_cli(capsys, f"--out_dir={run_dir}")
    assert code == 0, err
    return run_dir / "hf", out


def load_hf(directory, name):
    hf = getattr(T, HF_LOADER[name]).from_pretrained(directory, local_files_only=True).eval()
    return hf


def assert_imports_back(name, directory, model, zero_filled=()):
    """The variant's importer gives back our weights bit for bit (plus zeros where HF had tensors we lack)."""
    back = variants.get(name).model_class.from_pretrained(str(directory)).state_dict()
    ours = model.state_dict()
    assert set(back) == set(ours) | set(zero_filled)
    for k, v in ours.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k
    for k in zero_filled:
        assert not back[k].any(), k


def max_diff(a, b):
    return (a - b).abs().max().item()


@pytest.mark.parametrize("case", DECODERS)
def test_decoder_export_matches_transformers(case, tmp_path, capsys):
    name, kw = DECODERS[case]
    model = build(name, **kw)
    directory, out = exported(tmp_path, capsys, name, model)
    assert "no tokenizer files: the char tokenizer has no HF form" in out
    assert not (directory / "vocab.json").exists() and (directory / "model.safetensors").is_file()
    hf = load_hf(directory, name)
    assert type(hf).__name__ == {"gpt": "GPT2LMHeadModel", "llama": "LlamaForCausalLM"}[name]
    hc = hf.config
    if name == "gpt":
        assert hc.activation_function == {"gelu": "gelu", "gelu_tanh": "gelu_new"}[kw.get("hidden_act", "gelu")]
        assert hc.n_positions == 32 and hc.layer_norm_epsilon == 1e-5 and hc.tie_word_embeddings
    else:
        assert (hc.num_key_value_heads, hc.intermediate_size, hc.max_position_embeddings) == (2, 48, 32)
        assert hc.rms_norm_eps == 1e-6 and not hc.tie_word_embeddings
    assert hc.eos_token_id is None  # char data has no end-of-text token: generation never stops early

    torch.manual_seed(1)
    idx = torch.randint(0, 61, (2, 24))
    with torch.no_grad():
        diff = max_diff(model(idx), hf(idx).logits)
    print(f"{case}: max |logits diff| {diff:.3g}")
    assert diff <= TOL
    prompt = idx[:, :5]
    ours = model.generate(prompt, 24, temperature=0)
    theirs = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=24, do_sample=False)
    assert torch.equal(ours, theirs)

    zero_filled = []
    if not kw.get("bias", True):  # GPT-2 always has biases: ours are written as zeros, which compute the same
        assert "written as zeros" in out
        zero_filled = [k for k in hf.state_dict() if k.endswith(".bias")]
    assert_imports_back(name, directory, model, zero_filled)


@pytest.mark.parametrize("name", ENCODERS)
def test_encoder_export_matches_transformers(name, tmp_path, capsys):
    spec = variants.get(name)
    model = build(name, **{**ENCODER_SHAPE, **ENCODERS[name]})
    directory, _ = exported(tmp_path, capsys, name, model)
    hf = load_hf(directory, name)
    assert type(hf).__name__ == {"bert": "BertForPreTraining", "albert": "AlbertForPreTraining",
                                 "deberta": "DebertaForMaskedLM"}[name]
    sp = special_ids(model.config.vocab_size)
    assert (hf.config.pad_token_id, hf.config.bos_token_id, hf.config.eos_token_id) == (sp["pad"], sp["cls"],
                                                                                         sp["sep"])
    if name == "albert":
        assert (hf.config.embedding_size, hf.config.hidden_size) == (16, 32)

    torch.manual_seed(1)
    idx = torch.randint(0, 60, (2, 14))  # 14 > 2k = 8: DeBERTa's relative distances are clamped
    types = torch.cat([torch.zeros(2, 6, dtype=torch.long), torch.ones(2, 8, dtype=torch.long)], 1)
    attn = torch.ones(2, 14, dtype=torch.long)
    attn[1, 10:] = 0
    kw = {} if name == "deberta" else {"token_type_ids": types}
    diffs = []
    for mask in (None, attn):
        with torch.no_grad():
            ours = model(idx, token_types=kw.get("token_type_ids"), attention_mask=mask)
            theirs = hf(input_ids=idx, attention_mask=mask, **kw)
        keep = slice(None) if mask is None else mask.bool()
        mlm = theirs.logits if name == "deberta" else theirs.prediction_logits
        diffs.append(max_diff(ours["mlm"][keep], mlm[keep]))
        if name != "deberta":
            pair = theirs.seq_relationship_logits if name == "bert" else theirs.sop_logits
            diffs.append(max_diff(ours["pair"], pair))
    print(f"{name}: max |logits diff| {max(diffs):.3g}")
    assert max(diffs) <= TOL
    assert spec.objective.causal is False
    assert_imports_back(name, directory, model)


@pytest.mark.parametrize("name", ["bert", "albert"])
def test_encoder_without_pair_task_exports_masked_lm(name, tmp_path, capsys):
    """pair_task='none' has no pooler or pair head: ...ForMaskedLM, which imports back as pair_task='none'. A BERT
    without token types or biases gets a one-row zero token-type table and zero biases, which compute the same."""
    extra = {"pair_task": "none", **ENCODERS[name]}
    if name == "bert":
        extra.update(type_vocab_size=0, bias=False)
    model = build(name, **{**ENCODER_SHAPE, **extra})
    directory, out = exported(tmp_path, capsys, name, model)
    hf = T.AutoModelForMaskedLM.from_pretrained(directory, local_files_only=True).eval()
    assert type(hf).__name__ == f"{name.capitalize()}ForMaskedLM"
    idx = torch.randint(0, 60, (2, 12))
    with torch.no_grad():
        assert max_diff(model(idx)["mlm"], hf(input_ids=idx).logits) <= TOL
    back = variants.get(name).model_class.from_pretrained(str(directory))
    assert back.config.pair_task == "none"
    zero_filled = []
    if name == "bert":
        assert "written as zeros" in out
        zero_filled = sorted(set(back.state_dict()) - set(model.state_dict()))
        assert "transformer.wtt.weight" in zero_filled and all(
            k == "transformer.wtt.weight" or k.endswith(".bias") for k in zero_filled)
    assert_imports_back(name, directory, model, zero_filled)


def test_deberta_emd_exports_its_encoder(tmp_path, capsys):
    """transformers has no Enhanced Mask Decoder: the export says so in one line and computes what our model computes
    without the decoder; the EMD's position table is the one tensor left out."""
    model = build("deberta", **{**ENCODER_SHAPE, "max_relative_positions": 4})
    assert model.config.emd
    directory, out = exported(tmp_path, capsys, "deberta", model)
    notes = [line for line in out.splitlines() if "Enhanced Mask Decoder" in line]
    assert len(notes) == 1 and "emd=False" in notes[0]
    assert "Enhanced Mask Decoder" in export.__doc__
    hf = load_hf(directory, "deberta")
    idx = torch.randint(0, 60, (2, 14))
    with torch.no_grad():
        with_emd = model(idx)["mlm"]
        model.config.emd = False
        without = model(idx)["mlm"]
        theirs = hf(input_ids=idx).logits
    assert max_diff(without, theirs) <= TOL and max_diff(with_emd, theirs) > 1e-3
    back = variants.get("deberta").model_class.from_pretrained(str(directory)).state_dict()
    ours = {k: v for k, v in model.state_dict().items() if k != "transformer.wpe.weight"}
    assert set(back) == set(ours) and all(torch.equal(back[k], v) for k, v in ours.items())


@pytest.mark.parametrize("name", ["layerwise", "alibi"])
def test_variants_without_hf_form_are_refused(name, tmp_path, capsys):
    model = build(name, n_layer=2, n_head=2, n_embd=16, block_size=16, vocab_size=32)
    run_dir = save_run(tmp_path / "run", name, model)
    code, out, err = export_cli(capsys, f"--out_dir={run_dir}")
    assert code == 1 and out == ""
    assert err.splitlines() == [f"error: variant {name!r} has no Hugging Face form; export supports "
                                "gpt, llama, bert, albert, deberta"]
    assert sorted(p.name for p in run_dir.iterdir()) == ["ckpt.pt"]


def test_gpt2_tokenizer_files_encode_as_tiktoken(tmp_path, capsys):
    """vocab.json + merges.txt derived from tiktoken's gpt2 ranks: transformers' GPT-2 tokenizers read them and encode
    to tiktoken's ids; an encoder's export adds [PAD] [CLS] [SEP] [MASK] at their ids."""
    tiktoken = pytest.importorskip("tiktoken")
    enc = tiktoken.get_encoding("gpt2")
    model = build("gpt", n_layer=1, n_head=2, n_embd=8, block_size=64, vocab_size=50304)
    directory, out = exported(tmp_path / "gpt", capsys, "gpt", model, GPT2_META)
    assert "tokenizer: GPT-2 BPE" in out
    for f in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        assert (directory / f).is_file(), f
    merges = (directory / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert merges[0] == "#version: 0.2" and len(merges) == 1 + 50000 and merges[1] == "Ġ t"
    texts = ["Hello world", " leading space, trailing space ", "it's they'll we've I'm", "tabs\tand\n\nnewlines  ",
             "naïve café, 日本語, emoji 🤖🚀", "3.14159 + 2,718 = 12345678", "a<|endoftext|>b"]
    for tok in (T.AutoTokenizer.from_pretrained(directory, local_files_only=True),
                T.GPT2Tokenizer.from_pretrained(directory, local_files_only=True),
                T.GPT2TokenizerFast.from_pretrained(directory, local_files_only=True)):
        assert len(tok) == 50257 and tok.eos_token_id == 50256
        for text in texts:
            ids = tok(text)["input_ids"]
            assert ids == enc.encode(text, allowed_special={"<|endoftext|>"}), text
            assert tok.decode(ids) == text
    hf = load_hf(directory, "gpt")
    assert hf.config.eos_token_id == hf.config.bos_token_id == 50256 and hf.config.vocab_size == 50304

    bert = build("bert", n_layer=1, n_head=2, n_embd=8, block_size=16, vocab_size=50304)
    directory, _ = exported(tmp_path / "bert", capsys, "bert", bert, GPT2_META)
    tok = T.AutoTokenizer.from_pretrained(directory, local_files_only=True)
    sp = special_ids(50304)
    assert (tok.pad_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id) == \
        (sp["pad"], sp["cls"], sp["sep"], sp["mask"])
    # the text around a special token is encoded on its own, as sample.py's fill mode encodes the pieces
    assert tok("The cat [MASK].")["input_ids"] == enc.encode("The cat ") + [sp["mask"]] + enc.encode(".")


def test_bpe_merges_recovers_the_merge_order():
    ranks = {bytes([b]): b for b in range(256)}
    for i, token in enumerate([b"ab", b"abc", b"bc", b"abcbc"]):
        ranks[token] = 256 + i
    # "abcbc": over ranks below its own, BPE gives ab|c|bc -> abc|bc, one merge
    assert export.bpe_merges(ranks) == [(b"a", b"b"), (b"ab", b"c"), (b"b", b"c"), (b"abc", b"bc")]
    assert export.byte_alphabet()[ord(" ")] == "Ġ" and len(set(export.byte_alphabet().values())) == 256


def test_existing_target_is_kept_unless_overwrite(tmp_path, capsys):
    model = build("gpt", **DECODERS["gpt"][1])
    run_dir = save_run(tmp_path / "run", "gpt", model)
    to = tmp_path / "exports" / "gpt-hf"
    assert export_cli(capsys, f"--out_dir={run_dir}", f"--to={to}")[0] == 0
    before = (to / "model.safetensors").read_bytes()
    (to / "stale.txt").write_text("from an older export")
    code, out, err = export_cli(capsys, f"--out_dir={run_dir}", f"--to={to}")
    assert code == 2
    assert err.splitlines() == [f"error: {to} exists and is not empty; use --overwrite=True to replace it"]
    assert (to / "stale.txt").exists()
    code, out, err = export_cli(capsys, f"--out_dir={run_dir}", f"--to={to}", "--overwrite=True")
    assert code == 0 and not (to / "stale.txt").exists() and (to / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in to.parent.iterdir()) == ["gpt-hf"]  # no temporary directories left
    code, _, err = export_cli(capsys, f"--out_dir={run_dir}", f"--to={run_dir}", "--overwrite=True")
    assert code == 2 and "holds the checkpoint" in err and (run_dir / "ckpt.pt").is_file()


def test_failed_export_leaves_nothing_half_written(tmp_path, capsys, monkeypatch):
    model = build("gpt", **DECODERS["gpt"][1])
    run_dir = save_run(tmp_path / "run", "gpt", model)

    def broken(*args):
        raise OSError("No space left on device")

    monkeypatch.setattr(export, "write_tokenizer", broken)
    code, out, err = export_cli(capsys, f"--out_dir={run_dir}")
    assert code == 1 and err.splitlines() == ["error: No space left on device"]
    assert sorted(p.name for p in run_dir.iterdir()) == ["ckpt.pt"]
    # an existing export survives a failed --overwrite=True untouched
    (run_dir / "hf").mkdir()
    (run_dir / "hf" / "config.json").write_text("{}")
    assert export_cli(capsys, f"--out_dir={run_dir}", "--overwrite=True")[0] == 1
    assert sorted(p.name for p in run_dir.iterdir()) == ["ckpt.pt", "hf"]
    assert (run_dir / "hf" / "config.json").read_text() == "{}"


def test_config_and_file_errors(tmp_path, capsys):
    code, _, err = export_cli(capsys, f"--out_dir={tmp_path}", "--too=x")
    assert code == 2 and err.splitlines() == ["error: unknown config key 'too'; did you mean to?"]
    code, _, err = export_cli(capsys, f"--out_dir={tmp_path}", "--overwrite=maybe")
    assert code == 2 and len(err.splitlines()) == 1 and "overwrite expects bool" in err
    code, _, err = export_cli(capsys, f"--out_dir={tmp_path}")
    assert code == 1 and err.splitlines() == [f"error: checkpoint {tmp_path / 'ckpt.pt'} not found"]
    assert not (tmp_path / "hf").exists()


def test_command_line(tmp_path):
    """As a user runs it: python tools/export.py --out_dir=RUN writes RUN/hf, which transformers loads offline."""
    model = build("llama", **DECODERS["llama_gqa"][1])
    run_dir = save_run(tmp_path / "run", "llama", model)
    proc = run(["tools/export.py", f"--out_dir={run_dir}", "--ckpt=ckpt.pt"])
    assert proc.stdout.splitlines()[-1].startswith(f"wrote {run_dir / 'hf'}: LlamaForCausalLM")
    assert "error" not in proc.stderr
    hf = T.AutoModelForCausalLM.from_pretrained(run_dir / "hf", local_files_only=True).eval()
    idx = torch.randint(0, 61, (1, 16))
    with torch.no_grad():
        assert max_diff(model(idx), hf(idx).logits) <= TOL

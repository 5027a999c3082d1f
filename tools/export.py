"""
Export a checkpoint of ours as a Hugging Face transformers directory (config.json + model.safetensors, plus the
GPT-2 tokenizer files when the run's data was GPT-2 BPE tokenized):

    python tools/export.py --out_dir=out-llama                       # out-llama/ckpt.pt -> out-llama/hf
    python tools/export.py --out_dir=out-bert --ckpt=best.pt --to=bert-hf --overwrite=True

Variants with a Hugging Face form: gpt -> GPT2LMHeadModel (a bias-free model gets zero biases, which compute the
same), llama -> LlamaForCausalLM, bert -> BertForPreTraining, albert -> AlbertForPreTraining (each ...ForMaskedLM
when the model has no pair task), deberta -> DebertaForMaskedLM. transformers has no DeBERTa Enhanced Mask Decoder:
an emd=True model exports its encoder (the EMD re-uses the last layer, which is written; its absolute position table
is not), and transformers runs it without the decoder. The encoders' [PAD] [CLS] [SEP] [MASK] (the last four ids)
go into the config's pad/bos/eos token ids and into the tokenizer's special tokens.

The weight mapping is hf_import's, the importers' own, applied backwards: `<variant>.from_pretrained(the export)`
gives back the same weights. The directory is written beside the target under a temporary name and then renamed into
place, or atomically exchanged with the previous export, so at every instant the target is a complete export or was
never written; a non-empty target is replaced only with --overwrite=True.
Errors: one `error: ...` line on stderr; exit 2 for a bad command line, 1 for missing or unusable files.
"""
import ctypes
import errno
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for python tools/<name>.py
from infra import checkpoint, configurator, hf_import, loader, rundir, runtime
from infra.runtime import fail
import variants
from data.common import DataError, fsync_dir, get_tokenizer, remove_dead_temporaries
from objectives import special_ids


@dataclass
class ExportConfig:
    out_dir: str = "out"  # the run directory holding the checkpoint
    ckpt: str = "ckpt.pt"  # checkpoint file in out_dir (or best.pt)
    to: str = ""  # the Hugging Face directory to write; "" = out_dir/hf
    overwrite: bool = False  # replace an existing non-empty `to`


# variant -> (its HF class and config fields, the name mapping), both from hf_import
EXPORTS = {"gpt": (hf_import.gpt2_target, hf_import.gpt2_rules),
           "llama": (hf_import.llama_target, hf_import.llama_rules),
           "bert": (hf_import.bert_target, hf_import.bert_rules),
           "albert": (hf_import.albert_target, hf_import.albert_rules),
           "deberta": (hf_import.deberta_target, hf_import.deberta_rules)}
EOT_TEXT = "<|endoftext|>"
SPECIAL_TEXT = {"pad": "[PAD]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}


# ---- the model ----------------------------------------------------------------------------------------------------

def token_ids(variant, config, meta):
    """The HF config's pad/bos/eos ids: an encoder's [PAD], [CLS], [SEP]; a decoder's GPT-2 <|endoftext|> as bos and
    eos (none for char/byte data, which has no such token)."""
    if not variants.get(variant).objective.causal:  # an encoder
        sp = special_ids(config.vocab_size)
        return {"pad_token_id": sp["pad"], "bos_token_id": sp["cls"], "eos_token_id": sp["sep"]}
    eot = (meta or {}).get("eot_token") if (meta or {}).get("tokenizer") == "gpt2" else None
    return {"pad_token_id": None, "bos_token_id": eot, "eos_token_id": eot}


def to_hf(variant, model, meta=None):
    """(the transformers model holding model's weights, notes to print)."""
    import transformers
    describe, mapping = EXPORTS[variant]
    config = model.config
    target, rules, state = describe(config), mapping(config), model.state_dict()
    hf_class = getattr(transformers, target.hf_class)
    hf = hf_class(hf_class.config_class(**target.fields, **token_ids(variant, config, meta)))
    notes = [f"note: {target.note}"] if target.note else []
    zeros = [r.ours for r in rules if r.optional and r.ours not in state]
    if zeros:
        notes.append(f"note: {target.hf_class} has {len(zeros)} tensors this model lacks ({zeros[0]}, ...): "
                     "written as zeros, which compute the same")
    hf_import.export_weights(rules, state, hf, target.dropped)
    return hf.eval(), notes


# ---- the tokenizer ------------------------------------------------------------------------------------------------

def byte_alphabet():
    """GPT-2's byte -> visible character table for vocab.json and merges.txt: the printable Latin-1 bytes ('!'..'~',
    '¡'..'¬', '®'..'ÿ') stand for themselves, the other 68 bytes for chr(256 + k) in byte order."""
    visible = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    hidden = [b for b in range(256) if b not in visible]
    return {**{b: chr(b) for b in visible}, **{b: chr(256 + k) for k, b in enumerate(hidden)}}


def bpe_merges(ranks):
    """The merge list of a byte-level BPE given its {token bytes: rank}: the token of rank r is the one merge that
    BPE over ranks below r leaves of its bytes, so the merges come out in rank order."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) < 2:
            continue
        parts = [token[i:i + 1] for i in range(len(token))]
        while len(parts) > 2:
            best = min(range(len(parts) - 1), key=lambda i: ranks.get(parts[i] + parts[i + 1], rank))
            if ranks.get(parts[best] + parts[best + 1], rank) >= rank:
                break
            parts[best:best + 2] = [parts[best] + parts[best + 1]]
        if len(parts) != 2:
            raise ValueError(f"token {token!r} (rank {rank}) is not one merge of lower-ranked tokens")
        merges.append(tuple(parts))
    return merges


def write_gpt2_tokenizer(directory, block_size, specials=None):
    """vocab.json, merges.txt, tokenizer_config.json and special_tokens_map.json of tiktoken's gpt2 encoding, which
    transformers' GPT-2 tokenizers read. specials: an encoder's {"pad"|"cls"|"sep"|"mask": id}, added to the
    vocabulary as [PAD] [CLS] [SEP] [MASK] (bos and eos are then [CLS] and [SEP], as in the model's config)."""
    enc = get_tokenizer({"tokenizer": "gpt2", "vocab_size": 50257}).enc
    reserved = {enc.encode_single_token(s) for s in enc.special_tokens_set}  # <|endoftext|>
    ranks = {enc.decode_single_token_bytes(i): i for i in range(enc.n_vocab) if i not in reserved}
    alphabet = byte_alphabet()

    def visible(b):
        return "".join(alphabet[x] for x in b)

    vocab = {visible(b): i for b, i in ranks.items()}
    vocab.update({enc.decode([i]): i for i in reserved})
    merges = ["#version: 0.2", *(f"{visible(a)} {visible(b)}" for a, b in bpe_merges(ranks))]
    tokens = {"bos_token": EOT_TEXT, "eos_token": EOT_TEXT, "unk_token": EOT_TEXT}
    if specials:
        vocab.update({SPECIAL_TEXT[k]: i for k, i in specials.items()})
        tokens.update({f"{k}_token": SPECIAL_TEXT[k] for k in specials})
        tokens.update(bos_token=SPECIAL_TEXT["cls"], eos_token=SPECIAL_TEXT["sep"])
    d = Path(directory)
    (d / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (d / "merges.txt").write_text("\n".join(merges) + "\n", encoding="utf-8")
    (d / "special_tokens_map.json").write_text(json.dumps(tokens, indent=2) + "\n")
    config = {"tokenizer_class": "GPT2Tokenizer", "model_max_length": block_size, "add_prefix_space": False,
              "errors": "replace", **tokens}
    (d / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def write_tokenizer(directory, variant, config, meta):
    """The tokenizer files the data's tokenizer has in transformers; returns the line to print."""
    kind = (meta or {}).get("tokenizer")
    if kind != "gpt2":
        reason = "the checkpoint records no tokenizer" if kind is None else f"the {kind} tokenizer has no HF form"
        return f"no tokenizer files: {reason}"
    get_tokenizer(meta)  # the recorded vocabulary is tiktoken's gpt2
    write_gpt2_tokenizer(directory, config.block_size,
                         None if variants.get(variant).objective.causal else special_ids(config.vocab_size))
    return "tokenizer: GPT-2 BPE (vocab.json, merges.txt)"


# ---- the directory ------------------------------------------------------------------------------------------------

def check_target(to, overwrite, ckpt_path):
    runtime.check_output_dir(to, "--to")  # a file, a link to nowhere, a place this process cannot write: exit 1
    if to.resolve() in ckpt_path.resolve().parents:
        raise configurator.ConfigError(f"--to={to} holds the checkpoint {ckpt_path}; choose another directory")
    if to.is_dir() and any(to.iterdir()) and not overwrite:
        raise configurator.ConfigError(f"{to} exists and is not empty; use --overwrite=True to replace it")


def exchange(a, b):
    """Swap two existing paths in one atomic step (Linux renameat2 with RENAME_EXCHANGE). False where the system or
    the filesystem cannot."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    at_cwd, rename_exchange = -100, 2
    if renameat2(at_cwd, os.fsencode(a), at_cwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a))


def write_directory(to, fill):
    """Call fill(path) on a fresh temporary directory beside `to`, then publish it as `to`: a rename where nothing
    was, else an atomic exchange with the old directory, so at every instant `to` is a complete export (the old or
    the new one). Where exchange is unavailable, two renames leave a moment without `to`. Temporaries of killed
    exports of `to` are removed first."""
    to.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_temporaries(to.parent, rf"\.{re.escape(to.name)}\.(?:tmp|old)(\d+)")
    tmp, old = to.with_name(f".{to.name}.tmp{os.getpid()}"), to.with_name(f".{to.name}.old{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        fill(tmp)
        if not to.exists():
            os.replace(tmp, to)
        elif not exchange(tmp, to):  # tmp now holds the old export, removed below
            os.replace(to, old)
            try:
                os.replace(tmp, to)
            except OSError:
                os.replace(old, to)
                raise
        fsync_dir(to.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def read_config(argv):
    try:
        cfg, _, _ = configurator.resolve(argv, ExportConfig)
        runtime.require_path(cfg.out_dir)
        to = Path(cfg.to) if cfg.to else Path(cfg.out_dir) / "hf"
        path = Path(cfg.out_dir) / cfg.ckpt
        check_target(to, cfg.overwrite, path)
        return path, to
    except (configurator.ConfigError, ValueError) as e:
        fail(e, 1 if isinstance(e, runtime.Unavailable) else 2)


def main(argv):
    path, to = read_config(argv)
    try:
        if path.parent.is_dir() and to.parent.resolve() == path.parent.resolve():
            rundir.claim(path.parent)  # into the run's own directory: not while a training run or tool writes there
        opened = loader.open_model(path, variants.get)
        model, meta, variant = opened.model, opened.meta, opened.ckpt["variant"]
        if variant not in EXPORTS:
            raise ValueError(f"variant {variant!r} has no Hugging Face form; export supports {', '.join(EXPORTS)}")
        hf, notes = to_hf(variant, model, meta)
        lines = []

        def fill(directory):
            from transformers.utils import logging
            logging.disable_progress_bar()
            hf.save_pretrained(directory, safe_serialization=True)
            lines.append(write_tokenizer(directory, variant, model.config, meta))

        write_directory(to, fill)
    except ImportError as e:
        fail(f"export needs transformers and safetensors ({e})")
    except (checkpoint.CheckpointError, DataError, OSError, ValueError) as e:  # runtime.Unavailable is a ValueError
        fail(" ".join(str(e).split()))
    for line in notes + lines:
        print(line)
    print(f"wrote {to}: {type(hf).__name__} from {path} ({variant}, {model.num_params(False):,} parameters)")


if __name__ == "__main__":
    main(sys.argv[1:])

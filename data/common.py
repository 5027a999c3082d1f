"""Shared data code: the on-disk format (train/val/test .bin memmaps + meta.json), its validation, the tokenizers,
and the small helpers every data/<name>/prepare.py uses.

Format (format_version 1): `<split>.bin` holds the token ids as raw little-endian `dtype` values, nothing else;
meta.json says how to read them:
    {"format_version": 1, "dataset": str, "tokenizer": "char"|"byte"|"gpt2", "vocab_size": int,
     "dtype": "uint8"|"uint16",
     "splits": {"train": {"tokens": int, "bytes": int, "words": int, "max_id": int}, "val": {...}, "test": {...}?},
     "chars": [...] (char only), "eot_token": int (gpt2 only),
     "doc_separator": int (packed documents: the id that ends every document; train.py's doc_mask reads it),
     "sources": [{"path": str, "sha256": str, "bytes": int}]}
`bytes` (UTF-8 bytes of the split's source text) and `words` (whitespace-split words) let an evaluation convert a
per-token loss into bits per byte/character or per-word perplexity. `max_id` (the largest id in the split) is
checked against the file whenever it is opened.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import urllib.request
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1
DTYPES = {"uint8": 256, "uint16": 65536}  # dtype name -> number of ids it can hold
TOKENIZERS = ("char", "byte", "gpt2")
EOT_TEXT = "<|endoftext|>"


class DataError(Exception):
    """A data file is missing, malformed or inconsistent with meta.json. The message is one line."""


# ---------------------------------------------------------------------------------------------------------------
# writing


def fsync_dir(path) -> None:
    """Make the renames inside a directory durable; a no-op where the platform cannot open a directory."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def output_dir_problem(path, what="out_dir") -> tuple[int, str]:
    """(exit code, one-line reason) when path cannot be a directory this process writes into, else (0, ""): 2 for an
    empty or blank setting (an unset shell variable must not mean the working directory), 1 for a file, a symbolic
    link that leads nowhere, or a place this process cannot write. Creates nothing: a missing directory is judged by
    its nearest existing parent."""
    if not str(path).strip():
        return 2, f"{what} is empty; give the directory to use"
    path = Path(path)
    if path.is_symlink() and not path.exists():
        return 1, f"{what} {path} is a symbolic link that leads nowhere (dangling, or a loop)"
    if path.exists() and not path.is_dir():
        return 1, f"{what} {path} is a file, not a directory"
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return 1, f"{what} {path} cannot be created: {existing} is a file"
    probe = existing / f".write-test-{os.getpid()}"
    try:  # access() misjudges some mounts and root; a real write does not
        probe.touch()
        probe.unlink()
    except OSError as e:
        return 1, f"{what} {path} is not writable ({e.strerror or type(e).__name__})"
    return 0, ""


def pid_alive(pid) -> bool:
    """Whether a process with this id runs on this machine (one owned by another user counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OverflowError, ValueError):  # no process can have this id
        return False
    except PermissionError:
        return True
    return True


def remove_dead_temporaries(directory, pattern) -> None:
    """Delete the files and folders in directory whose name fully matches the regex pattern (group 1: the writer's
    pid) and whose writer no longer runs: what killed writers left. Those of running writers, and of this process,
    stay. Every writer of a target calls this first, so leftovers live only until the target's next write."""
    try:
        entries = list(Path(directory).iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return
    for p in entries:
        m = re.fullmatch(pattern, p.name)
        if m and int(m[1]) != os.getpid() and not pid_alive(int(m[1])):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


def write_dataset(out_dir, splits: dict[str, np.ndarray], meta: dict) -> None:
    """Write `<split>.bin` for every split and then meta.json into out_dir, atomically.

    Everything is first written to temporary names and fsynced. Only then is the old meta.json removed, the bins
    renamed into place and the new meta.json renamed last, so at no point does a meta.json describe bins it was not
    written with (a crash in between leaves no meta.json, which readers report loudly).
    meta gets format_version and per-split token counts filled in where the caller left them out.
    """
    out_dir = Path(out_dir)
    meta = {"format_version": FORMAT_VERSION, **meta}
    dtype, vocab_size = meta.get("dtype"), meta.get("vocab_size")
    if dtype not in DTYPES:
        raise DataError(f"write_dataset: dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    meta["splits"] = {name: dict(info) for name, info in meta.get("splits", {}).items()}
    for name, arr in splits.items():
        arr = np.asarray(arr)
        info = meta["splits"].setdefault(name, {})
        if info.setdefault("tokens", len(arr)) != len(arr):
            raise DataError(f"write_dataset: split {name!r} has {len(arr)} tokens but meta says {info['tokens']}")
        # validate before anything touches the disk: astype would silently wrap ids that do not fit
        if len(arr) and (arr.min() < 0 or arr.max() >= vocab_size):
            raise DataError(f"write_dataset: split {name!r} has ids in [{arr.min()}, {arr.max()}], "
                            f"outside the vocabulary [0, {vocab_size})")
        if len(arr):
            info["max_id"] = int(arr.max())  # lets readers catch a foreign or corrupt .bin of the right size
    if set(meta["splits"]) != set(splits):
        raise DataError(f"write_dataset: meta lists splits {sorted(meta['splits'])} "
                        f"but got arrays for {sorted(splits)}")
    _check_meta(meta, "write_dataset meta")

    out_dir.mkdir(parents=True, exist_ok=True)
    remove_dead_temporaries(out_dir, r".+\.tmp-(\d+)")
    tag = f".tmp-{os.getpid()}"
    pending = []  # (temp path, final path), meta.json last
    try:
        for name, arr in splits.items():
            tmp = out_dir / f"{name}.bin{tag}"
            pending.append((tmp, out_dir / f"{name}.bin"))
            with open(tmp, "wb") as f:
                np.asarray(arr).astype(dtype).tofile(f)
                f.flush()
                os.fsync(f.fileno())
        tmp = out_dir / f"meta.json{tag}"
        pending.append((tmp, out_dir / "meta.json"))
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1, ensure_ascii=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        (out_dir / "meta.json").unlink(missing_ok=True)
        fsync_dir(out_dir)
        for tmp, final in pending:
            os.replace(tmp, final)
        fsync_dir(out_dir)
    finally:
        for tmp, _ in pending:
            tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------------------------
# reading


def _check_meta(meta, where: str) -> None:
    def bad(msg):
        raise DataError(f"{where}: {msg}")

    if not isinstance(meta, dict):
        bad("expected a JSON object")
    for key in ("format_version", "dataset", "tokenizer", "vocab_size", "dtype", "splits"):
        if key not in meta:
            bad(f"missing key {key!r}")
    if meta["format_version"] != FORMAT_VERSION:
        bad(f"format_version is {meta['format_version']!r}, this code reads {FORMAT_VERSION}")
    if meta["tokenizer"] not in TOKENIZERS:
        bad(f"tokenizer must be one of {list(TOKENIZERS)}, found {meta['tokenizer']!r}")
    if meta["dtype"] not in DTYPES:
        bad(f"dtype must be one of {sorted(DTYPES)}, found {meta['dtype']!r}")
    vocab_size = meta["vocab_size"]
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < 1:
        bad(f"vocab_size must be a positive int, found {vocab_size!r}")
    if vocab_size > DTYPES[meta["dtype"]]:
        bad(f"vocab_size {vocab_size} does not fit dtype {meta['dtype']} (at most {DTYPES[meta['dtype']]} ids)")
    splits = meta["splits"]
    if not isinstance(splits, dict) or not splits:
        bad("splits must be a non-empty object")
    for name, info in splits.items():
        tokens = info.get("tokens") if isinstance(info, dict) else None
        if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0:
            bad(f"splits.{name}.tokens must be a non-negative int, found {tokens!r}")
    if meta["tokenizer"] == "char":
        chars = meta.get("chars")
        if not isinstance(chars, list) or len(chars) != vocab_size or len(set(chars)) != len(chars):
            bad(f"a char tokenizer needs 'chars': a list of {vocab_size} distinct characters")
    if meta["tokenizer"] == "byte" and vocab_size != 256:
        bad(f"a byte tokenizer needs vocab_size 256, found {vocab_size}")
    if meta["tokenizer"] == "gpt2" and not isinstance(meta.get("eot_token"), int):
        bad("a gpt2 tokenizer needs an int 'eot_token'")
    sep = meta.get("doc_separator")
    if sep is not None and (not isinstance(sep, int) or isinstance(sep, bool) or not 0 <= sep < vocab_size):
        bad(f"doc_separator must be a token id in [0, {vocab_size}), found {sep!r}")


def load_meta(data_dir) -> dict:
    """Read and validate data_dir/meta.json."""
    path = Path(data_dir) / "meta.json"
    if not path.is_file():
        raise DataError(f"{path} not found; run data/<dataset>/prepare.py (or get_data.sh) to create it")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is not valid JSON ({e})") from None
    _check_meta(meta, str(path))
    return meta


def open_split(data_dir, split: str, meta: dict | None = None) -> np.memmap:
    """Read-only memmap of data_dir/<split>.bin, after checking it against meta.json."""
    meta = load_meta(data_dir) if meta is None else meta
    path = Path(data_dir) / f"{split}.bin"
    redo = f"re-run data/{meta.get('dataset', '<dataset>')}/prepare.py"
    if split not in meta["splits"]:
        raise DataError(f"{Path(data_dir) / 'meta.json'} has no split {split!r} (it has {sorted(meta['splits'])})")
    if not path.is_file():
        raise DataError(f"{path} not found but meta.json lists split {split!r}; {redo}")
    dtype = np.dtype(meta["dtype"])
    tokens = meta["splits"][split]["tokens"]
    size = path.stat().st_size
    if size != tokens * dtype.itemsize:
        raise DataError(f"{path} has {size} bytes but meta.json says {tokens} tokens of {dtype.name} "
                        f"({tokens * dtype.itemsize} bytes); {redo}")
    if tokens == 0:
        raise DataError(f"{path} is empty (0 tokens); {redo} with more text")
    data = np.memmap(path, dtype=dtype, mode="r")
    largest, recorded = _max_id(path, data), meta["splits"][split].get("max_id")
    if largest >= meta["vocab_size"] or (recorded is not None and largest != recorded):
        expected = f"{recorded}" if recorded is not None else f"below vocab_size {meta['vocab_size']}"
        raise DataError(f"{path} holds token id {largest} but meta.json says its largest id is {expected} "
                        f"(a corrupt or foreign file); {redo}")
    return data


_max_ids = {}  # (path, size, mtime): largest id, so a file is scanned once per process


def _max_id(path, data):
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _max_ids:
        step = 1 << 24
        _max_ids[key] = max(int(data[i:i + step].max()) for i in range(0, len(data), step))
    return _max_ids[key]


def vocabulary(meta: dict) -> dict:
    """What the token ids of a dataset mean: two datasets with equal vocabularies can share a model."""
    keep = {"char": ("chars",), "byte": (), "gpt2": ("eot_token",)}[meta["tokenizer"]]
    return {"tokenizer": meta["tokenizer"], "vocab_size": meta["vocab_size"], **{k: meta.get(k) for k in keep}}


def check_same_vocabulary(trained: dict, meta: dict, ckpt, data_dir) -> None:
    """DataError (one line) unless the data in data_dir (meta) uses the vocabulary the checkpoint was trained on
    (trained: the checkpoint's data meta; empty when it records none, and then nothing can be compared)."""
    if not trained:
        return
    a, b = vocabulary(trained), vocabulary(meta)
    if a == b:
        return
    head = f"{ckpt} was trained on a different vocabulary than {data_dir} holds:"
    if a["tokenizer"] != b["tokenizer"]:
        raise DataError(f"{head} {a['tokenizer']}-tokenized vs {b['tokenizer']}-tokenized data")
    if a["tokenizer"] == "char":
        ca, cb = a["chars"], b["chars"]
        diff = next((i for i, (x, y) in enumerate(zip(ca, cb)) if x != y), min(len(ca), len(cb)))
        shown = (f"id {diff} is {ca[diff]!r} vs {cb[diff]!r}" if diff < min(len(ca), len(cb)) else
                 f"the first {diff} agree")
        raise DataError(f"{head} {len(ca)} vs {len(cb)} characters ({shown}); prepare the data with the same "
                        f"characters")
    raise DataError(f"{head} " + ", ".join(f"{k} {a[k]!r} vs {b[k]!r}" for k in a if a[k] != b[k]))


# ---------------------------------------------------------------------------------------------------------------
# tokenizers


class CharTokenizer:
    name = "char"
    eot_token = None

    def __init__(self, chars):
        self.itos = list(chars)
        self.stoi = {c: i for i, c in enumerate(self.itos)}
        self.vocab_size = len(self.itos)

    def encode(self, s: str) -> list[int]:
        try:
            return [self.stoi[c] for c in s]
        except KeyError as e:
            raise DataError(f"character {e.args[0]!r} (U+{ord(e.args[0]):04X}) is not in this dataset's "
                            f"{self.vocab_size}-character vocabulary") from None

    def decode(self, ids) -> str:
        try:
            return "".join(self.itos[int(i)] for i in ids)
        except IndexError:
            raise DataError(f"char decode: id outside the vocabulary [0, {self.vocab_size})") from None


class ByteTokenizer:
    name = "byte"
    eot_token = None
    vocab_size = 256

    def encode(self, s: str) -> list[int]:
        return list(s.encode("utf-8"))

    def decode(self, ids) -> str:
        try:
            data = bytes(int(i) for i in ids)
        except ValueError:
            raise DataError("byte decode: id outside [0, 256)") from None
        return data.decode("utf-8", errors="replace")  # a sampled byte stream need not be valid UTF-8


def _gpt2_encoding():
    import tiktoken

    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:  # typically no network and no TIKTOKEN_CACHE_DIR
        msg = " ".join(str(e).split())[:200]
        raise DataError(f"cannot load the tiktoken gpt2 encoding ({type(e).__name__}: {msg}); "
                        "set TIKTOKEN_CACHE_DIR to a folder holding the GPT-2 BPE files or go online") from None


class GPT2Tokenizer:
    name = "gpt2"

    def __init__(self):
        self.enc = _gpt2_encoding()
        self.vocab_size = self.enc.n_vocab
        self.eot_token = self.enc.eot_token

    def encode(self, s: str) -> list[int]:
        # ordinary text, except that a literal <|endoftext|> in a prompt means the separator the data uses
        return self.enc.encode(s, allowed_special={EOT_TEXT})

    def decode(self, ids) -> str:
        return self.enc.decode([int(i) for i in ids])


def get_tokenizer(meta: dict):
    """The tokenizer a dataset was prepared with: .encode(str), .decode(ids), .vocab_size, .eot_token, .name."""
    kind = meta.get("tokenizer")
    if kind == "char":
        tok = CharTokenizer(meta["chars"])
    elif kind == "byte":
        tok = ByteTokenizer()
    elif kind == "gpt2":
        tok = GPT2Tokenizer()
        if meta.get("eot_token", tok.eot_token) != tok.eot_token:
            raise DataError(f"meta.json eot_token {meta['eot_token']} != tiktoken gpt2 eot {tok.eot_token}")
    else:
        raise DataError(f"unknown tokenizer {kind!r} in meta.json (expected one of {list(TOKENIZERS)})")
    if tok.vocab_size != meta.get("vocab_size"):
        raise DataError(f"meta.json vocab_size {meta.get('vocab_size')} != {kind} tokenizer's {tok.vocab_size}")
    return tok


# ---------------------------------------------------------------------------------------------------------------
# helpers for the prepare scripts


def run_cli(main) -> None:
    """Run a prepare script's main(); bad input becomes one 'error: ...' line on stderr and exit code 1."""
    try:
        main()
    except (DataError, OSError) as e:
        print("error: " + " ".join(str(e).split()), file=sys.stderr)
        sys.exit(1)


def read_source(path) -> bytes:
    """Bytes of a local source file, with one-line errors for the usual mistakes."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"source {path} not found")
    if not path.is_file():
        raise DataError(f"source {path} is not a file")
    data = path.read_bytes()
    if not data:
        raise DataError(f"source {path} is empty")
    return data


def decode_utf8(data: bytes, where) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{where} is not UTF-8 text (bad byte at offset {e.start})") from None


def read_text(path) -> tuple[str, dict]:
    """(text, source record) of a local UTF-8 text file that must contain something besides whitespace."""
    data = read_source(path)
    text = decode_utf8(data, path)
    if not text.strip():
        raise DataError(f"source {path} contains only whitespace")
    return text, source_record(path, data)


def source_record(path, data: bytes) -> dict:
    return {"path": str(path), "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def text_stats(text: str) -> dict:
    """Per-split denominators for bits-per-byte and per-word perplexity."""
    return {"bytes": len(text.encode("utf-8")), "words": len(text.split())}


def download(url: str, dest) -> Path:
    """Fetch url to dest once (kept for later runs); a failed download leaves nothing behind."""
    dest = Path(dest)
    if dest.is_file() and dest.stat().st_size > 0:
        print(f"using {dest} (already downloaded)")
        return dest
    from tqdm import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_temporaries(dest.parent, re.escape(dest.name) + r"\.tmp-(\d+)")
    tmp = dest.with_name(dest.name + f".tmp-{os.getpid()}")
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
            total = int(r.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {dest.name}") as bar:
                while chunk := r.read(1 << 20):
                    f.write(chunk)
                    bar.update(len(chunk))
        os.replace(tmp, dest)
    except Exception as e:
        raise DataError(f"download of {url} failed ({type(e).__name__}: {e}); "
                        "pass a local file with --source") from None
    finally:
        tmp.unlink(missing_ok=True)
    return dest


# GPT-2's pre-tokenizer never joins text across a newline followed by " X" or by "X" after a non-space (X not
# whitespace), so cutting there makes chunked encoding identical to encoding the whole text in one go.
_SAFE_CUT = re.compile(r"(?<=\n)(?= \S)|(?<=\S\n)(?=\S)")


def _chunks(text: str, size: int):
    start = 0
    while len(text) - start > size:
        m = _SAFE_CUT.search(text, start + size)
        if m is None:
            break
        yield text[start:m.start()]
        start = m.start()
    yield text[start:]


def gpt2_encode(texts, desc: str, eot: int | None = None, chunk_chars: int = 1 << 20) -> np.ndarray:
    """Encode a str, or a list of documents, with GPT-2 BPE into one uint16 array.

    A str is cut into ~chunk_chars pieces at places where that does not change the result (see _SAFE_CUT) and
    encoded in parallel batches. A list is encoded document by document with `eot` appended after each one.
    """
    from tqdm import tqdm

    enc = _gpt2_encoding()
    docs = list(_chunks(texts, chunk_chars)) if isinstance(texts, str) else list(texts)
    parts, batch = [], 256 if eot is not None else 16
    with tqdm(total=sum(len(d) for d in docs), unit="char", unit_scale=True, desc=desc) as bar:
        for i in range(0, len(docs), batch):
            group = docs[i:i + batch]
            flat = []  # one array per batch: millions of tiny per-story arrays would be slow and large
            for ids in enc.encode_ordinary_batch(group, num_threads=os.cpu_count() or 1):
                flat += ids
                if eot is not None:
                    flat.append(eot)
            parts.append(np.array(flat, dtype=np.uint16))  # GPT-2 ids < 50257 fit uint16
            bar.update(sum(len(d) for d in group))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint16)


def gpt2_meta(dataset: str) -> dict:
    enc = _gpt2_encoding()
    return {"dataset": dataset, "tokenizer": "gpt2", "vocab_size": enc.n_vocab, "dtype": "uint16",
            "eot_token": enc.eot_token}


def require_nonempty(splits: dict[str, np.ndarray], what: str) -> None:
    for name, arr in splits.items():
        if len(arr) == 0:
            raise DataError(f"{what}: split {name!r} would be empty")


def summary_line(out_dir) -> str:
    """One line of token counts, read back from what was written (so it also proves meta.json loads)."""
    meta = load_meta(out_dir)
    counts = " | ".join(f"{name} {info['tokens']:,}" for name, info in meta["splits"].items())
    return (f"wrote {out_dir}: {counts} tokens ({meta['tokenizer']} tokenizer, vocab {meta['vocab_size']}, "
            f"{meta['dtype']})")


def make_parser(script_file: str, description: str):
    """argparse parser with the --out_dir every prepare script shares (default: the script's own folder). Its errors
    are one `error:` line and exit 2; a --out_dir it cannot write into is refused before any work
    (output_dir_problem)."""
    import argparse

    class Parser(argparse.ArgumentParser):
        def error(self, message):
            print(f"error: {message}", file=sys.stderr)
            sys.exit(2)

        def parse_args(self, *args, **kwargs):
            parsed = super().parse_args(*args, **kwargs)
            code, message = output_dir_problem(parsed.out_dir)
            if code:
                print(f"error: {message}", file=sys.stderr)
                sys.exit(code)
            parsed.out_dir = Path(parsed.out_dir)
            return parsed

    here = Path(script_file).resolve().parent
    p = Parser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out_dir", default=str(here), help=f"where the .bin files and meta.json go (default {here})")
    return p

"""Data pipeline: the prepare scripts on real text (../shared/data), the .bin/meta.json format and its loud failures."""
import hashlib
import io
import json
import os
import random
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHARED_DATA = SHARED / "data"
os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED / "tiktoken_cache"))  # before anything imports tiktoken
sys.path.insert(0, str(REPO))

from data.common import (CharTokenizer, DataError, get_tokenizer, gpt2_encode, load_meta, open_split,  # noqa: E402
                         write_dataset)

needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"{SHARED_DATA} (real text files) is absent")

SHAKESPEARE = SHARED_DATA / "shakespeare" / "input.txt"
WT2_RAW = SHARED_DATA / "wikitext" / "wikitext-2-raw"
TS_TRAIN = SHARED_DATA / "tinystories" / "train_first1000" / "tiny_stories.txt"
TS_VAL = SHARED_DATA / "tinystories" / "validation_prefix" / "tinystories_val.txt"
TS_EOT_FILE = SHARED_DATA / "tinystories" / "cs336_fixture" / "tinystories_sample.txt"
EOT = "<|endoftext|>"


def prepare(name, *args):
    """Run data/<name>/prepare.py as a user would."""
    cmd = [sys.executable, str(REPO / "data" / name / "prepare.py"), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=os.environ.copy())


def prepare_ok(name, *args):
    r = prepare(name, *args)
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout and "tokens" in r.stdout  # the summary line
    return r


def read_split(out_dir, split):
    return np.array(open_split(out_dir, split))


def snapshot(folder):
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(Path(folder).iterdir())}


def one_error_line(r):
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    return lines[0]


# ---------------------------------------------------------------------------------------------------------------
# the four prepare scripts on real files


@pytest.fixture(scope="module")
def shakespeare_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("shakespeare_char")
    prepare_ok("shakespeare_char", "--source", SHAKESPEARE, "--out_dir", out)
    return out


@needs_shared
def test_shakespeare_char(shakespeare_dir):
    text = SHAKESPEARE.read_text(encoding="utf-8")
    meta = load_meta(shakespeare_dir)
    assert (meta["dataset"], meta["tokenizer"], meta["dtype"], meta["vocab_size"]) == \
        ("shakespeare_char", "char", "uint16", 65)
    assert meta["chars"] == sorted(set(text))
    assert meta["splits"]["train"]["tokens"] == 1_003_854 == int(len(text) * 0.9)  # nanoGPT's numbers
    assert meta["splits"]["val"]["tokens"] == 111_540
    assert "test" not in meta["splits"]
    assert meta["sources"][0]["sha256"] == "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
    assert sum(s["bytes"] for s in meta["splits"].values()) == 1_115_394
    tok = get_tokenizer(meta)
    train, val = read_split(shakespeare_dir, "train"), read_split(shakespeare_dir, "val")
    assert open_split(shakespeare_dir, "train").dtype == np.uint16
    assert tok.decode(train) + tok.decode(val) == text
    assert tok.encode("First Citizen:") == list(train[:14])
    assert not list(shakespeare_dir.glob("*.tmp-*"))


@pytest.fixture(scope="module")
def wikitext_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("wikitext")
    # the project's CPU setup: WikiText-2 raw valid as train, test as val
    prepare_ok("wikitext103", "--train", WT2_RAW / "wiki.valid.raw", "--val", WT2_RAW / "wiki.test.raw",
               "--out_dir", out)
    return out


@needs_shared
def test_wikitext(wikitext_dir):
    meta = load_meta(wikitext_dir)
    assert (meta["tokenizer"], meta["dtype"], meta["vocab_size"], meta["eot_token"]) == ("gpt2", "uint16", 50257, 50256)
    assert set(meta["splits"]) == {"train", "val"}
    val_stats = meta["splits"]["val"]
    # WikiText-2/103 test: 245,569 tokens in the paper = whitespace words + one <eos> per line
    assert (val_stats["bytes"], val_stats["words"], val_stats["lines"]) == (1_290_590, 241_211, 4_358)
    assert val_stats["words"] + val_stats["lines"] == 245_569
    tok = get_tokenizer(meta)
    for split, name in (("train", "wiki.valid.raw"), ("val", "wiki.test.raw")):
        text = (WT2_RAW / name).read_text(encoding="utf-8")
        ids = read_split(wikitext_dir, split)
        assert meta["splits"][split]["tokens"] == len(ids)
        assert tok.decode(ids) == text
        # chunked, parallel encoding gives exactly the tokens of encoding the file in one piece
        assert ids.tolist() == tok.enc.encode_ordinary(text)
    assert EOT not in tok.decode(read_split(wikitext_dir, "train"))  # no separators added


@needs_shared
def test_gpt2_chunked_encoding_is_exact():
    tok = get_tokenizer({"tokenizer": "gpt2", "vocab_size": 50257, "eot_token": 50256})
    tricky = "a  \n\n  b\n c\nd \n e\n\n\n f\n\tg\n" * 50  # whitespace runs that the BPE regex joins across lines
    for text in (tricky, (WT2_RAW / "wiki.test.raw").read_text()[:200_000], TS_VAL.read_text()[:200_000]):
        assert gpt2_encode(text, desc="t", chunk_chars=300).tolist() == tok.enc.encode_ordinary(text)


def stories_of(path):
    """The story split the prepare script documents: blank lines (or <|endoftext|> when present), stripped."""
    text = path.read_text(encoding="utf-8")
    pieces = text.split(EOT) if EOT in text else re.split(r"\n[ \t\r]*\n", text)
    return [s.strip() for s in pieces if s.strip()]


@needs_shared
def test_tinystories_files(tmp_path):
    prepare_ok("tinystories", "--train", TS_TRAIN, "--val", TS_VAL, "--out_dir", tmp_path)
    meta = load_meta(tmp_path)
    assert (meta["dataset"], meta["tokenizer"], meta["dtype"], meta["eot_token"]) == \
        ("tinystories", "gpt2", "uint16", 50256)
    tok = get_tokenizer(meta)
    for split, path in (("train", TS_TRAIN), ("val", TS_VAL)):
        stories = stories_of(path)
        ids = read_split(tmp_path, split)
        assert meta["splits"][split]["stories"] == len(stories) > 100
        assert int((ids == 50256).sum()) == len(stories) and ids[-1] == 50256
        assert tok.decode(ids) == "".join(s + EOT for s in stories)
        assert meta["splits"][split]["bytes"] == sum(len(s.encode()) for s in stories)
    assert tok.decode(read_split(tmp_path, "train")).startswith("One day, a little girl named Lily found a needle")


@needs_shared
def test_tinystories_eot_file_holds_out_last_tenth(tmp_path):
    stories = TS_EOT_FILE.read_text(encoding="utf-8").split(EOT)
    stories = [s.strip() for s in stories if s.strip()]
    assert len(stories) == 5
    prepare_ok("tinystories", "--source", TS_EOT_FILE, "--out_dir", tmp_path)
    meta = load_meta(tmp_path)
    tok = get_tokenizer(meta)
    assert (meta["splits"]["train"]["stories"], meta["splits"]["val"]["stories"]) == (4, 1)
    assert tok.decode(read_split(tmp_path, "val")) == stories[-1] + EOT
    assert tok.decode(read_split(tmp_path, "train")) == "".join(s + EOT for s in stories[:-1])


def make_enwik8_like(n=300_011, seed=0):
    """A few hundred KB of XML-ish UTF-8 with multi-byte characters (so splits cut through characters)."""
    rng = random.Random(seed)
    words = ["<page>", "</page>", "the", "of", "[[Zürich]]", "naïve", "東京", "Ελλάδα", "😀", "&amp;", "{{cite}}",
             "\n"]
    text = ""
    while len(text.encode()) < n:
        text += " ".join(rng.choice(words) for _ in range(2000))
    data = text.encode()[:n]
    data = data[:len(data.decode("utf-8", errors="ignore").encode())]  # drop a trailing half character
    return data + b"x" * (n - len(data))


@pytest.mark.parametrize("zipped", [False, True])
def test_enwik8_split_and_roundtrip(tmp_path, zipped):
    data = make_enwik8_like()
    n = len(data)
    # a size where rounding and flooring the 90%/5% boundaries disagree, and 4-byte UTF-8 sequences present
    assert round(n * 0.9) != n * 90 // 100 and round(n * 0.05) != n * 5 // 100 and max(data) >= 0xF0
    src = tmp_path / "enwik8"
    src.write_bytes(data)
    if zipped:
        src = tmp_path / "enwik8.zip"
        with zipfile.ZipFile(src, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("enwik8", data)
    out = tmp_path / "out"
    prepare_ok("enwik8", "--source", src, "--out_dir", out)
    meta = load_meta(out)
    assert (meta["tokenizer"], meta["vocab_size"], meta["dtype"]) == ("byte", 256, "uint8")
    sizes = {k: v["tokens"] for k, v in meta["splits"].items()}
    assert sizes == {"train": n * 90 // 100, "val": n * 5 // 100, "test": n - n * 90 // 100 - n * 5 // 100}
    assert all(meta["splits"][k]["bytes"] == sizes[k] for k in sizes)
    parts = [read_split(out, k) for k in ("train", "val", "test")]
    assert all(p.dtype == np.uint8 for p in parts)
    assert b"".join(p.tobytes() for p in parts) == data
    tok = get_tokenizer(meta)
    assert tok.decode(np.concatenate(parts)) == data.decode("utf-8")
    assert tok.encode("Zürich") == list("Zürich".encode())
    record = meta["sources"][0]
    assert record["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    if zipped:
        assert record["member_sha256"] == hashlib.sha256(data).hexdigest()


def test_enwik8_real_size_split(tmp_path):
    # a file of enwik8's size (10^8 bytes, not its content) gets the standard 90M / 5M / 5M split
    n = 100_000_000
    src = tmp_path / "enwik8"
    marks = {89_999_999: 1, 90_000_000: 2, 94_999_999: 3, 95_000_000: 4}  # the bytes either side of each boundary
    with open(src, "wb") as f:
        f.truncate(n)  # sparse zeros
        for offset, byte in marks.items():
            f.seek(offset)
            f.write(bytes([byte]))
    out = tmp_path / "out"
    r = prepare_ok("enwik8", "--source", src, "--out_dir", out)
    assert "not the reference enwik8" in r.stderr  # right size, other content: warned, still prepared
    meta = load_meta(out)
    assert {k: v["tokens"] for k, v in meta["splits"].items()} == {"train": 90_000_000, "val": 5_000_000,
                                                                   "test": 5_000_000}
    train, val, test = (open_split(out, k) for k in ("train", "val", "test"))
    assert (train[-1], val[0], val[-1], test[0]) == (1, 2, 3, 4)
    assert int(train[:-1].max()) == int(val[1:-1].max()) == int(test[1:].max()) == 0


def test_enwik8_bad_zips(tmp_path):
    wrong = tmp_path / "wrong.zip"
    with zipfile.ZipFile(wrong, "w") as z:
        z.writestr("enwik9", b"abc")
    assert "enwik8" in one_error_line(prepare("enwik8", "--source", wrong, "--out_dir", tmp_path / "a"))
    fake = tmp_path / "fake.zip"
    fake.write_bytes(b"not a zip at all")
    assert "not a zip" in one_error_line(prepare("enwik8", "--source", fake, "--out_dir", tmp_path / "b"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# ---------------------------------------------------------------------------------------------------------------
# bad input: one line, exit 1, previous output untouched


@needs_shared
@pytest.mark.parametrize("name,args", [
    ("shakespeare_char", ["--source"]),
    ("enwik8", ["--source"]),
    ("tinystories", ["--source"]),
    ("wikitext103", ["--train", WT2_RAW / "wiki.valid.raw", "--val"]),
])
def test_missing_source_leaves_previous_output(tmp_path, shakespeare_dir, name, args):
    out = tmp_path / "out"
    shutil.copytree(shakespeare_dir, out)
    before = snapshot(out)
    line = one_error_line(prepare(name, *args, tmp_path / "no_such_file", "--out_dir", out))
    assert "no_such_file" in line and "not found" in line
    assert snapshot(out) == before


@needs_shared
def test_empty_or_binary_source(tmp_path, shakespeare_dir):
    out = tmp_path / "out"
    shutil.copytree(shakespeare_dir, out)
    before = snapshot(out)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert "empty" in one_error_line(prepare("shakespeare_char", "--source", empty, "--out_dir", out))
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"ok\xff\xfe")
    assert "UTF-8" in one_error_line(prepare("wikitext103", "--train", binary, "--val", binary, "--out_dir", out))
    assert snapshot(out) == before


def test_get_data_sh_usage():
    r = subprocess.run(["bash", str(REPO / "get_data.sh"), "imagenet"], capture_output=True, text=True)
    assert r.returncode == 2
    for name in ("enwik8", "wikitext103", "tinystories", "shakespeare_char"):
        assert name in r.stderr


# ---------------------------------------------------------------------------------------------------------------
# the format: readers validate, the writer never leaves a half-written dataset


@pytest.fixture
def byte_dir(tmp_path):
    out = tmp_path / "ds"
    ids = np.arange(1000) % 256
    write_dataset(out, {"train": ids[:900], "val": ids[900:]},
                  {"dataset": "enwik8", "tokenizer": "byte", "vocab_size": 256, "dtype": "uint8"})
    return out


def edit_meta(folder, **changes):
    meta = json.loads((folder / "meta.json").read_text())
    meta.update(changes)
    (folder / "meta.json").write_text(json.dumps(meta))


def test_write_dataset_fills_counts(byte_dir):
    meta = load_meta(byte_dir)
    assert meta["format_version"] == 1
    ids = {name: np.fromfile(byte_dir / f"{name}.bin", dtype=np.uint8) for name in ("train", "val")}
    assert meta["splits"] == {name: {"tokens": len(a), "max_id": int(a.max())} for name, a in ids.items()}
    assert meta["splits"]["train"]["tokens"] == 900 and meta["splits"]["val"]["tokens"] == 100
    assert (byte_dir / "train.bin").stat().st_size == 900
    assert sorted(p.name for p in byte_dir.iterdir()) == ["meta.json", "train.bin", "val.bin"]


def test_open_split_truncated_bin(byte_dir):
    with open(byte_dir / "val.bin", "r+b") as f:
        f.truncate(60)
    with pytest.raises(DataError, match=r"val\.bin has 60 bytes but meta\.json says 100 tokens of uint8 \(100 bytes\)"):
        open_split(byte_dir, "val")
    assert len(open_split(byte_dir, "train")) == 900


def test_open_split_wrong_dtype(byte_dir):
    edit_meta(byte_dir, dtype="uint16")  # a valid dtype, but not the one the bins were written with
    with pytest.raises(DataError, match=r"train\.bin has 900 bytes but meta\.json says 900 tokens of uint16"):
        open_split(byte_dir, "train")
    edit_meta(byte_dir, dtype="int32")
    with pytest.raises(DataError, match="dtype must be one of"):
        open_split(byte_dir, "train")


@pytest.mark.parametrize("change,message", [
    ({"vocab_size": 300}, "does not fit dtype uint8"),
    ({"format_version": 2}, "format_version"),
    ({"tokenizer": "sentencepiece"}, "tokenizer must be one of"),
    ({"splits": {"train": {"tokens": -1}}}, "splits.train.tokens"),
])
def test_load_meta_rejects(byte_dir, change, message):
    edit_meta(byte_dir, **change)
    with pytest.raises(DataError, match=message):
        load_meta(byte_dir)


def test_load_meta_missing_or_garbled(byte_dir):
    text = (byte_dir / "meta.json").read_text()
    (byte_dir / "meta.json").write_text(text[:20])
    with pytest.raises(DataError, match="not valid JSON"):
        load_meta(byte_dir)
    (byte_dir / "meta.json").unlink()
    with pytest.raises(DataError, match="meta.json not found"):
        open_split(byte_dir, "train")
    with pytest.raises(DataError, match="missing key 'dtype'"):
        (byte_dir / "meta.json").write_text(json.dumps({k: v for k, v in json.loads(text).items() if k != "dtype"}))
        load_meta(byte_dir)


def test_write_dataset_refuses_bad_ids_without_touching_files(byte_dir):
    before = snapshot(byte_dir)
    with pytest.raises(DataError, match="outside the vocabulary"):
        write_dataset(byte_dir, {"train": np.array([1, 2, 256]), "val": np.array([1])},
                      {"dataset": "enwik8", "tokenizer": "byte", "vocab_size": 256, "dtype": "uint8"})
    assert snapshot(byte_dir) == before


def test_char_tokenizer_names_unknown_character():
    tok = CharTokenizer(list("abc "))
    assert tok.decode(tok.encode("a cab")) == "a cab"
    with pytest.raises(DataError, match="'é'"):
        tok.encode("abé")


@needs_shared
def test_gpt2_tokenizer_allows_endoftext():
    tok = get_tokenizer({"tokenizer": "gpt2", "vocab_size": 50257, "eot_token": 50256})
    assert tok.encode("Hi<|endoftext|>") == tok.encode("Hi") + [50256] and tok.eot_token == 50256
    assert tok.name == "gpt2" and tok.decode(tok.encode("héllo wörld")) == "héllo wörld"
    with pytest.raises(DataError, match="vocab_size"):
        get_tokenizer({"tokenizer": "gpt2", "vocab_size": 50304, "eot_token": 50256})


def test_zip_member_name_is_what_is_read(tmp_path):
    # a zip may hold more than one member: only "enwik8" is used
    src = tmp_path / "enwik8.zip"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("README", b"ignore me")
        z.writestr("enwik8", b"x" * 100)
    src.write_bytes(buf.getvalue())
    prepare_ok("enwik8", "--source", src, "--out_dir", tmp_path / "o")
    assert b"".join(read_split(tmp_path / "o", s).tobytes() for s in ("train", "val", "test")) == b"x" * 100


def test_crash_mid_write_leaves_no_stale_meta(byte_dir, monkeypatch):
    # new bins of another size, and a crash after the first rename: the old meta.json must not survive next to them
    import data.common as common

    real_replace, calls = os.replace, []

    def flaky_replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("disk full (simulated)")
        real_replace(src, dst)

    monkeypatch.setattr(common.os, "replace", flaky_replace)
    with pytest.raises(OSError, match="simulated"):
        write_dataset(byte_dir, {"train": np.zeros(10), "val": np.zeros(5)},
                      {"dataset": "enwik8", "tokenizer": "byte", "vocab_size": 256, "dtype": "uint8"})
    assert (byte_dir / "train.bin").stat().st_size == 10  # the first rename happened
    with pytest.raises(DataError, match="meta.json not found"):
        open_split(byte_dir, "train")
    assert not list(byte_dir.glob("*.tmp-*"))

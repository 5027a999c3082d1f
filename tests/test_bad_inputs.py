"""Every case of the bad-input matrix (tests/bad_inputs.py) as a real process: its exit code, exactly one `error:`
line with its message, and not one byte changed on disk. docs/reliability.md carries the matrix as generated."""
import hashlib
import json
import shutil

import numpy as np
import pytest

from bad_inputs import CASES, TRAIN, markdown
from conftest import REPO, run
from data.common import text_stats, write_dataset


def snapshot(root):
    """{relative path: sha256 of a file, or None for a directory} of everything under root."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
            for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def workspace(shakespeare_dir, tmp_path_factory):
    """The files the placeholders name, built once; a finished run trained on {data}."""
    root = tmp_path_factory.mktemp("bad_inputs")
    places = {"data": root / "data", "run": root / "run", "upper": root / "upper", "bytes": root / "bytes",
              "corrupt": root / "corrupt", "file": root / "a_file", "many_chars": root / "many.txt",
              "exits": root / "exits.py", "out": root / "never_written", "missing_val": root / "missing_val",
              "truncated": root / "truncated", "bad_meta": root / "bad_meta", "text": root / "upper.txt",
              "dangling": root / "dangling", "looping": root / "looping", "broken": root / "broken"}
    for name in ("data", "missing_val", "truncated", "bad_meta"):
        shutil.copytree(shakespeare_dir, places[name])
    (places["missing_val"] / "val.bin").unlink()
    with open(places["truncated"] / "train.bin", "r+b") as f:
        f.truncate(1000)
    meta = json.loads((places["bad_meta"] / "meta.json").read_text())
    (places["bad_meta"] / "meta.json").write_text(json.dumps({**meta, "dtype": "uint32"}))
    shutil.copytree(shakespeare_dir, places["corrupt"])
    ids = np.fromfile(places["corrupt"] / "train.bin", dtype=np.uint16)
    ids[100] = 65  # one past the 65-character vocabulary
    ids.tofile(places["corrupt"] / "train.bin")
    text = (REPO.parent / "shared" / "data" / "shakespeare" / "input.txt").read_text()
    (root / "upper.txt").write_text(text.upper())
    run(["data/shakespeare_char/prepare.py", f"--source={root / 'upper.txt'}", f"--out_dir={places['upper']}"])
    raw = np.frombuffer(text.encode(), dtype=np.uint8)
    write_dataset(places["bytes"], {"train": raw[:100_000], "val": raw[100_000:120_000]},
                  {"dataset": "bytes", "tokenizer": "byte", "vocab_size": 256, "dtype": "uint8",
                   "splits": {"train": text_stats(text[:100_000]), "val": text_stats(text[100_000:120_000])}})
    places["file"].write_text("not a directory\n")
    places["many_chars"].write_text("".join(chr(c) for c in range(0x100, 0x100 + 70_000) if not 0xD800 <= c < 0xE000))
    places["exits"].write_text("import sys\nsys.exit(0)\n")
    places["dangling"].symlink_to(root / "nowhere")
    places["looping"].symlink_to(places["looping"])
    places["broken"].mkdir()
    (places["broken"] / "ckpt.pt").write_text("not a checkpoint\n")
    run([a.format(**places) for a in TRAIN])
    assert (places["run"] / "ckpt.pt").is_file()
    return root, places


@pytest.mark.parametrize("case", CASES, ids=[c.what for c in CASES])
def test_bad_input(workspace, case):
    root, places = workspace
    before = snapshot(root)
    proc = run([a.format(**places) for a in case.argv], check=False, env={"HF_HUB_OFFLINE": "1"})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == case.code, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    assert case.message in lines[0]
    assert snapshot(root) == before


def test_readme_carries_the_matrix():
    assert markdown() in (REPO / "docs/reliability.md").read_text(), "regenerate with: python tests/bad_inputs.py"

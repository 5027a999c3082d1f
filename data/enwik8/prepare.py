"""enwik8 (Hutter Prize, first 10^8 bytes of an English Wikipedia XML dump) as bytes: vocab 256, uint8.

    python data/enwik8/prepare.py                          # downloads enwik8.zip into --out_dir
    python data/enwik8/prepare.py --source enwik8.zip      # or the unzipped enwik8 file

Standard split (Transformer-XL, adaptive span, ...): first 90M bytes train, next 5M val, last 5M test. Files of another
size are split in the same 90/5/5 proportions, so small test files behave like the real one.
"""
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from anywhere
from data.common import (DataError, download, make_parser, read_source, require_nonempty,  # noqa: E402
                         run_cli, source_record, summary_line, write_dataset)

URL = "http://mattmahoney.net/dc/enwik8.zip"
ENWIK8_SIZE = 100_000_000
ENWIK8_SHA256 = "2b49720ec4d78c3c9fabaee6e4179a5e997302b3a70029f30f2d582218c024a8"


def load(path: Path) -> tuple[bytes, dict]:
    """(enwik8 bytes, source record) from a zip holding member 'enwik8' or from the raw file."""
    raw = read_source(path)
    record = source_record(path, raw)
    if not zipfile.is_zipfile(io.BytesIO(raw)):
        if path.suffix.lower() == ".zip":
            raise DataError(f"{path} is named .zip but is not a zip archive")
        return raw, record
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as z:
            names = z.namelist()
            if "enwik8" not in names:
                raise DataError(f"{path} is a zip without member 'enwik8' (it has {names[:5]})")
            data = z.read("enwik8")
    except zipfile.BadZipFile as e:
        raise DataError(f"{path} is a damaged zip archive ({e})") from None
    if not data:
        raise DataError(f"{path}: member 'enwik8' is empty")
    # also hash the member, which is what the published enwik8 checksum is of
    record.update(member="enwik8", member_sha256=source_record(path, data)["sha256"], member_bytes=len(data))
    return data, record


def main():
    p = make_parser(__file__, __doc__)
    p.add_argument("--source", type=Path, help="local enwik8.zip or raw enwik8 file (default: download)")
    args = p.parse_args()

    source = args.source or download(URL, args.out_dir / "enwik8.zip")
    data, record = load(source)
    if len(data) == ENWIK8_SIZE and record.get("member_sha256", record["sha256"]) != ENWIK8_SHA256:
        print(f"warning: {source} holds 10^8 bytes but not the reference enwik8 (sha256 {ENWIK8_SHA256[:12]}...)",
              file=sys.stderr)

    n = len(data)
    n_train, n_val = n * 90 // 100, n * 5 // 100  # exactly 90M / 5M / 5M for the real file
    ids = np.frombuffer(data, dtype=np.uint8)
    splits = {"train": ids[:n_train], "val": ids[n_train:n_train + n_val], "test": ids[n_train + n_val:]}
    require_nonempty(splits, f"{source}: {n} bytes are too few for a 90/5/5 split")

    meta = {
        "dataset": "enwik8", "tokenizer": "byte", "vocab_size": 256, "dtype": "uint8",
        "splits": {name: {"tokens": len(arr), "bytes": len(arr), "words": len(arr.tobytes().split())}
                   for name, arr in splits.items()},
        "sources": [record],
    }
    write_dataset(args.out_dir, splits, meta)
    print(summary_line(args.out_dir))


if __name__ == "__main__":
    run_cli(main)

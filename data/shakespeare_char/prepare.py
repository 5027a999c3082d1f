"""Tiny Shakespeare (char-rnn's input.txt, ~1.1 MB) at character level, as in nanoGPT's shakespeare_char.

    python data/shakespeare_char/prepare.py                        # downloads input.txt into --out_dir
    python data/shakespeare_char/prepare.py --source input.txt

Vocabulary: the sorted set of characters in the file (65 for the real one), stored in meta.json as "chars".
Split: first 90% of the characters train, last 10% val. uint16, so larger char vocabularies also fit.
"""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from anywhere
from data.common import (DTYPES, CharTokenizer, DataError, download, make_parser, read_text,  # noqa: E402
                         require_nonempty, run_cli, summary_line, text_stats, write_dataset)

URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"


def main():
    p = make_parser(__file__, __doc__)
    p.add_argument("--source", type=Path, help="local text file (default: download input.txt)")
    args = p.parse_args()

    source = args.source or download(URL, args.out_dir / "input.txt")
    text, record = read_text(source)
    chars = sorted(set(text))
    if len(chars) > DTYPES["uint16"]:
        raise DataError(f"{source} has {len(chars):,} distinct characters; a char vocabulary holds at most "
                        f"{DTYPES['uint16']:,} (uint16 ids)")
    n_train = int(len(text) * 0.9)
    parts = {"train": text[:n_train], "val": text[n_train:]}
    tok = CharTokenizer(chars)
    splits = {name: np.array(tok.encode(part), dtype=np.uint16) for name, part in parts.items()}
    require_nonempty(splits, f"{source} ({len(text)} characters)")
    meta = {
        "dataset": "shakespeare_char", "tokenizer": "char", "vocab_size": len(chars), "dtype": "uint16",
        "splits": {name: text_stats(part) for name, part in parts.items()},
        "chars": chars,
        "sources": [record],
    }
    write_dataset(args.out_dir, splits, meta)
    print(summary_line(args.out_dir))


if __name__ == "__main__":
    run_cli(main)

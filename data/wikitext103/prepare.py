"""WikiText-103 (raw, v1) with GPT-2 BPE (tiktoken), uint16.

    python data/wikitext103/prepare.py                            # Hugging Face Salesforce/wikitext
    python data/wikitext103/prepare.py --source DIR               # DIR/wiki.{train,valid,test}.raw
    python data/wikitext103/prepare.py --train FILE --val FILE [--test FILE]

Each split's lines are concatenated exactly as in the raw files (no separators added) and encoded as one text, so
decoding a split gives back its file byte for byte. meta.json records the tokens, UTF-8 bytes and whitespace-split
words of every split (and lines), for bits per byte and per-word perplexity: the published WikiText numbers use
exp(total loss / (words + lines)), since the tokenized files count one <eos> per line.
The explicit form allows other corpora in the same format, e.g. WikiText-2 raw valid as train and test as val.
With --mark_articles every article (from its " = Title = " heading to the next one) is followed by <|endoftext|>,
which meta.json names as doc_separator, so train.py's doc_mask can keep attention inside one article; decoding then
gives the articles joined by that separator.
"""
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from anywhere
from data.common import (DataError, gpt2_encode, gpt2_meta, make_parser, read_text, require_nonempty,  # noqa: E402
                         run_cli, source_record, summary_line, text_stats, write_dataset)

HF_ID, HF_CONFIG = "Salesforce/wikitext", "wikitext-103-raw-v1"
RAW_FILES = {"train": "wiki.train.raw", "val": "wiki.valid.raw", "test": "wiki.test.raw"}
ARTICLE_HEADING = re.compile(r"^ = [^=\n].* = $", re.MULTILINE)  # " = Title = ", not " = = Section = = "


def articles(text):
    """The text cut before every top-level heading line: the pieces join back to the text."""
    starts = [m.start() for m in ARTICLE_HEADING.finditer(text)]
    bounds = [0] + [s for s in starts if s > 0] + [len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]


def load_hf() -> tuple[dict, list]:
    """Split texts from the Hugging Face copy: its rows are the raw lines (newline kept), joined as they come.
    Not testable offline: whitespace-only lines may differ from the raw files."""
    try:
        from datasets import load_dataset

        ds = load_dataset(HF_ID, HF_CONFIG)
    except Exception as e:
        raise DataError(f"could not load {HF_ID} {HF_CONFIG} ({type(e).__name__}: {e}); "
                        "pass local files with --source DIR or --train/--val") from None
    texts, sources = {}, []
    for ours, theirs in {"train": "train", "val": "validation", "test": "test"}.items():
        texts[ours] = "".join(ds[theirs]["text"])
        sources.append(source_record(f"hf://{HF_ID}/{HF_CONFIG}/{theirs}", texts[ours].encode("utf-8")))
    return texts, sources


def main():
    p = make_parser(__file__, __doc__)
    p.add_argument("--source", type=Path, help="folder holding wiki.train.raw, wiki.valid.raw, wiki.test.raw")
    p.add_argument("--train", type=Path, help="train text file (with --val; instead of --source)")
    p.add_argument("--val", type=Path, help="val text file")
    p.add_argument("--test", type=Path, help="optional test text file")
    p.add_argument("--mark_articles", action="store_true", help="end every article with <|endoftext|> (doc_mask)")
    args = p.parse_args()

    if args.source and (args.train or args.val or args.test):
        p.error("give either --source DIR or --train/--val[/--test], not both")
    if bool(args.train) != bool(args.val) or (args.test and not args.train):
        p.error("--train and --val go together (--test is optional)")

    if args.source:
        if not args.source.is_dir():
            raise DataError(f"--source {args.source} is not a folder (expected one holding {list(RAW_FILES.values())})")
        files = {split: args.source / name for split, name in RAW_FILES.items()}
    elif args.train:
        files = {split: path for split, path in (("train", args.train), ("val", args.val), ("test", args.test)) if path}
    else:
        files = None

    if files:
        loaded = {split: read_text(path) for split, path in files.items()}
        texts = {split: text for split, (text, _) in loaded.items()}
        sources = [record for _, record in loaded.values()]
    else:
        texts, sources = load_hf()

    meta = gpt2_meta("wikitext103")
    if args.mark_articles:
        meta["doc_separator"] = meta["eot_token"]
        splits = {split: gpt2_encode(articles(text), desc=f"encode {split}", eot=meta["eot_token"])
                  for split, text in texts.items()}
    else:
        splits = {split: gpt2_encode(text, desc=f"encode {split}") for split, text in texts.items()}
    require_nonempty(splits, "wikitext103")
    # "lines" + "words" is the token count of the tokenized WikiText files (one <eos> per line): the denominator
    # of the per-word perplexities in the literature (245,569 for the test split)
    stats = {split: {**text_stats(text), "lines": text.count("\n")} for split, text in texts.items()}
    meta.update(splits=stats, sources=sources)
    write_dataset(args.out_dir, splits, meta)
    print(summary_line(args.out_dir))


if __name__ == "__main__":
    run_cli(main)

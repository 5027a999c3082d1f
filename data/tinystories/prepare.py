"""TinyStories (Eldan & Li 2023) with GPT-2 BPE (tiktoken), uint16, <|endoftext|> (50256) after every story.

    python data/tinystories/prepare.py                              # Hugging Face roneneldan/TinyStories
    python data/tinystories/prepare.py --train FILE [--val FILE]    # text files
    python data/tinystories/prepare.py --source FILE_OR_DIR         # FILE: as --train; DIR: the official
                                                                    # TinyStories-train.txt + TinyStories-valid.txt

Stories in a text file are separated by <|endoftext|> when the file contains it (the official .txt layout);
otherwise by blank lines. That second rule is an approximation: a blank line also separates paragraphs inside a
story, so such a file yields paragraphs as "stories" and gets an <|endoftext|> between paragraphs that the published
data does not have (this is the case for the TinyStories subsets in ../shared/data). Each story is stripped of
surrounding whitespace. Without --val the last 10% of the stories are held out as val.
meta.json "bytes"/"words" count the stories' own text, without separators.
"""
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from anywhere
from data.common import (EOT_TEXT, DataError, gpt2_encode, gpt2_meta, make_parser, read_text,  # noqa: E402
                         run_cli, source_record, summary_line, write_dataset)

HF_ID = "roneneldan/TinyStories"
OFFICIAL_FILES = {"train": "TinyStories-train.txt", "val": "TinyStories-valid.txt"}
BLANK_LINE = r"\n[ \t\r]*\n"


def split_stories(text: str) -> list[str]:
    pieces = text.split(EOT_TEXT) if EOT_TEXT in text else re.split(BLANK_LINE, text)
    return [s.strip() for s in pieces if s.strip()]


def load_file(path: Path) -> tuple[list[str], dict]:
    text, record = read_text(path)
    return split_stories(text), record


def load_hf() -> tuple[dict, list]:
    try:
        from datasets import load_dataset

        ds = load_dataset(HF_ID)
    except Exception as e:
        raise DataError(f"could not load {HF_ID} ({type(e).__name__}: {e}); "
                        "pass local files with --train/--val") from None
    stories, sources = {}, []
    for ours, theirs in {"train": "train", "val": "validation"}.items():
        stories[ours] = [s.strip() for s in ds[theirs]["text"] if s.strip()]
        sources.append(source_record(f"hf://{HF_ID}/{theirs}", EOT_TEXT.join(stories[ours]).encode("utf-8")))
    return stories, sources


def main():
    p = make_parser(__file__, __doc__)
    p.add_argument("--source", type=Path, help="a text file (used as --train) or a folder with the official .txt files")
    p.add_argument("--train", type=Path, help="train text file")
    p.add_argument("--val", type=Path, help="val text file (default: last 10%% of the train stories)")
    args = p.parse_args()

    if args.source and (args.train or args.val):
        p.error("give either --source or --train [--val], not both")
    if args.val and not args.train:
        p.error("--val needs --train")
    if args.source and args.source.is_dir():
        args.train, args.val = (args.source / name for name in OFFICIAL_FILES.values())
    elif args.source:
        args.train = args.source

    if args.train:
        stories, record = load_file(args.train)
        sources = [record]
        if args.val:
            val, record = load_file(args.val)
            sources.append(record)
        else:
            if len(stories) < 2:
                raise DataError(f"{args.train} holds {len(stories)} story; need at least 2 to hold out a val split")
            n_val = max(1, len(stories) // 10)
            stories, val = stories[:-n_val], stories[-n_val:]
        stories = {"train": stories, "val": val}
    else:
        stories, sources = load_hf()

    for name, docs in stories.items():
        if not docs:
            raise DataError(f"no stories for the {name} split (only separators in the text?)")
    meta = gpt2_meta("tinystories")
    meta["doc_separator"] = meta["eot_token"]  # every story ends with it
    splits = {name: gpt2_encode(docs, desc=f"encode {name}", eot=meta["eot_token"]) for name, docs in stories.items()}
    meta["splits"] = {name: {"stories": len(docs), "bytes": sum(len(s.encode("utf-8")) for s in docs),
                             "words": sum(len(s.split()) for s in docs)} for name, docs in stories.items()}
    meta["sources"] = sources
    write_dataset(args.out_dir, splits, meta)
    print(summary_line(args.out_dir))


if __name__ == "__main__":
    run_cli(main)

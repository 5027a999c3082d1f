"""
Plot loss curves from one or more runs' metrics.jsonl (train loss thin, val loss thick, one colour per run):

    python tools/plot.py out-shakespeare-char-cpu                      # -> out-shakespeare-char-cpu/loss.png
    python tools/plot.py out-shakespeare-char-cpu out-other --out=/tmp/compare.png

Without --out the PNG goes beside the first run: <its out_dir>/loss.png, whatever the working directory.
"""
import argparse
import json
import sys
from pathlib import Path


def read_metrics(run):
    path = Path(run) / "metrics.jsonl" if Path(run).is_dir() else Path(run)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (pass a run's out_dir or its metrics.jsonl)")
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    train = [(r["iter"], r["loss"]) for r in records if r.get("kind") == "train"]
    val = [(r["iter"], r["val/loss"]) for r in records if r.get("kind") == "eval"]
    return path, train, val


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("runs", nargs="+", help="out_dir of a run (or a metrics.jsonl path)")
    parser.add_argument("--out", default=None, help="output PNG (default: <first run's out_dir>/loss.png)")
    parser.add_argument("--title", default="loss")
    args = parser.parse_args(argv)
    try:
        runs = [read_metrics(r) for r in args.runs]
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    out = Path(args.out) if args.out else runs[0][0].parent / "loss.png"
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (path, train, val), color in zip(runs, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 10):
        label = path.parent.name
        if train:
            ax.plot(*zip(*train), color=color, alpha=0.35, linewidth=0.8, label=f"{label} train")
        if val:
            ax.plot(*zip(*val), color=color, linewidth=2, marker="o", markersize=3, label=f"{label} val")
    ax.set_xlabel("iteration")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(args.title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1:])

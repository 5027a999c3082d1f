"""
Score a checkpoint on a whole split, every token exactly once, each with as much left context as the model allows:

    python tools/eval.py --out_dir=out-shakespeare-char-cpu --split=val
    python tools/eval.py --out_dir=out-wt2 --ckpt=best.pt --split=test --stride=256 --attention=True

Strided sliding window: the first window of block_size tokens scores all its tokens; each later window moves by
`stride` and scores only its last `stride` tokens, which therefore see at least block_size - stride tokens of context
(stride = block_size gives disjoint blocks; smaller strides cost more and score better). Reports the loss in nats per
token, bits per byte (from meta.json's byte counts), bits per character for byte and char data, token perplexity,
per-word perplexity for WikiText (exp(total loss / (words + lines)), the count the published numbers use), and token
accuracy. --attention=True adds the attention analysis (analysis.py) of the same checkpoint.

Files land beside the run, whatever the working directory: <out_dir>/eval_<split>.json, and with --attention=True
<out_dir>/attention/ (analysis.json, analysis.md, entropy.png, heatmaps/). stdout carries the result line and the
paths written; a progress bar goes to stderr when stderr is a terminal.
"""
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for python tools/<name>.py
from tools import analysis
from infra import checkpoint, configurator, loader, rundir, runtime
import variants
from data.common import DataError, open_split


@dataclass
class EvalConfig:
    out_dir: str = "out"
    ckpt: str = "ckpt.pt"
    data_dir: str = ""  # default: the one the checkpoint was trained on
    split: str = "val"
    stride: int = 0  # 0 = block_size // 2
    batch_size: int = 8  # windows per forward pass
    max_tokens: int = 0  # score only the first N tokens of the split (0 = all)
    device: str = "auto"
    dtype: str = "auto"
    attention: bool = False  # also run the attention analysis (entropy, sparsity, heatmaps)


def window_plan(n_tokens, block_size, stride):
    """[(start, first scored offset)]: window [start, start + block_size) scores targets from that offset on."""
    T = min(block_size, n_tokens - 1)
    plan, start = [(0, 0)], 0
    while start + T < n_tokens - 1:
        nxt = min(start + stride, n_tokens - 1 - T)
        plan.append((nxt, start + T - nxt))  # score only targets the previous window did not reach
        start = nxt
    return plan, T


@torch.no_grad()
def score(model, data, block_size, stride, batch_size, device, autocast):
    """Total CE (nats), correct predictions and scored-token count over the whole token array. Progress (tokens
    scored) goes to stderr, only when stderr is a terminal."""
    plan, T = window_plan(len(data), block_size, stride)
    total, correct, count = 0.0, 0, 0
    bar = tqdm(total=len(data) - 1, unit="tok", unit_scale=True, desc="eval", disable=None, leave=False)
    for i in range(0, len(plan), batch_size):
        chunk = plan[i:i + batch_size]
        x = torch.from_numpy(np.stack([data[s:s + T] for s, _ in chunk]).astype(np.int64)).to(device)
        y = torch.from_numpy(np.stack([data[s + 1:s + 1 + T] for s, _ in chunk]).astype(np.int64)).to(device)
        with autocast:
            logits = model(x)
        losses = F.cross_entropy(logits.float().transpose(1, 2), y, reduction="none")  # (B, T)
        hits = logits.argmax(-1) == y
        for row, (_, first) in enumerate(chunk):
            total += losses[row, first:].double().sum().item()
            correct += int(hits[row, first:].sum())
            count += T - first
            bar.update(T - first)
    bar.close()
    return total, correct, count


def report(meta, split, total, correct, count, full_split):
    loss = total / count
    out = {"tokens_scored": count, "loss": loss, "token_ppl": math.exp(min(loss, 50.0)), "token_acc": correct / count}
    info = meta["splits"][split]
    if full_split and info.get("bytes"):
        out["bits_per_byte"] = total / math.log(2) / info["bytes"]
    if meta["tokenizer"] in ("byte", "char"):
        out["bpc"] = loss / math.log(2)
    if full_split and "words" in info and "lines" in info:
        out["word_ppl"] = math.exp(min(total / (info["words"] + info["lines"]), 50.0))
    return out


def prepare(argv):
    """(config, device, dtype, checkpoint path, variant name, model, data meta, data dir, tokens to score, stride),
    all checked."""
    try:
        cfg, _, _ = configurator.resolve(argv, EvalConfig)
        if cfg.stride < 0 or cfg.batch_size < 1 or cfg.max_tokens < 0:
            raise configurator.ConfigError("stride and max_tokens must be >= 0 and batch_size >= 1")
        device, dtype = runtime.resolve(cfg.device, cfg.dtype)
        runtime.check_output_dir(cfg.out_dir)
        if Path(cfg.out_dir).is_dir():
            rundir.claim(cfg.out_dir)  # it writes there: not while a training run or another tool does
        opened = loader.open_model(Path(cfg.out_dir) / cfg.ckpt, variants.get, cfg.data_dir, dropout=0.0)
        path, model, meta, data_dir, variant = (opened.path, opened.model, opened.meta, opened.data_dir,
                                                opened.ckpt["variant"])
        if not opened.objective.causal:
            raise configurator.ConfigError(f"variant {variant!r} is not a causal LM; its MLM metrics are in "
                                           f"the training eval (metrics.jsonl)")
        data = open_split(data_dir, cfg.split, meta)
        if cfg.max_tokens:
            data = data[:cfg.max_tokens]
        if len(data) < 2:
            raise DataError(f"{data_dir}/{cfg.split}.bin is too short to score")
        stride = cfg.stride or max(1, model.config.block_size // 2)
        if stride > model.config.block_size:
            raise configurator.ConfigError(f"stride={stride} exceeds block_size {model.config.block_size}")
        return cfg, device, dtype, path, variant, model, meta, data_dir, data, stride
    except (configurator.ConfigError, checkpoint.CheckpointError, DataError, ValueError) as e:
        faults = (checkpoint.CheckpointError, DataError, runtime.Unavailable)  # files, data, devices
        runtime.fail(e, 1 if isinstance(e, faults) else 2)


def main(argv):
    cfg, device, dtype, path, variant, model, meta, data_dir, data, stride = prepare(argv)
    model.eval().to(device)
    total, correct, count = score(model, data, model.config.block_size, stride, cfg.batch_size, device,
                                  runtime.autocast(device, dtype))
    result = {"checkpoint": str(path), "variant": variant, "split": cfg.split, "stride": stride,
              "block_size": model.config.block_size,
              **report(meta, cfg.split, total, correct, count, full_split=not cfg.max_tokens)}
    print(" ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items()))
    out = Path(cfg.out_dir) / f"eval_{cfg.split}.json"
    out.write_text(json.dumps({"config": asdict(cfg), **result}, indent=1) + "\n")
    print(f"wrote {out}")
    if cfg.attention:
        analysis.run([path], [Path(cfg.out_dir).resolve().name], analysis.AnalysisConfig(
            data_dir=data_dir, split=cfg.split, out_dir=str(Path(cfg.out_dir) / "attention"), device=device.type),
            "python tools/eval.py " + " ".join(argv))


if __name__ == "__main__":
    main(sys.argv[1:])

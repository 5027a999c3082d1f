"""
Generate text from a trained checkpoint (or from GPT-2 weights):

    python sample.py --out_dir=out-shakespeare-char-cpu --start="ROMEO:" --num_samples=2 --max_new_tokens=200
    python sample.py --out_dir=out --start=FILE:prompt.txt --temperature=0 --top_k=None
    python sample.py --init_from=gpt2 --start="The meaning of life is"
    python sample.py --out_dir=out-bert --mode=fill --start="The cat sat on the [MASK]."   # encoders, duo-predict

The tokenizer is the one the run's data was prepared with (stored in the checkpoint). Samples go to stdout and errors
to stderr; sample.py writes no files.
"""
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from infra import checkpoint, configurator, hf_import, loader, runtime
from infra.runtime import fail
import variants
from data.common import DataError, get_tokenizer


@dataclass
class SampleConfig:
    init_from: str = "resume"  # "resume": out_dir/<ckpt>; or an HF GPT-2 name / local HF directory
    out_dir: str = "out"
    ckpt: str = "ckpt.pt"  # or best.pt
    start: str = "\n"  # prompt text, or FILE:path to read it from a file
    num_samples: int = 3
    max_new_tokens: int = 500
    temperature: float = 0.8  # 0 = greedy
    top_k: int | None = 200  # sample among the k most likely tokens (None: all)
    seed: int = 1337
    device: str = "auto"
    dtype: str = "auto"  # bfloat16 on CUDA, float32 on CPU
    use_cache: bool = True  # KV-cache decoding (gives the same tokens as without)
    mode: str = "generate"  # "generate", or "fill": predict each mask_text in the prompt from both sides
    mask_text: str = "[MASK]"  # fill mode: the marker of each gap in the prompt


def load_model(cfg):
    """(model, its objective, tokenizer) from a checkpoint of ours or from Hugging Face GPT-2 weights."""
    if cfg.init_from == "resume":
        opened = loader.open_model(Path(cfg.out_dir) / cfg.ckpt, variants.get, dropout=0.0)
        if opened.meta is None:
            raise checkpoint.CheckpointError(f"{opened.path} records no data meta, so its tokenizer is unknown")
        return opened.model, opened.objective, get_tokenizer(opened.meta)
    gpt = variants.get("gpt")
    model = gpt.model_class.from_pretrained(cfg.init_from)
    return model, gpt.objective, get_tokenizer({"tokenizer": "gpt2", "vocab_size": 50257, "eot_token": 50256})


def read_prompt(start):
    if start.startswith("FILE:"):
        path = Path(start[5:])
        if not path.is_file():
            raise DataError(f"prompt file {path} not found")
        start = path.read_text(encoding="utf-8")
    if start == "":
        raise DataError("the prompt is empty; give --start=TEXT (or FILE:path) with at least one character")
    return start


def fill(model, objective, tok, text, cfg):
    """Fill-mask mode: print the prompt with each mask replaced by its most likely token, then the candidates."""
    pieces = text.split(cfg.mask_text)
    if len(pieces) < 2:
        raise ValueError(f"fill mode needs at least one {cfg.mask_text} in the prompt")
    segments = [tok.encode(p) if p else [] for p in pieces]
    n_tokens = sum(map(len, segments)) + len(segments) - 1
    if n_tokens > model.config.block_size:
        raise ValueError(f"the prompt is {n_tokens} tokens but the model's context is {model.config.block_size}")
    if not objective.fills:
        raise ValueError("this model has no fill-mask mode (duo-predict and the encoders do); use --mode=generate")
    predictions = objective.fill_mask(model, segments, top_k=cfg.top_k or 5, vocab_size=tok.vocab_size)
    filled = pieces[0]
    for piece, candidates in zip(pieces[1:], predictions):
        filled += tok.decode([candidates[0][0]]) + piece
    print(filled)
    for i, candidates in enumerate(predictions):
        print(f"{cfg.mask_text} #{i + 1}: " + ", ".join(f"{tok.decode([t])!r} {p:.3f}" for t, p in candidates))


def read_config(argv):
    try:
        cfg, _, _ = configurator.resolve(argv, SampleConfig)
        hf_import.check_init_from(cfg.init_from, ("resume",))
        if cfg.init_from == "resume":
            runtime.require_path(cfg.out_dir)
        if cfg.num_samples < 1 or cfg.max_new_tokens < 0 or not cfg.temperature >= 0:  # nan fails >=
            raise configurator.ConfigError("num_samples must be >= 1, max_new_tokens >= 0 and temperature >= 0")
        if cfg.top_k is not None and cfg.top_k < 1:
            raise configurator.ConfigError(f"top_k must be >= 1 or None, got {cfg.top_k}")
        if cfg.mode not in ("generate", "fill"):
            raise configurator.ConfigError(f"mode must be generate or fill, got {cfg.mode!r}")
        return cfg, *runtime.resolve(cfg.device, cfg.dtype)
    except (configurator.ConfigError, ValueError) as e:
        fail(e, 1 if isinstance(e, runtime.Unavailable) else 2)


def main(argv):
    cfg, device, dtype = read_config(argv)
    try:
        model, objective, tok = load_model(cfg)
        text = read_prompt(cfg.start)
        if cfg.mode == "fill":
            return fill(model.eval().to(device), objective, tok, text, cfg)
        if not objective.causal:
            raise ValueError("this model is not autoregressive; use its fill-mask mode (--mode=fill)")
        prompt = tok.encode(text)
    except (checkpoint.CheckpointError, DataError, OSError, ValueError) as e:
        fail(e)
    if len(prompt) > model.config.block_size:
        fail(f"the prompt is {len(prompt)} tokens but the model's context is {model.config.block_size}")
    if max(prompt) >= model.config.vocab_size:
        fail(f"the prompt has token id {max(prompt)} outside the model's vocabulary of {model.config.vocab_size}")
    model.eval().to(device)
    gen = torch.Generator(device=device).manual_seed(cfg.seed % 2 ** 64)  # any integer seeds a generator
    x = torch.tensor(prompt, dtype=torch.long, device=device)[None]
    with runtime.autocast(device, dtype):
        for _ in range(cfg.num_samples):
            y = model.generate(x, cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k,
                               use_cache=cfg.use_cache, generator=gen, vocab_size=tok.vocab_size)
            print(tok.decode(y[0].tolist()))
            print("---------------")


if __name__ == "__main__":
    main(sys.argv[1:])

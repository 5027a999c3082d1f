"""
Train any registered variant. Single process:

    python train.py config/train_shakespeare_char_cpu.py
    python train.py config/train_enwik8.py --n_layer=8 --compile=False

DDP (nccl on CUDA, gloo on CPU), every rank reading different batches:

    torchrun --standalone --nproc_per_node=8 train.py config/train_wikitext103.py

Every key of config files and --key=value overrides is checked (see configurator.py). The resolved config is printed
and written to out_dir/config.json; metrics go to out_dir/metrics.jsonl (plot them with plot.py).
"""
import json
import math
import os
import random
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
from torch.distributed import destroy_process_group, init_process_group
from torch.nn.parallel import DistributedDataParallel as DDP

import checkpoint
import configurator
from data.common import DataError, load_meta, open_split
from model import GPTConfig, get_variant


@dataclass
class TrainConfig:
    # I/O
    out_dir: str = "out"
    overwrite: bool = False  # a scratch run refuses to replace an existing out_dir/ckpt.pt unless this is set
    eval_interval: int = 2000
    log_interval: int = 1
    eval_iters: int = 200
    eval_only: bool = False
    always_save_checkpoint: bool = True  # write ckpt.pt at every eval, not only when val improves
    init_from: str = "scratch"  # "scratch", "resume" (out_dir/ckpt.pt), or an HF GPT-2 name / local HF directory
    # logging
    wandb_log: bool = False
    wandb_project: str = "attention-variants"
    wandb_run_name: str = "run"
    # data
    dataset: str = "shakespeare_char"
    data_dir: str = ""  # default: data/<dataset>
    gradient_accumulation_steps: int = 1  # total over all ranks
    batch_size: int = 12  # per micro-step per rank
    # model
    variant: str = "gpt"
    # AdamW
    learning_rate: float = 6e-4
    max_iters: int = 600000
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 disables
    # learning-rate schedule: linear warmup, then cosine (or linear) decay to min_lr at lr_decay_iters
    decay_lr: bool = True
    lr_schedule: str = "cosine"  # "cosine" (nanoGPT) or "linear" (HF Trainer's default)
    warmup_iters: int = 2000
    lr_decay_iters: int = 600000
    min_lr: float = 6e-5
    # system
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda", "cuda:1", ...
    dtype: str = "auto"  # "auto": bfloat16 autocast on CUDA, float32 on CPU; or float32 / bfloat16 / float16
    compile: bool = False
    seed: int = 1337
    # fault tolerance
    ckpt_interval: int = 0  # also write ckpt.pt every this many steps (0: only at evals)
    keep_last: int = 0  # keep the newest N step checkpoints as ckpt_<iter>.pt besides ckpt.pt
    on_nonfinite: str = "stop"  # a non-finite loss or gradient: "stop" the run, or "skip" the step
    ddp_timeout_s: int = 600  # a collective waiting this long on a dead rank fails instead of hanging

    def validate(self):
        checks = [
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.gradient_accumulation_steps >= 1, "gradient_accumulation_steps must be >= 1"),
            (self.eval_iters >= 1, f"eval_iters must be >= 1, got {self.eval_iters}"),
            (self.eval_interval >= 1, f"eval_interval must be >= 1, got {self.eval_interval}"),
            (self.log_interval >= 1, f"log_interval must be >= 1, got {self.log_interval}"),
            (self.max_iters >= 0, f"max_iters must be >= 0, got {self.max_iters}"),
            (self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}"),
            (self.dtype in ("auto", "float32", "bfloat16", "float16"), f"unknown dtype {self.dtype!r}"),
            (self.lr_schedule in ("cosine", "linear"), f"lr_schedule must be cosine or linear, not {self.lr_schedule!r}"),
            (self.on_nonfinite in ("stop", "skip"), f"on_nonfinite must be stop or skip, not {self.on_nonfinite!r}"),
            (self.ckpt_interval >= 0 and self.keep_last >= 0, "ckpt_interval and keep_last must be >= 0"),
            (self.ddp_timeout_s >= 1, f"ddp_timeout_s must be >= 1, got {self.ddp_timeout_s}"),
            (not self.decay_lr or self.lr_decay_iters > self.warmup_iters,
             f"lr_decay_iters ({self.lr_decay_iters}) must exceed warmup_iters ({self.warmup_iters})"),
        ]
        for ok, message in checks:
            if not ok:
                raise configurator.ConfigError(message)


def fail(message, code=1):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


# --------------------------------------------------------------------------------------------------------------
# data: random blocks from the memmap, drawn by a generator seeded per micro-batch, so the batch stream depends only
# on (seed, global micro-batch index): resuming and changing the number of ranks reproduce it exactly.

class BatchSampler:
    def __init__(self, data_dir, meta, block_size, batch_size, seed, device):
        self.data_dir, self.meta = data_dir, meta
        self.block_size, self.batch_size, self.seed, self.device = block_size, batch_size, seed, device
        for split in ("train", "val"):
            n = len(open_split(data_dir, split, meta))
            if n <= block_size:
                raise DataError(f"{data_dir}/{split}.bin has {n} tokens, fewer than block_size+1 = {block_size + 1}")

    def get(self, split, index):
        # a fresh memmap per batch, as nanoGPT does, so pages do not pile up in resident memory
        data = np.memmap(Path(self.data_dir) / f"{split}.bin", dtype=self.meta["dtype"], mode="r")
        stream = {"train": 0, "val": 1, "test": 2}[split]
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + stream) * 1_000_000_007 + index)
        ix = torch.randint(len(data) - self.block_size, (self.batch_size,), generator=g).tolist()
        x = torch.from_numpy(np.stack([data[i:i + self.block_size] for i in ix]).astype(np.int64))
        y = torch.from_numpy(np.stack([data[i + 1:i + 1 + self.block_size] for i in ix]).astype(np.int64))
        if self.device.type == "cuda":
            return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device), y.to(self.device)


def summarize_eval(meta, loss):
    """Loss in nats/token plus the unit researchers quote for this tokenizer."""
    out = {"loss": loss}
    if meta["tokenizer"] in ("byte", "char"):
        out["bpc"] = loss / math.log(2)
    else:
        out["ppl"] = math.exp(min(loss, 50.0))
    return out


def get_lr(cfg, it):
    if not cfg.decay_lr:
        return cfg.learning_rate
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    if it > cfg.lr_decay_iters:
        return cfg.min_lr
    ratio = (it - cfg.warmup_iters) / (cfg.lr_decay_iters - cfg.warmup_iters)
    coeff = 1.0 - ratio if cfg.lr_schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * ratio))
    return cfg.min_lr + coeff * (cfg.learning_rate - cfg.min_lr)


def make_optimizer(model, cfg, device_type):
    """AdamW; weight decay only on >= 2-D tensors (matmul weights, embeddings), never on biases, norms, gains."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    fused = device_type == "cuda"  # the fused CUDA kernel saves a launch per tensor; on CPU foreach is as fast
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), fused=fused)


class MetricsLog:
    """One JSON object per line in out_dir/metrics.jsonl; optional wandb mirror that never breaks the run."""

    def __init__(self, path, cfg, resolved, enabled):
        self.enabled = enabled
        self.file = open(path, "a", encoding="utf-8") if enabled else None
        self.wandb = None
        if enabled and cfg.wandb_log:
            try:
                import wandb
                self.wandb = wandb.init(project=cfg.wandb_project, name=cfg.wandb_run_name, config=resolved,
                                        settings=wandb.Settings(init_timeout=30))
            except Exception as e:  # no network, no login, no package: keep training
                print(f"warning: wandb disabled ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")

    def write(self, record):
        if not self.enabled:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.wandb is not None:
            try:
                self.wandb.log(record, step=record["iter"])
            except Exception as e:
                print(f"warning: wandb log failed, disabling it ({type(e).__name__})")
                self.wandb = None


def mix_seed(*parts):
    """A 63-bit seed from integers (seed, stream, index...): the same parts always give the same stream."""
    value = 0
    for p in parts:
        value = (value * 1_000_000_007 + int(p) + 1) % (2 ** 63)
    return value


def rng_states():
    return {"python": random.getstate(), "numpy": [x.tolist() if hasattr(x, "tolist") else x
                                                     for x in np.random.get_state()],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_states(states):
    random.setstate((states["python"][0], tuple(states["python"][1]), states["python"][2]))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class Preemption:
    """SIGTERM / SIGINT ask the loop to finish its step, checkpoint and exit 0 (a second SIGINT aborts at once)."""

    def __init__(self):
        self.signal = None
        signal.signal(signal.SIGTERM, self.handle)
        signal.signal(signal.SIGINT, self.handle)

    def handle(self, signum, frame):
        if self.signal == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum


def main(argv):
    preemption = Preemption()
    # ---- config: everything is validated before anything touches out_dir
    try:
        cfg, model_cfg, explicit = configurator.resolve(argv, TrainConfig)
        cfg.validate()
    except (configurator.ConfigError, ValueError) as e:
        fail(e, 2)
    data_dir = cfg.data_dir or os.path.join("data", cfg.dataset)
    try:
        meta = load_meta(data_dir)
    except DataError as e:
        fail(e)

    ddp = int(os.environ.get("RANK", -1)) != -1
    device_name = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if ddp:
        backend = "nccl" if device_name.startswith("cuda") else "gloo"
        # a rank that dies makes the others fail at their next collective after this timeout instead of hanging
        init_process_group(backend=backend, timeout=timedelta(seconds=cfg.ddp_timeout_s))
        rank, local_rank, world = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
        if device_name.startswith("cuda"):
            device_name = f"cuda:{local_rank}"
            torch.cuda.set_device(device_name)
        if cfg.gradient_accumulation_steps % world:
            fail(f"gradient_accumulation_steps={cfg.gradient_accumulation_steps} must be a multiple of the "
                 f"{world} ranks", 2)
    else:
        rank, world = 0, 1
    master = rank == 0
    device = torch.device(device_name)
    accum = cfg.gradient_accumulation_steps // world
    dtype = cfg.dtype if cfg.dtype != "auto" else ("bfloat16" if device.type == "cuda" else "float32")
    ptdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    autocast = nullcontext() if ptdtype == torch.float32 else torch.autocast(device.type, dtype=ptdtype)
    torch.manual_seed(mix_seed(cfg.seed, 0))  # model init: the same on every rank
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    # ---- model
    cls = get_variant(cfg.variant)
    requested = model_cfg
    out_dir = Path(cfg.out_dir)
    ckpt_path = out_dir / "ckpt.pt"
    iter_num, best_val_loss, ckpt = 0, float("inf"), None
    try:
        if cfg.init_from == "scratch":
            if ckpt_path.exists() and not cfg.overwrite and not cfg.eval_only:
                fail(f"{ckpt_path} exists; use --init_from=resume to continue that run or --overwrite=True to "
                     f"start over", 2)
            if "vocab_size" not in explicit:
                model_cfg.vocab_size = cls.model_vocab_size(meta["vocab_size"])
            model = cls(model_cfg)
        elif cfg.init_from == "resume":
            ckpt = checkpoint.load(ckpt_path, map_location="cpu")
            if ckpt["variant"] != cfg.variant:
                fail(f"{ckpt_path} is a {ckpt['variant']!r} checkpoint but variant={cfg.variant!r}", 2)
            saved = ckpt["model_args"]
            if "block_size" in explicit and requested.block_size > saved["block_size"]:
                fail(f"block_size={requested.block_size} exceeds the checkpoint's {saved['block_size']}", 2)
            for key in sorted(explicit & set(saved) - {"dropout", "attn_impl"}):
                if getattr(requested, key) != saved[key]:
                    fail(f"{key}={getattr(requested, key)!r} differs from the checkpoint's {saved[key]!r}", 2)
            saved_meta = ckpt.get("data_meta") or {}
            if saved_meta.get("tokenizer", meta["tokenizer"]) != meta["tokenizer"]:
                fail(f"{ckpt_path} was trained on {saved_meta['tokenizer']}-tokenized data but {data_dir} is "
                     f"{meta['tokenizer']}-tokenized", 2)
            # the architecture comes from the checkpoint; dropout and the attention path may change on resume
            model = checkpoint.build_model(ckpt, ckpt_path, dropout=requested.dropout, attn_impl=requested.attn_impl)
            model_cfg = model.config
            iter_num, best_val_loss = ckpt["iter_num"], ckpt["best_val_loss"]
        else:  # pretrained weights; the variant's own fields (windows, spans...) and dropout apply on top
            own = set(type(model_cfg).__dataclass_fields__) - set(GPTConfig.__dataclass_fields__)
            overrides = {k: getattr(model_cfg, k) for k in explicit & (own | {"block_size"})}
            model = cls.from_pretrained(cfg.init_from, dropout=model_cfg.dropout, **overrides)
            model_cfg = model.config
    except (checkpoint.CheckpointError, ValueError, OSError) as e:
        fail(e)
    if meta["vocab_size"] > model_cfg.vocab_size:
        fail(f"the model's vocab_size {model_cfg.vocab_size} is smaller than the dataset's {meta['vocab_size']}", 2)
    try:
        sampler = BatchSampler(data_dir, meta, model_cfg.block_size, cfg.batch_size, cfg.seed, device)
    except DataError as e:
        fail(e)
    model.to(device)

    resolved = {**asdict(cfg), **asdict(model_cfg), "world_size": world, "resolved_dtype": dtype,
                "data_dir": data_dir}
    if master:
        out_dir.mkdir(parents=True, exist_ok=True)
        print("config:\n" + "\n".join(f"  {k} = {v!r}" for k, v in resolved.items()))
        tmp = out_dir / ".config.json.tmp"
        tmp.write_text(json.dumps(resolved, indent=1) + "\n")
        os.replace(tmp, out_dir / "config.json")
        tokens_per_iter = cfg.gradient_accumulation_steps * cfg.batch_size * model_cfg.block_size
        print(f"variant {cfg.variant}: {model.num_params() / 1e6:.2f}M parameters; {tokens_per_iter:,} tokens/iter")

    optimizer = make_optimizer(model, cfg, device.type)
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        set_rng_states(ckpt["rng"])
    scaler = torch.amp.GradScaler(device.type, enabled=(ptdtype == torch.float16))
    raw_model = model
    if cfg.compile:
        if master:
            print("compiling the model...")
        model = torch.compile(model)
    if ddp:
        model = DDP(model, device_ids=[local_rank] if device.type == "cuda" else None)
    log = MetricsLog(out_dir / "metrics.jsonl", cfg, resolved, enabled=master)

    def forward(batch):
        with autocast:
            return model(**batch)

    def get_batch(split, index, stream):
        """Batch `index` of a split, with any batch-transform randomness (MLM masking) seeded by it too."""
        gen = torch.Generator(device=device).manual_seed(mix_seed(cfg.seed, stream, index))
        return raw_model.prepare_batch(*sampler.get(split, index), generator=gen)

    @torch.no_grad()
    def evaluate():
        """Mean eval metrics over eval_iters fixed batches per split, shared out across ranks."""
        model.eval()
        results = {}
        for split in ("train", "val"):
            sums = {}
            for k in range(rank, cfg.eval_iters, world):
                batch = get_batch(split, k, stream=3)
                torch.manual_seed(mix_seed(cfg.seed, 4, k))
                logits, _ = forward(batch)
                for name, (total, count) in raw_model.eval_metrics(logits, **batch).items():
                    s = sums.setdefault(name, torch.zeros(2, dtype=torch.float64, device=device))
                    s += torch.stack([torch.as_tensor(total, dtype=torch.float64, device=device),
                                      torch.as_tensor(count, dtype=torch.float64, device=device)])
            for name in sorted(sums):
                if ddp:
                    torch.distributed.all_reduce(sums[name])
                total, count = sums[name].tolist()
                results[f"{split}/{name}"] = total / max(count, 1.0)
            results.update({f"{split}/{k}": v for k, v in summarize_eval(meta, results[f"{split}/loss"]).items()})
        model.train()
        return results

    def save(iter_num, best_val_loss, eval_done, best=False):
        state = {"variant": cfg.variant, "model_args": asdict(model_cfg), "model": raw_model.state_dict(),
                 "optimizer": optimizer.state_dict(), "iter_num": iter_num, "best_val_loss": best_val_loss,
                 "eval_done": eval_done, "rng": rng_states(), "sampler": {"seed": cfg.seed, "next_iter": iter_num},
                 "config": resolved, "data_meta": meta}
        if best:
            checkpoint.save(state, out_dir / "best.pt")
        elif cfg.keep_last:
            checkpoint.save(state, ckpt_path, keep_copy=out_dir / f"ckpt_{iter_num:08d}.pt", keep_last=cfg.keep_last)
        else:
            checkpoint.save(state, ckpt_path)

    # ---- training loop. Every random draw of a micro-step (its batch, its batch transform, dropout) is seeded by
    # its global micro-batch index, so a resumed run repeats the interrupted one exactly and N ranks x M micro-steps
    # equal one process x N*M micro-steps.
    micro_index = lambda it, micro: (it * accum + micro) * world + rank
    start_iter = iter_num
    # a checkpoint written right after an eval need not repeat it on resume (unless evaluating is the point)
    skip_eval_at = iter_num if ckpt is not None and ckpt.get("eval_done") and not cfg.eval_only else None
    batch = get_batch("train", micro_index(iter_num, 0), stream=0)
    t0 = time.time()
    while True:
        lr = get_lr(cfg, iter_num)
        for group in optimizer.param_groups:
            group["lr"] = lr

        eval_due = iter_num % cfg.eval_interval == 0 or cfg.eval_only or iter_num == cfg.max_iters
        if eval_due and iter_num != skip_eval_at:
            results = evaluate()
            if master:
                shown = " ".join(f"{k} {v:.4f}" for k, v in results.items() if k.endswith(("loss", "bpc", "ppl")))
                print(f"step {iter_num}: {shown}")
                log.write({"iter": iter_num, "kind": "eval", "lr": lr, **results,
                           **{f"model/{k}": v for k, v in raw_model.log_metrics().items()}})
                improved = results["val/loss"] < best_val_loss
                best_val_loss = min(best_val_loss, results["val/loss"])
                if not math.isfinite(results["val/loss"]):
                    print(f"warning: non-finite val loss at iter {iter_num}; {ckpt_path} is not overwritten")
                elif iter_num > start_iter and not cfg.eval_only:
                    if improved:
                        save(iter_num, best_val_loss, eval_done=True, best=True)
                    if improved or cfg.always_save_checkpoint:
                        save(iter_num, best_val_loss, eval_done=True)
                        print(f"saved checkpoint to {ckpt_path}")
        elif master and cfg.ckpt_interval and iter_num % cfg.ckpt_interval == 0 and iter_num > start_iter:
            save(iter_num, best_val_loss, eval_done=False)
        if cfg.eval_only or iter_num >= cfg.max_iters:
            break

        for micro in range(accum):
            torch.manual_seed(mix_seed(cfg.seed, 1, micro_index(iter_num, micro)))  # dropout, diffusion noise...
            if ddp:  # all-reduce gradients only on the last micro-step
                model.require_backward_grad_sync = micro == accum - 1
            _, loss = forward(batch)
            following = (iter_num, micro + 1) if micro + 1 < accum else (iter_num + 1, 0)
            batch = get_batch("train", micro_index(*following), stream=0)  # fetched while the backward is queued
            scaler.scale(loss / accum).backward()
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(),
                                                   cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        lossf = loss.item()
        # one small all-reduce agrees across ranks on non-finite values and on preemption
        flags = torch.tensor([0.0 if math.isfinite(lossf) and torch.isfinite(grad_norm) else 1.0,
                              1.0 if preemption.signal else 0.0], device=device)
        if ddp:
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
        nonfinite, preempted = bool(flags[0]), bool(flags[1])
        if nonfinite and cfg.on_nonfinite == "stop":
            fail(f"non-finite loss ({lossf}) or gradient norm ({float(grad_norm)}) at iter {iter_num}; stopping "
                 f"(the last good checkpoint stays; --on_nonfinite=skip skips such steps instead)")
        if nonfinite:
            if master:
                print(f"iter {iter_num}: non-finite loss or gradient, step skipped")
            optimizer.zero_grad(set_to_none=True)
        else:
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)

        t1 = time.time()
        dt, t0 = t1 - t0, t1
        if iter_num % cfg.log_interval == 0 and master:
            tps = cfg.gradient_accumulation_steps * cfg.batch_size * model_cfg.block_size / dt
            print(f"iter {iter_num}: loss {lossf:.4f}, time {dt * 1000:.2f}ms, tok/s {tps:,.0f}")
            log.write({"iter": iter_num, "kind": "train", "loss": lossf, "lr": lr, "grad_norm": float(grad_norm),
                       "dt_ms": dt * 1000, "tokens_per_s": tps, "skipped": nonfinite})
        iter_num += 1

        if preempted:
            if master:
                save(iter_num, best_val_loss, eval_done=False)
                name = signal.Signals(preemption.signal).name if preemption.signal else "another rank"
                print(f"preempted by {name}: checkpoint of iter {iter_num} written to {ckpt_path}; "
                      f"continue with --init_from=resume")
            if ddp:
                torch.distributed.barrier()
                destroy_process_group()
            return

    if master and not cfg.eval_only:
        raw_model.save_artifacts(out_dir)
    if ddp:
        destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])

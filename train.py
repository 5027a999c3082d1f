"""
Train any registered variant. Single process:

    python train.py config/train_shakespeare_char_cpu.py
    python train.py config/train_enwik8.py --n_layer=8 --compile=False

DDP (nccl on CUDA, gloo on CPU), every rank reading different batches (launch.py is torchrun, exiting 0 after a
preemption checkpoint where torchrun exits 1):

    python launch.py --standalone --nproc_per_node=8 train.py config/train_wikitext103.py

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
from torch.distributed import init_process_group
from torch.nn.parallel import DistributedDataParallel as DDP

import attention
from infra import checkpoint, configurator, flops, hf_import, memory, rundir, runtime, scaling
from infra.runtime import fail
import variants
from data.common import DataError, check_same_vocabulary, load_meta, open_split
from model import GPT, GPTConfig
from objectives import Batch


@dataclass
class TrainConfig:
    # I/O
    out_dir: str = "out"  # config.json, metrics.jsonl, ckpt.pt and best.pt go here
    overwrite: bool = False  # a scratch run refuses to replace an existing out_dir/ckpt.pt unless this is set
    eval_interval: int = 2000  # evaluate (and checkpoint) every this many steps
    log_interval: int = 1  # print and log a training step every this many steps
    eval_iters: int = 200  # batches per split in each evaluation
    eval_only: bool = False  # evaluate once (e.g. a resumed checkpoint) and exit
    always_save_checkpoint: bool = True  # write ckpt.pt at every eval, not only when val improves
    init_from: str = "scratch"  # "scratch", "resume" (out_dir/ckpt.pt), or HF weights (a GPT-2 name, a local HF dir)
    # logging
    wandb_log: bool = False  # mirror metrics.jsonl to Weights & Biases (never stops the run if it fails)
    wandb_project: str = "attention-variants"
    wandb_run_name: str = "run"
    # data
    dataset: str = "shakespeare_char"  # data/<dataset> unless data_dir is set
    data_dir: str = ""  # default: data/<dataset>
    doc_mask: bool = False  # attention never crosses the document separator that meta.json names (packed text)
    doc_positions: bool = False  # with doc_mask: positions restart at 0 in every document
    gradient_accumulation_steps: int = 1  # total over all ranks
    batch_size: int = 12  # per micro-step per rank
    # model
    variant: str = "gpt"  # a registered variant (variants.names()); --help with --variant=NAME lists its keys
    # AdamW
    learning_rate: float = 6e-4  # peak learning rate, after warmup
    max_iters: int = 600000  # optimizer steps in all
    weight_decay: float = 0.1  # on matrices and embeddings only, never biases or norms
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 disables
    # learning-rate schedule: linear warmup, then cosine (or linear) decay to min_lr at lr_decay_iters
    decay_lr: bool = True  # False: constant learning_rate
    lr_schedule: str = "cosine"  # "cosine" (nanoGPT) or "linear" (HF Trainer's default)
    warmup_iters: int = 2000  # linear warmup steps
    lr_decay_iters: int = 600000  # step at which the decay reaches min_lr
    min_lr: float = 6e-5  # learning rate at and after lr_decay_iters
    # system
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda", "cuda:1", ...
    dtype: str = "auto"  # "auto": bfloat16 autocast on CUDA, float32 on CPU; or float32 / bfloat16 / float16
    compile: bool = False  # torch.compile the model
    seed: int = 1337  # fixes the init and, per micro-batch, every batch and dropout draw
    # fault tolerance
    ckpt_interval: int = 0  # also write ckpt.pt every this many steps (0: only at evals)
    keep_last: int = 0  # keep the newest N step checkpoints as ckpt_<iter>.pt besides ckpt.pt
    on_nonfinite: str = "stop"  # a non-finite loss or gradient: "stop" the run, or "skip" the step
    max_skipped_steps: int = 10  # on_nonfinite=skip: this many skipped steps in a row stop the run (exit 1)
    ddp_timeout_s: int = 600  # a collective waiting this long on a dead rank fails instead of hanging
    # scaling out
    parallelism: str = "ddp"  # under torchrun: "ddp" (whole model per rank) or "fsdp" (FSDP2 shards; ckpt is a folder)
    activation_checkpointing: bool = False  # recompute each block's activations in the backward: less memory

    def validate(self):
        # nan or inf (the literal 1e999 parses as inf) would pass every range check below
        for f in self.__dataclass_fields__.values():
            if f.type is float and not math.isfinite(getattr(self, f.name)):
                raise configurator.ConfigError(f"{f.name} must be a finite number, got {getattr(self, f.name)}")
        checks = [
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.gradient_accumulation_steps >= 1, "gradient_accumulation_steps must be >= 1"),
            (self.eval_iters >= 1, f"eval_iters must be >= 1, got {self.eval_iters}"),
            (self.eval_interval >= 1, f"eval_interval must be >= 1, got {self.eval_interval}"),
            (self.log_interval >= 1, f"log_interval must be >= 1, got {self.log_interval}"),
            (self.max_iters >= 0, f"max_iters must be >= 0, got {self.max_iters}"),
            (self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}"),
            (self.min_lr >= 0, f"min_lr must be >= 0, got {self.min_lr}"),
            # min_lr is the end of the decay: above learning_rate the schedule would climb instead
            (not self.decay_lr or self.min_lr <= self.learning_rate,
             f"min_lr ({self.min_lr}) must not exceed learning_rate ({self.learning_rate})"),
            (0 <= self.beta1 < 1, f"beta1 must be in [0, 1), got {self.beta1}"),
            (0 <= self.beta2 < 1, f"beta2 must be in [0, 1), got {self.beta2}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (self.grad_clip >= 0, f"grad_clip must be >= 0 (0 disables clipping), got {self.grad_clip}"),
            (self.warmup_iters >= 0, f"warmup_iters must be >= 0, got {self.warmup_iters}"),
            (self.lr_decay_iters >= 0, f"lr_decay_iters must be >= 0, got {self.lr_decay_iters}"),
            (self.max_skipped_steps >= 1, f"max_skipped_steps must be >= 1, got {self.max_skipped_steps}"),
            (self.lr_schedule in ("cosine", "linear"), f"lr_schedule must be cosine or linear, not {self.lr_schedule!r}"),
            (self.on_nonfinite in ("stop", "skip"), f"on_nonfinite must be stop or skip, not {self.on_nonfinite!r}"),
            (self.ckpt_interval >= 0 and self.keep_last >= 0, "ckpt_interval and keep_last must be >= 0"),
            (self.ddp_timeout_s >= 1, f"ddp_timeout_s must be >= 1, got {self.ddp_timeout_s}"),
            (self.parallelism in ("ddp", "fsdp"), f"parallelism must be ddp or fsdp, not {self.parallelism!r}"),
            # GradScaler cannot unscale sharded gradients; bf16 needs no scaling
            (self.parallelism != "fsdp" or self.dtype != "float16", "parallelism=fsdp runs in float32 or bfloat16"),
            (self.doc_mask or not self.doc_positions, "doc_positions needs doc_mask=True"),
            (not self.decay_lr or self.lr_decay_iters > self.warmup_iters,
             f"lr_decay_iters ({self.lr_decay_iters}) must exceed warmup_iters ({self.warmup_iters})"),
        ]
        for ok, message in checks:
            if not ok:
                raise configurator.ConfigError(message)


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

    def generator_seed(self, stream, index):
        """The seed of one batch's draw: (seed * 1_000_003 + stream) * 1_000_000_007 + index wherever that lies in
        torch's seed range [-2^63, 2^64); elsewhere (seeds beyond about +-1.8e4, or a batch index beyond about 1e18)
        mix_seed of the parts, whose streams 8-10 are used by nothing else that draws from this seed."""
        value = (self.seed * 1_000_003 + stream) * 1_000_000_007 + index
        if -2 ** 63 <= value < 2 ** 64:
            return value
        return mix_seed(self.seed, 8 + stream, index)

    def get(self, split, index):
        # a fresh memmap per batch, as nanoGPT does, so pages do not pile up in resident memory
        data = np.memmap(Path(self.data_dir) / f"{split}.bin", dtype=self.meta["dtype"], mode="r")
        g = torch.Generator().manual_seed(self.generator_seed({"train": 0, "val": 1, "test": 2}[split], index))
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

    def __init__(self, path, cfg, resolved, enabled, resume_at=None):
        self.enabled = enabled
        if enabled and resume_at is not None:
            self.drop_records_after(path, *resume_at)
        self.file = open(path, "a", encoding="utf-8") if enabled else None
        self.wandb = None
        if enabled and cfg.wandb_log:
            try:
                import wandb
                self.wandb = wandb.init(project=cfg.wandb_project, name=cfg.wandb_run_name, config=resolved,
                                        settings=wandb.Settings(init_timeout=30))
            except Exception as e:  # no network, no login, no package: keep training
                print(f"warning: wandb disabled ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")

    @staticmethod
    def drop_records_after(path, iter_num, eval_done):
        """Keep only the records a run resumed at iter_num would not write again: the ones of earlier iterations
        and, when the checkpoint was written after its eval, that eval. Records of steps that ran after the
        checkpoint (a run killed before its next one) would otherwise repeat. Rewritten atomically."""
        if not path.is_file():
            return
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)

        def kept(line):
            try:
                record = json.loads(line)
                its_eval = record["iter"] == iter_num and record["kind"] == "eval" and eval_done
                return record["iter"] < iter_num or its_eval
            except (ValueError, TypeError, KeyError):  # a line cut short by the kill
                return False

        keep = [line for line in lines if kept(line)]
        if len(keep) < len(lines):
            tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
            tmp.write_text("".join(keep), encoding="utf-8")
            os.replace(tmp, path)

    def close(self):
        """Close metrics.jsonl and finish the wandb run (for a process that exits without running atexit hooks)."""
        if self.file is not None:
            self.file.close()
            self.file = None
        if self.wandb is not None:
            try:
                self.wandb.finish()
            except Exception as e:
                print(f"warning: wandb finish failed ({type(e).__name__})")
            self.wandb = None

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


@dataclass
class Ranks:
    """This process's place in a torchrun job (rank 0 of 1 without one)."""
    ddp: bool = False
    rank: int = 0
    local_rank: int = 0
    world: int = 1

    @property
    def master(self):
        return self.rank == 0


def setup_distributed(cfg, device):
    """Join the torchrun process group (nccl on CUDA, gloo on CPU); returns (Ranks, this rank's device)."""
    if int(os.environ.get("RANK", -1)) == -1:
        return Ranks(), device
    # a rank that dies makes the others fail at their next collective after this timeout instead of hanging
    init_process_group(backend="nccl" if device.type == "cuda" else "gloo", timeout=timedelta(seconds=cfg.ddp_timeout_s))
    ranks = Ranks(True, int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"]))
    if device.type == "cuda":
        device = torch.device(f"cuda:{ranks.local_rank}")
        torch.cuda.set_device(device)
    if cfg.gradient_accumulation_steps % ranks.world:
        fail(f"gradient_accumulation_steps={cfg.gradient_accumulation_steps} must be a multiple of the "
             f"{ranks.world} ranks", 2)
    return ranks, device


def pretrained_tokenizer(init_from):
    """"gpt2" when pretrained weights read GPT-2 BPE ids (a GPT-2 name, or a directory of a GPT-2 model with that
    vocabulary), else None (unknown: only the vocabulary size can be checked)."""
    if not os.path.isdir(init_from):
        return "gpt2"
    try:
        config = json.loads((Path(init_from) / "config.json").read_text())
    except (OSError, ValueError):
        return None  # the importer reports the unreadable directory
    return "gpt2" if (config.get("model_type"), config.get("vocab_size")) == ("gpt2", 50257) else None


def read_config(argv):
    """(TrainConfig, model config, keys the user set, data dir, data meta): all validated before anything is written."""
    try:
        cfg, model_cfg, explicit = configurator.resolve(argv, TrainConfig, lambda name: variants.get(name).config_class,
                                                         validate_model=False)
        cfg.validate()
        hf_import.check_init_from(cfg.init_from, ("scratch", "resume"))
        if cfg.eval_only and cfg.init_from == "scratch":
            raise configurator.ConfigError("eval_only=True evaluates a trained model: give --init_from=resume (or "
                                           "pretrained weights), not a freshly initialised one")
        if cfg.init_from == "scratch":  # otherwise the checkpoint or the pretrained weights set the architecture
            model_cfg.validate()
        runtime.resolve(cfg.device, cfg.dtype)
        runtime.check_output_dir(cfg.out_dir)
    except (configurator.ConfigError, ValueError) as e:
        fail(e, 1 if isinstance(e, runtime.Unavailable) else 2)
    data_dir = cfg.data_dir or os.path.join("data", cfg.dataset)
    try:
        meta = load_meta(data_dir)
    except DataError as e:
        fail(e)
    if cfg.doc_mask:
        if meta.get("doc_separator") is None:
            fail(f"doc_mask=True but {data_dir}/meta.json names no doc_separator (packed documents); prepare the data "
                 f"with a script that marks them (tinystories, wikitext103 --mark_articles)", 2)
        try:  # the objective must be one that packs documents
            variants.get(cfg.variant).objective.documents(Batch(torch.zeros(1, 2, dtype=torch.long), None), 0)
        except ValueError as e:
            fail(e, 2)
    return cfg, model_cfg, explicit, data_dir, meta


def refuse_to_mix_runs(cfg, out_dir):
    """A new run (scratch or pretrained weights) in an out_dir that holds another run's checkpoint: exit 2 unless
    --overwrite (then claim_out_dir retires that run) or eval_only (which writes no checkpoint)."""
    if cfg.init_from == "resume" or cfg.overwrite or cfg.eval_only:
        return
    found = scaling.checkpoint_at(Path(out_dir) / "ckpt.pt")
    if found.exists() or scaling.is_sharded_checkpoint(found):
        fail(f"{found} exists; use --init_from=resume to continue that run or --overwrite=True to start over", 2)


def claim_out_dir(cfg, out_dir, start=False):
    """Hold out_dir for this run (rundir.claim: one line naming the holder's PID when another process has it). With
    start (every check passed, nothing written yet), a new run checks again that no other run finished there
    meanwhile, and --overwrite retires the earlier run's records, checkpoints and config together."""
    try:
        rundir.claim(out_dir)
    except (runtime.Unavailable, OSError) as e:
        fail(e)
    if start:
        refuse_to_mix_runs(cfg, out_dir)
        if cfg.overwrite and cfg.init_from != "resume" and not cfg.eval_only:
            rundir.retire(out_dir)


def build_from_scratch(cfg, model_cfg, explicit, variant, meta, ckpt_path):
    refuse_to_mix_runs(cfg, ckpt_path.parent)
    if "vocab_size" not in explicit:
        model_cfg.vocab_size = variant.objective.vocab_size(meta["vocab_size"])
    try:
        return variant.build(model_cfg)
    except (RuntimeError, MemoryError) as e:
        if not runtime.out_of_memory(e):
            raise
        with torch.device("meta"):  # the same model without storage, to say how large it is
            n = variant.build(model_cfg).num_params(False)
        fail(f"cannot allocate the model: {n:,} parameters need {n * 4 / 2**30:.1f} GiB in float32 (before gradients "
             f"and optimizer state); `python bench.py plan` shows what fits where")


def build_from_checkpoint(cfg, requested, explicit, meta, data_dir, ckpt_path):
    """The architecture comes from the checkpoint; dropout and the attention path may change on resume. A sharded
    checkpoint (a folder) gives its plain entries here; its weights are loaded once the model is sharded."""
    ckpt_path = scaling.checkpoint_at(ckpt_path)
    if scaling.is_sharded_checkpoint(ckpt_path) or ckpt_path.is_dir():
        ckpt = {**scaling.read_extra(ckpt_path), "sharded_path": ckpt_path}
    else:
        ckpt = checkpoint.load(ckpt_path, map_location="cpu")
    if ckpt["variant"] != cfg.variant:
        fail(f"{ckpt_path} is a {ckpt['variant']!r} checkpoint but variant={cfg.variant!r}", 2)
    saved = ckpt["model_args"]
    if "block_size" in explicit and requested.block_size > saved["block_size"]:
        fail(f"block_size={requested.block_size} exceeds the checkpoint's {saved['block_size']}", 2)
    for key in sorted(explicit & set(saved) - {"dropout", "attn_impl"}):
        if getattr(requested, key) != saved[key]:
            fail(f"{key}={getattr(requested, key)!r} differs from the checkpoint's {saved[key]!r}", 2)
    try:
        check_same_vocabulary(ckpt.get("data_meta") or {}, meta, ckpt_path, data_dir)
    except DataError as e:
        fail(e, 2)
    try:  # the settings a resume may change, checked with the saved architecture they join
        joined = type(requested)(**{**saved, "dropout": requested.dropout, "attn_impl": requested.attn_impl})
    except TypeError:
        joined = None  # a saved config that does not fit its variant: checkpoint.build_model names it (exit 1)
    try:
        if joined is not None:
            joined.validate()
    except ValueError as e:
        fail(e, 2)
    model = checkpoint.build_model(ckpt, variants.get, ckpt_path, weights="sharded_path" not in ckpt,
                                   dropout=requested.dropout, attn_impl=requested.attn_impl)
    return model, ckpt


def build_model(cfg, model_cfg, explicit, meta, data_dir, ckpt_path):
    """(model, checkpoint dict or None) for init_from = scratch, resume, or pretrained HF weights."""
    variant = variants.get(cfg.variant)
    try:
        if cfg.init_from == "scratch":
            return build_from_scratch(cfg, model_cfg, explicit, variant, meta, ckpt_path), None
        if cfg.init_from == "resume":
            return build_from_checkpoint(cfg, model_cfg, explicit, meta, data_dir, ckpt_path)
        if not hasattr(variant.model_class, "from_pretrained"):
            fail(f"variant {cfg.variant!r} cannot load pretrained weights (init_from={cfg.init_from!r})", 2)
        refuse_to_mix_runs(cfg, ckpt_path.parent)
        if pretrained_tokenizer(cfg.init_from) == "gpt2" and meta["tokenizer"] != "gpt2":
            fail(f"init_from={cfg.init_from!r} holds GPT-2 weights, whose ids are GPT-2 BPE tokens, but {data_dir} is "
                 f"{meta['tokenizer']}-tokenized; prepare GPT-2 BPE data (data/tinystories, data/wikitext103)", 2)
        # the variant's own fields (windows, spans...), block_size and dropout apply on top of the weights
        own = set(type(model_cfg).__dataclass_fields__) - set(GPTConfig.__dataclass_fields__)
        overrides = {k: getattr(model_cfg, k) for k in explicit & (own | {"block_size"})}
        return variant.model_class.from_pretrained(cfg.init_from, dropout=model_cfg.dropout, **overrides), None
    except (checkpoint.CheckpointError, ValueError, OSError) as e:
        fail(e)


def write_run_config(out_dir, resolved):
    out_dir.mkdir(parents=True, exist_ok=True)
    print("config:\n" + "\n".join(f"  {k} = {v!r}" for k, v in resolved.items()))
    tmp = out_dir / ".config.json.tmp"
    tmp.write_text(json.dumps(resolved, indent=1) + "\n")
    os.replace(tmp, out_dir / "config.json")


class Trainer:
    """Everything one training run holds: the model (raw and wrapped), its objective, optimizer, data and logs."""

    skipped_in_a_row = 0  # optimizer steps skipped for non-finite values since the last applied one

    def __init__(self, cfg, model, ckpt, ranks, device, dtype, meta, data_dir, resolved):
        self.cfg, self.ranks, self.device, self.meta, self.resolved = cfg, ranks, device, meta, resolved
        self.objective = variants.get(cfg.variant).objective
        self.out_dir = Path(cfg.out_dir)
        self.sharded_ckpt = cfg.parallelism == "fsdp"  # checkpoints are DCP folders, also in a single process
        self.sharded = self.sharded_ckpt and ranks.ddp  # the model itself is sharded over the ranks
        self.ckpt_path = self.out_dir / ("ckpt" if self.sharded_ckpt else "ckpt.pt")
        self.accum = cfg.gradient_accumulation_steps // ranks.world
        mixed = self.sharded and device.type == "cuda" and dtype == torch.bfloat16  # FSDP's policy replaces autocast
        self.dtype, self.autocast = dtype, nullcontext() if mixed else runtime.autocast(device, dtype)
        self.sampler = BatchSampler(data_dir, meta, model.config.block_size, cfg.batch_size, cfg.seed, device)
        self.raw_model = model
        if ranks.master:  # a new directory is created and held only now that every check has passed
            claim_out_dir(cfg, self.out_dir, start=True)
            if not cfg.eval_only:  # an evaluation changes nothing about the run
                write_run_config(self.out_dir, resolved)
            tokens_per_iter = cfg.gradient_accumulation_steps * cfg.batch_size * model.config.block_size
            print(f"variant {cfg.variant}: {model.num_params() / 1e6:.2f}M parameters; {tokens_per_iter:,} tokens/iter")
        if self.sharded:  # FSDP2 moves each rank's shards to the device, compiling block by block with compile=True
            scaling.shard_model(model, device.type, mixed_precision=mixed, compile=cfg.compile)
        self.optimizer = make_optimizer(model, cfg, device.type)  # over the sharded parameters
        self.iter_num, self.best_val_loss = 0, float("inf")
        # cumulative training cost, logged with every eval and kept across resumes: FLOPs of every rank's
        # forward + backward, and seconds spent in training steps (evals and checkpoints excluded)
        self.train_flops, self.train_s = 0.0, 0.0
        if ckpt is not None:
            self.load_state(model, ckpt)
        self.scaler = torch.amp.GradScaler(device.type, enabled=(dtype == torch.float16))
        if cfg.compile and not self.sharded:
            if ranks.master:
                print("compiling the model...")
            model = torch.compile(model)
        if ranks.ddp and not self.sharded:
            model = DDP(model, device_ids=[ranks.local_rank] if device.type == "cuda" else None)
        self.model = model
        resume_at = None if ckpt is None or cfg.eval_only else (self.iter_num, bool(ckpt.get("eval_done")))
        self.log = MetricsLog(self.out_dir / "metrics.jsonl", cfg, resolved, enabled=ranks.master, resume_at=resume_at)

    def load_state(self, model, ckpt):
        """Weights (of a sharded checkpoint), optimizer, RNG and position of the checkpoint being resumed."""
        if "sharded_path" in ckpt:  # into the sharded model, or a plain one (DDP, one process), at any world size
            _, rng = scaling.load_sharded(ckpt["sharded_path"], model, self.optimizer)
        elif self.sharded:  # a DDP run's single file continues under FSDP
            scaling.load_full_state(model, self.optimizer, ckpt)
            rng = ckpt["rng"]
        else:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            rng = ckpt["rng"]
        if rng is not None:  # None after a change of world size: every micro-step reseeds anyway
            set_rng_states(rng)
        self.iter_num, self.best_val_loss = ckpt["iter_num"], ckpt["best_val_loss"]
        # None: a checkpoint without the count; train() assumes every earlier step cost what the next one does
        self.train_flops, self.train_s = ckpt.get("train_flops"), ckpt.get("train_s", 0.0)

    def micro_index(self, it, micro):
        """Global micro-batch index: N ranks x M micro-steps draw what one process x N*M micro-steps would."""
        return (it * self.accum + micro) * self.ranks.world + self.ranks.rank

    def batch(self, split, index, stream):
        """Batch `index` of a split, with the objective's randomness (MLM masking) seeded by it too."""
        gen = torch.Generator(device=self.device).manual_seed(mix_seed(self.cfg.seed, stream, index))
        batch = self.objective.prepare(self.raw_model.config, *self.sampler.get(split, index), generator=gen)
        if self.cfg.doc_mask:
            batch = self.objective.documents(batch, self.meta["doc_separator"], self.cfg.doc_positions)
        return batch

    def step_loss(self, batch):
        with self.autocast:
            return self.objective.step(self.model, batch, self.raw_model)

    @torch.no_grad()
    def evaluate(self):
        """Mean eval metrics over eval_iters fixed batches per split, shared out across ranks."""
        cfg, ranks = self.cfg, self.ranks
        self.model.eval()
        results = {}
        for split in ("train", "val"):
            sums = {}
            # every rank runs as many forwards (FSDP's collectives need them all) and holds the same metric names: a
            # rank past eval_iters scores a batch with weight 0
            rounds = -(-cfg.eval_iters // ranks.world)
            for k in range(ranks.rank, rounds * ranks.world, ranks.world):
                weight = float(k < cfg.eval_iters)
                k %= cfg.eval_iters
                batch = self.batch(split, k, stream=3)
                torch.manual_seed(mix_seed(cfg.seed, 4, k))
                logits, _ = self.step_loss(batch)
                for name, (total, count) in self.objective.metrics(logits, batch).items():
                    s = sums.setdefault(name, torch.zeros(2, dtype=torch.float64, device=self.device))
                    s += weight * torch.stack([torch.as_tensor(total, dtype=torch.float64, device=self.device),
                                               torch.as_tensor(count, dtype=torch.float64, device=self.device)])
            for name in sorted(sums):
                if ranks.ddp:
                    torch.distributed.all_reduce(sums[name])
                total, count = sums[name].tolist()
                results[f"{split}/{name}"] = total / max(count, 1.0)
            results.update({f"{split}/{k}": v for k, v in summarize_eval(self.meta, results[f"{split}/loss"]).items()})
        self.model.train()
        return results

    def save(self, eval_done, best=False):
        """Write ckpt (or best): one file from rank 0, or under FSDP a folder every rank writes its shards into."""
        state = {"variant": self.cfg.variant, "model_args": asdict(self.raw_model.config),
                 "iter_num": self.iter_num, "best_val_loss": self.best_val_loss, "eval_done": eval_done,
                 "train_flops": self.train_flops, "train_s": self.train_s,
                 "sampler": {"seed": self.cfg.seed, "next_iter": self.iter_num},
                 "config": self.resolved, "data_meta": self.meta}
        if self.sharded_ckpt:
            keep = self.out_dir / f"ckpt_{self.iter_num:08d}" if self.cfg.keep_last and not best else None
            scaling.save_sharded(self.out_dir / "best" if best else self.ckpt_path, self.raw_model, self.optimizer,
                                 state, rng_states(), keep_copy=keep, keep_last=self.cfg.keep_last)
            return
        state.update(model=self.raw_model.state_dict(), optimizer=self.optimizer.state_dict(), rng=rng_states())
        path = self.out_dir / "best.pt" if best else self.ckpt_path
        try:
            if best or not self.cfg.keep_last:
                checkpoint.save(state, path)
            else:
                checkpoint.save(state, path, keep_copy=self.out_dir / f"ckpt_{self.iter_num:08d}.pt",
                                keep_last=self.cfg.keep_last)
        except OSError as e:
            fail(f"cannot write checkpoint {path} ({e.strerror or e}); the previous one is unchanged")

    def eval_and_save(self, lr, start_iter):
        """Evaluate, log, and write ckpt.pt (and best.pt when val improves) unless the loss is not finite."""
        results = self.evaluate()
        master = self.ranks.master
        if not (master or self.sharded):  # under FSDP every rank takes part in log_metrics and the save
            return
        # a model that reports metrics of its weights (spans, gates) reads them whole: under FSDP, gathered on every rank
        reports = type(self.raw_model).log_metrics is not GPT.log_metrics
        with scaling.gathered(self.raw_model) if self.sharded and reports else nullcontext():
            model_metrics = self.raw_model.log_metrics()
        if master:
            shown = " ".join(f"{k} {v:.4f}" for k, v in results.items() if k.endswith(("loss", "bpc", "ppl")))
            print(f"step {self.iter_num}: {shown}")
            self.log.write({"iter": self.iter_num, "kind": "eval", "lr": lr, "train_flops": self.train_flops,
                            "train_s": self.train_s, **results,
                            **{f"model/{k}": v for k, v in model_metrics.items()}})
        improved = results["val/loss"] < self.best_val_loss  # the same on every rank: results are all-reduced
        self.best_val_loss = min(self.best_val_loss, results["val/loss"])
        if not math.isfinite(results["val/loss"]):
            if master:
                print(f"warning: non-finite val loss at iter {self.iter_num}; {self.ckpt_path} is not overwritten")
        elif self.iter_num > start_iter and not self.cfg.eval_only:
            if improved:
                self.save(eval_done=True, best=True)
            if improved or self.cfg.always_save_checkpoint:
                self.save(eval_done=True)
                if master:
                    print(f"saved checkpoint to {self.ckpt_path}")

    def optimizer_step(self, batch, preemption):
        """One iteration's micro-steps, gradient clipping and update. Returns (loss, grad norm, nonfinite, preempted,
        the first batch of the next iteration), fetching each next batch while the backward is queued."""
        cfg, ranks = self.cfg, self.ranks
        for micro in range(self.accum):
            torch.manual_seed(mix_seed(cfg.seed, 1, self.micro_index(self.iter_num, micro)))  # dropout, noise...
            scaling.set_gradient_sync(self.model, micro == self.accum - 1)  # reduce on the last micro-step only
            _, loss = self.step_loss(batch)
            following = (self.iter_num, micro + 1) if micro + 1 < self.accum else (self.iter_num + 1, 0)
            batch = self.batch("train", self.micro_index(*following), stream=0)
            self.scaler.scale(loss / self.accum).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(),
                                                   cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        lossf = loss.item()
        # one small all-reduce agrees across ranks on non-finite values and on preemption
        flags = torch.tensor([0.0 if math.isfinite(lossf) and torch.isfinite(grad_norm) else 1.0,
                              1.0 if preemption.signal else 0.0], device=self.device)
        if ranks.ddp:
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
        nonfinite, preempted = bool(flags[0]), bool(flags[1])
        if nonfinite and cfg.on_nonfinite == "stop":
            fail(f"non-finite loss ({lossf}) or gradient norm ({float(grad_norm)}) at iter {self.iter_num}; stopping "
                 f"(the last good checkpoint stays; --on_nonfinite=skip skips such steps instead)")
        if nonfinite:
            if ranks.master:
                print(f"iter {self.iter_num}: non-finite loss or gradient, step skipped")
            # skipping cannot help once the weights themselves are broken, nor when every step keeps failing
            if not scaling.all_finite(p for group in self.optimizer.param_groups for p in group["params"]):
                fail(f"the model's parameters are non-finite at iter {self.iter_num}; skipping steps cannot recover "
                     f"(the last good checkpoint stays; lower learning_rate or set grad_clip)")
            self.skipped_in_a_row += 1
            if self.skipped_in_a_row >= cfg.max_skipped_steps:
                fail(f"{self.skipped_in_a_row} steps in a row had a non-finite loss or gradient (iters "
                     f"{self.iter_num - self.skipped_in_a_row + 1}-{self.iter_num}; max_skipped_steps="
                     f"{cfg.max_skipped_steps}); stopping (the last good checkpoint stays)")
        else:
            self.skipped_in_a_row = 0
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return lossf, grad_norm, nonfinite, preempted, batch

    def train(self, preemption, skip_eval_at):
        """The loop; True when it stopped for preemption. Every random draw of a micro-step (its batch, the
        objective's randomness, dropout) is seeded by its global micro-batch index, so a resumed run repeats the
        interrupted one exactly."""
        cfg, master = self.cfg, self.ranks.master
        start_iter = self.iter_num
        batch = self.batch("train", self.micro_index(self.iter_num, 0), stream=0)
        # MFU (logged by the master): 3x the forward FLOPs of its micro-batches per step, against a matmul peak read
        # here. Under FSDP every rank runs the counting forward, because a forward is a collective there.
        step_flops, peak, mean_dt = None, None, None
        if master or self.sharded:
            step_flops = flops.training_step_flops(self.raw_model, self.objective, batch, self.accum)
            if self.train_flops is None:
                self.train_flops = step_flops * self.ranks.world * self.iter_num
        if master:
            peak = flops.peak_flops(self.device, self.dtype)
        while True:
            lr = get_lr(cfg, self.iter_num)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            eval_due = cfg.eval_only or self.iter_num % cfg.eval_interval == 0 or self.iter_num == cfg.max_iters
            if eval_due and self.iter_num != skip_eval_at:
                self.eval_and_save(lr, start_iter)
            elif ((master or self.sharded) and cfg.ckpt_interval and self.iter_num % cfg.ckpt_interval == 0
                  and self.iter_num > start_iter):
                self.save(eval_done=False)
            if cfg.eval_only or self.iter_num >= cfg.max_iters:
                return False
            t0 = time.time()  # the step alone: evaluations and checkpoints are not part of dt, MFU or the ETA
            lossf, grad_norm, nonfinite, preempted, batch = self.optimizer_step(batch, preemption)
            dt = time.time() - t0
            self.train_s += dt
            if step_flops is not None:
                self.train_flops += step_flops * self.ranks.world
            if master:
                mean_dt = dt if mean_dt is None or self.iter_num == start_iter + 1 else 0.9 * mean_dt + 0.1 * dt
            if self.iter_num % cfg.log_interval == 0 and master:
                tps = cfg.gradient_accumulation_steps * cfg.batch_size * self.raw_model.config.block_size / dt
                mfu, eta = step_flops / dt / peak, (cfg.max_iters - self.iter_num - 1) * mean_dt
                print(f"iter {self.iter_num}: loss {lossf:.4f}, time {dt * 1000:.2f}ms, tok/s {tps:,.0f}, "
                      f"mfu {mfu * 100:.1f}%, eta {timedelta(seconds=round(eta))}")
                self.log.write({"iter": self.iter_num, "kind": "train", "loss": lossf, "lr": lr,
                                "grad_norm": float(grad_norm), "dt_ms": dt * 1000, "tokens_per_s": tps, "mfu": mfu,
                                "eta_s": eta, "skipped": nonfinite})
            self.iter_num += 1
            if preempted:
                return True

    def preempted(self, signum):
        """Checkpoint and exit 0 after SIGTERM/SIGINT (on any rank)."""
        if self.ranks.master or self.sharded:
            self.save(eval_done=False)
        if self.ranks.master:
            name = signal.Signals(signum).name if signum else "another rank"
            print(f"preempted by {name}: checkpoint of iter {self.iter_num} written to {self.ckpt_path}; "
                  f"continue with --init_from=resume")
        if self.ranks.ddp:
            torch.distributed.barrier()
        marker = os.environ.get("TRAIN_PREEMPTION_MARKER")  # set by launch.py, which then exits 0 instead of 1
        if marker and self.ranks.master:
            Path(marker).touch()


def main(argv):
    preemption = Preemption()
    cfg, model_cfg, explicit, data_dir, meta = read_config(argv)
    device, dtype = runtime.resolve(cfg.device, cfg.dtype)
    ranks, device = setup_distributed(cfg, device)
    if not cfg.eval_only:  # FlexAttention has no backward on CPU
        try:
            attention.check_trainable(model_cfg.attn_impl, device, model_cfg.dropout)
        except ValueError as e:
            fail(e, 2)
    torch.manual_seed(mix_seed(cfg.seed, 0))  # model init: the same on every rank
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    out_dir = Path(cfg.out_dir)
    if ranks.master and out_dir.is_dir():  # the checks below then see a directory no other process writes
        claim_out_dir(cfg, out_dir)
    model, ckpt = build_model(cfg, model_cfg, explicit, meta, data_dir, out_dir / "ckpt.pt")
    model_cfg = model.config
    if meta["vocab_size"] > model_cfg.vocab_size:
        fail(f"the model's vocab_size {model_cfg.vocab_size} is smaller than the dataset's {meta['vocab_size']}", 2)
    try:
        if cfg.parallelism == "fsdp":
            scaling.check_shardable(model)
        if cfg.activation_checkpointing:
            memory.checkpoint_blocks(model)
    except ValueError as e:
        fail(e, 2)
    resolved = {**asdict(cfg), **asdict(model_cfg), "world_size": ranks.world,
                "resolved_dtype": str(dtype).removeprefix("torch."),
                "data_dir": os.path.abspath(data_dir)}  # eval/sample/analysis find it from any directory
    try:
        sharded = cfg.parallelism == "fsdp" and ranks.ddp  # shard_model places the shards itself
        trainer = Trainer(cfg, model if sharded else model.to(device), ckpt, ranks, device, dtype, meta, data_dir,
                          resolved)
    except DataError as e:
        fail(e)
    # a checkpoint written right after an eval need not repeat it on resume (unless evaluating is the point)
    skip_eval_at = trainer.iter_num if ckpt is not None and ckpt.get("eval_done") and not cfg.eval_only else None
    try:
        stopped = trainer.train(preemption, skip_eval_at)
    except (RuntimeError, MemoryError) as e:
        if not runtime.out_of_memory(e):
            raise
        fail(f"out of memory in a training step: batch_size={cfg.batch_size} x block_size={model_cfg.block_size} "
             f"with {trainer.raw_model.num_params(False):,} parameters on {device}; lower batch_size or block_size "
             f"(`python bench.py plan` estimates what fits)")
    if stopped:
        trainer.preempted(preemption.signal)
    if ranks.ddp:
        trainer.log.close()
        scaling.exit_rank()


if __name__ == "__main__":
    main(sys.argv[1:])

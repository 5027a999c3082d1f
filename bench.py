"""
Compare variants at one shared shape, in one run, with repetitions interleaved across entries so that machine noise
hits all of them alike:

    python bench.py                                   # gpt, 6L/6H/384, block 256, batch 12, eager
    python bench.py --variants=all --modes=eager,compile
    python bench.py --variants=gpt,config/bench/my_variant.py --seq_lens=1024,2048,4096 --batch_size=1
    python bench.py --component=attention --seq_lens=1024    # one attention layer only
    python bench.py plan config/llama_7b.py --world_size=8 --gpu_gb=80   # memory per rank, DDP and FSDP (memory.py)
    python bench.py plan --presets                                        # how many GPUs each LLaMA / GPT-2 size needs

An entry is a registered variant name or a config file (python assignments: `variant = "..."` plus that variant's
fields; shape keys in it override the shared shape; its file stem labels it). For every entry and sequence length it
reports parameters; analytic forward FLOPs per token (checked against torch.utils.flop_counter on the dense reference
path); forward and forward+backward time (median, IQR); tokens/s; MFU against a matmul peak measured here and now;
peak memory (CUDA allocator, or process peak RSS on CPU); forward latency p50/p95/p99 at batch 1; the ideal speedup
over the baseline entry (analytic FLOP ratio) next to the measured one (time ratio); and cached vs uncached greedy
generation (speed, and whether both give the same tokens). Writes bench.md, bench.json and, for several lengths,
bench.png to --out_dir, by default bench_out/ in the repository (beside this file, whatever the working directory),
and prints the absolute paths it wrote.
"""
import difflib
import json
import statistics
import sys
import time
import dataclasses
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from infra import configurator, flops, markdown, memory, runtime
import variants
from attention import share_kv_heads


# A benchmark belongs to no run, so there is no run directory to write beside. The default is one fixed, git-ignored
# folder in the repository: unlike the working directory it does not scatter bench_out/ folders wherever bench.py is
# started, and unlike a required --out_dir it keeps the plain `python bench.py` working. From the repository root it
# is ./bench_out/; from anywhere else it is the same folder. Each default run replaces the files of the previous one;
# --out_dir keeps runs apart.
DEFAULT_OUT_DIR = Path(__file__).resolve().parent / "bench_out"


@dataclass
class BenchConfig:
    variants: str = "gpt"  # comma-separated variant names and/or config files, or "all"
    baseline: str = ""  # label of the entry speedups are relative to (default: the first)
    modes: str = "eager"  # comma-separated: eager, compile
    # "model": the whole LM, fwd+bwd of the loss; "attention": the first attention layer with its projections;
    # "kernel": that layer's softmax(q k^T + mask) v alone, what masking can save
    component: str = "model"  # model | attention | kernel (what is timed)
    seq_lens: tuple[int, ...] | int | None = None  # e.g. 1024,2048,4096 (default: block_size)
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    block_size: int = 256
    vocab_size: int = 65
    bias: bool = False
    batch_size: int = 12
    device: str = "auto"
    dtype: str = "auto"  # float32 on CPU, bfloat16 on CUDA
    reps: int = 10  # timed rounds, interleaved across entries
    warmup: int = 2  # untimed training steps per entry first (and compilation)
    latency_reps: int = 20  # batch-1 forward passes for the latency percentiles
    gen_tokens: int = 250  # new tokens for the cached vs uncached generation comparison (0 skips it)
    gen_reps: int = 3  # interleaved cached/uncached generations; the table gives medians
    out_dir: str = str(DEFAULT_OUT_DIR)  # bench_out/ in the repository, whatever the working directory
    seed: int = 0


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device):
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


class PeakMemory:
    """Peak memory inside the block: CUDA allocator peak, or the process's peak RSS on Linux (reset through
    /proc/self/clear_refs so each measurement starts from the current RSS)."""

    def __init__(self, device):
        self.device, self.peak = device, None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                pass
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            status = Path("/proc/self/status")
            lines = status.read_text().splitlines() if status.exists() else []
            self.peak = next((int(l.split()[1]) * 1024 for l in lines if l.startswith("VmHWM:")), None)


def parse_entries(spec):
    """[(label, variant name, {model fields})] from 'gpt,config/bench/x.py,...' or 'all'."""
    if spec == "all":
        return [(name, name, {}) for name in variants.names()]
    entries = []
    for item in filter(None, spec.split(",")):
        if item.endswith(".py"):
            fields = configurator.read_config_file(item)
            if "variant" not in fields:
                raise configurator.ConfigError(f"bench entry {item} sets no variant")
            name = fields.pop("variant")
            entries.append((Path(item).stem, name, fields))
        else:
            entries.append((item, item, {}))
    for label, name, _ in entries:
        variants.get(name)
    if len({label for label, _, _ in entries}) != len(entries):
        raise configurator.ConfigError("bench entries need distinct labels")
    return entries


def build(name, fields, shape, device):
    spec = variants.get(name)
    values = {**shape, **fields}
    unknown = set(values) - set(spec.config_class.__dataclass_fields__)
    if unknown:
        raise configurator.ConfigError(f"variant {name!r} has no config field(s) {', '.join(sorted(unknown))}")
    config = spec.config_class(**values)
    try:
        config.validate()
    except ValueError as e:
        raise configurator.ConfigError(f"{name}: {e}") from None
    torch.manual_seed(0)
    return spec.build(config).to(device)


def summarize(times):
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return {"median": statistics.median(times), "q1": q[0], "q3": q[2]}


def percentiles(times):
    s = sorted(times)
    pick = lambda p: s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]
    return {"p50": pick(50), "p95": pick(95), "p99": pick(99)}


def make_run(label, name, mode, model, cfg, T, device, autocast):
    """Closures timing one entry at one length: forward, forward+backward, batch-1 forward latency."""
    B = cfg.batch_size
    gen = torch.Generator(device="cpu").manual_seed(T)
    leaves = ()  # non-parameter tensors that receive gradients
    if cfg.component == "kernel":  # softmax(q k^T + mask) v alone, on the first layer's real q, k, v and mask
        attn = flops.attention_modules(model)[0]
        x = torch.randn(B, T, model.config.n_embd, generator=gen).to(device)
        with torch.no_grad():
            q, k, v = attn.qkv(x, torch.arange(T, device=device))
            k, v = share_kv_heads(k, q.size(1)), share_kv_heads(v, q.size(1))
        q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
        kernel = torch.compile(attn.kernel) if mode == "compile" else attn.kernel
        flop_count = attn.attention_flops(T) / T  # one kernel call: QK^T and AV
        fwd_only = lambda rows=slice(None): kernel(q[rows], k[rows], v[rows], attn.mask(T, T, 0))
        loss_of = lambda: fwd_only().float().pow(2).mean()
        latency_input, leaves = slice(0, 1), (q, k, v)
    elif cfg.component == "attention":
        attn = flops.attention_modules(model)[0]
        fn = torch.compile(attn) if mode == "compile" else attn
        x = torch.randn(B, T, model.config.n_embd, generator=gen).to(device)
        pos = torch.arange(T, device=device)
        flop_count = flops.layer_flops_per_token(attn, T)
        fwd_only = lambda inp=x: fn(inp, pos)
        loss_of = lambda: fn(x.requires_grad_(), pos).float().pow(2).mean()
        latency_input = x[:1]
    else:
        objective = variants.get(name).objective
        fn = torch.compile(model) if mode == "compile" else model
        x = torch.randint(0, model.config.vocab_size, (B, T), generator=gen).to(device)
        y = torch.randint(0, model.config.vocab_size, (B, T), generator=gen).to(device)
        # a real training batch of the variant (duo interleaving, MLM masking, sentence pairs...), and the FLOPs
        # of exactly that forward pass
        batch = objective.prepare(model.config, x, y, generator=torch.Generator(device=device).manual_seed(T))
        flop_count = flops.count(model, lambda: objective.logits(model, batch), B * T)["total"]
        fwd_only = lambda inp=None: objective.logits(fn, batch) if inp is None else fn(inp)  # latency: plain tokens
        loss_of = lambda: objective.step(fn, batch, model)[1]
        latency_input = x[:1]

    def fwd():
        with torch.no_grad(), autocast:
            fwd_only()  # the training batch, without the backward

    def fwd_bwd():
        with autocast:
            loss = loss_of()
        loss.backward()
        model.zero_grad(set_to_none=True)
        for t in leaves:
            t.grad = None

    def latency():
        with torch.no_grad(), autocast:
            fwd_only(latency_input)

    return {"label": label, "variant": name, "mode": mode, "T": T, "model": model, "flops_per_token": flop_count,
            "fwd": fwd, "fwd_bwd": fwd_bwd, "latency": latency, "t_fwd": [], "t_fwd_bwd": [], "t_latency": []}


def plot(results, seq_lens, baseline, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels = list(dict.fromkeys((r["label"], r["mode"]) for r in results))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, (label, mode) in enumerate(labels):
        rows = [r for r in results if (r["label"], r["mode"]) == (label, mode)]
        name, color, Ts = (label if mode == "eager" else f"{label} ({mode})"), colors[i % len(colors)], [r["T"] for r in rows]
        axes[0].plot(Ts, [r["fwd_bwd_s"]["median"] * 1e3 for r in rows], marker="o", color=color, label=name)
        if label != baseline:
            axes[1].plot(Ts, [r["speedup"]["measured"] for r in rows], marker="o", color=color, label=name)
            axes[1].plot(Ts, [r["speedup"]["ideal"] for r in rows], linestyle="--", color=color, alpha=0.6)
    axes[0].set(xscale="log", yscale="log", xlabel="sequence length T", ylabel="forward+backward ms",
                title="cost vs sequence length")
    axes[1].set(xscale="log", xlabel="sequence length T", ylabel=f"speedup over {baseline}",
                title="measured (solid) vs ideal from FLOPs (dashed)")
    axes[1].axhline(1.0, color="grey", linewidth=0.8)
    for ax in axes:
        ax.set_xticks(seq_lens, [str(t) for t in seq_lens])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "bench.png", dpi=120)


def read_config(argv):
    """(config, entries, modes, seq_lens, baseline label, device, dtype, shared shape, {label: model}), all checked."""
    try:
        cfg, _, _ = configurator.resolve(argv, BenchConfig)
        entries = parse_entries(cfg.variants)
        modes = cfg.modes.split(",")
        if not entries or any(m not in ("eager", "compile") for m in modes):
            raise configurator.ConfigError(f"modes must be a comma list of eager, compile; got {cfg.modes!r}")
        if cfg.component not in ("model", "attention", "kernel"):
            raise configurator.ConfigError(f"component must be model, attention or kernel, got {cfg.component!r}")
        seq_lens = [cfg.block_size] if cfg.seq_lens is None else sorted(
            [cfg.seq_lens] if isinstance(cfg.seq_lens, int) else cfg.seq_lens)
        if cfg.reps < 2 or cfg.latency_reps < 1 or cfg.gen_reps < 1 or min(seq_lens) < 2:
            raise configurator.ConfigError("reps must be >= 2, latency_reps and gen_reps >= 1, every seq_len >= 2")
        if cfg.warmup < 0 or cfg.gen_tokens < 0:
            raise configurator.ConfigError(f"warmup and gen_tokens must be >= 0, got {cfg.warmup} and {cfg.gen_tokens}")
        if min(cfg.batch_size, cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.vocab_size) < 1:
            raise configurator.ConfigError("batch_size, n_layer, n_head, n_embd and vocab_size must be >= 1")
        baseline = cfg.baseline or entries[0][0]
        if baseline not in [label for label, _, _ in entries]:
            raise configurator.ConfigError(f"baseline {baseline!r} is not one of the entries")
        device, dtype = runtime.resolve(cfg.device, cfg.dtype)
        runtime.check_output_dir(cfg.out_dir)  # before the benchmark, not after it
        shape = dict(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, block_size=max(seq_lens),
                     vocab_size=cfg.vocab_size, bias=cfg.bias, dropout=0.0)
        models = {label: build(name, fields, shape, device) for label, name, fields in entries}
    except (configurator.ConfigError, ValueError) as e:
        runtime.fail(e, 1 if isinstance(e, runtime.Unavailable) else 2)
    return cfg, entries, modes, seq_lens, baseline, device, dtype, shape, models


def time_generation(models, entries, cfg, device, autocast):
    """Cached vs uncached greedy generation of every causal entry, timed after a warm-up, interleaved reps."""
    gen = {}
    for label, name, _ in entries:
        model = models[label]
        if not variants.get(name).objective.causal:
            continue
        n = min(cfg.gen_tokens, model.config.block_size - 1)
        prompt = torch.zeros(1, 1, dtype=torch.long, device=device)
        model.eval()
        outs, secs = {}, {True: [], False: []}
        with autocast:
            for use_cache in (True, False):  # warm up both paths (allocator, caches) on a short run
                model.generate(prompt, min(n, 8), temperature=0, use_cache=use_cache)
            for _ in range(cfg.gen_reps):  # interleaved, as the timings below
                for use_cache in (True, False):
                    t = time.perf_counter()
                    outs[use_cache] = model.generate(prompt, n, temperature=0, use_cache=use_cache)
                    sync(device)
                    secs[use_cache].append(time.perf_counter() - t)
        model.train()
        cached, uncached = statistics.median(secs[True]), statistics.median(secs[False])
        gen[label] = {"new_tokens": n, "reps": cfg.gen_reps, "cached_s": cached, "uncached_s": uncached,
                      "speedup": uncached / cached, "identical": bool(torch.equal(outs[True], outs[False]))}
    return gen


def time_length(T, entries, modes, models, cfg, device, dtype, autocast, baseline, peaks):
    """Result rows of every entry and mode at sequence length T, timed interleaved; appends peak readings."""
    runs = [make_run(label, name, mode, models[label], cfg, T, device, autocast)
            for label, name, _ in entries for mode in modes]
    for run in runs:  # warm up (and compile), recording peak memory of the training step
        with PeakMemory(device) as mem:
            for _ in range(cfg.warmup):
                run["fwd_bwd"]()
        run["fwd"]()
        run["latency"]()
        run["peak_memory_bytes"] = mem.peak
    for _ in range(cfg.reps):  # interleaved: every entry sees the same stretch of machine noise
        peaks.append(flops.peak_flops(device, dtype))
        for run in runs:
            run["t_fwd"].append(timed(run["fwd"], device))
            run["t_fwd_bwd"].append(timed(run["fwd_bwd"], device))
    for _ in range(cfg.latency_reps):
        for run in runs:
            run["t_latency"].append(timed(run["latency"], device))
    base = {r["mode"]: r for r in runs if r["label"] == baseline}
    results = []
    for run in runs:
        fb = summarize(run["t_fwd_bwd"])
        ref = base[run["mode"]]
        results.append({
            "label": run["label"], "variant": run["variant"], "mode": run["mode"], "T": T,
            "params": run["model"].num_params(), "flops_per_token": run["flops_per_token"],
            "fwd_s": summarize(run["t_fwd"]), "fwd_bwd_s": fb, "latency_s": percentiles(run["t_latency"]),
            "tokens_per_s": cfg.batch_size * T / fb["median"], "peak_memory_bytes": run["peak_memory_bytes"],
            "speedup": {"ideal": ref["flops_per_token"] / run["flops_per_token"],
                        "measured": statistics.median(ref["t_fwd_bwd"]) / fb["median"]}})
        print(f"T={T} {run['label']} ({run['mode']}): fwd+bwd {fb['median'] * 1e3:.1f} ms")
    return results


def flop_counter_checks(entries, shape, T, device):
    """FlopCounterMode against the analytic count for every entry, on a dense-path twin of its model (batch 1)."""
    checks = {}
    for label, name, fields in entries:
        model = build(name, {**fields, "attn_impl": "dense"}, shape, device)
        idx = torch.randint(0, model.config.vocab_size, (1, T), device=device)
        counted, analytic = flops.counter_check(model, lambda: model(idx), T)
        checks[label] = {"T": T, "counted": counted, "analytic": analytic}
    return checks


def markdown_table(results, flop_checks, gen, baseline, cfg):
    head = ["entry", "mode", "T", "params", "GFLOP/token fwd", "fwd ms", "fwd+bwd ms (IQR)", "tokens/s", "MFU",
            "latency p50/p95/p99 ms (batch 1)", "peak mem MB", f"speedup vs {baseline}: ideal / measured"]
    rows = []
    for r in results:
        fb, lat = r["fwd_bwd_s"], r["latency_s"]
        rows.append([r["label"], r["mode"], r["T"], f"{r['params'] / 1e6:.2f}M", f"{r['flops_per_token'] / 1e9:.4f}",
                     f"{r['fwd_s']['median'] * 1e3:.1f}",
                     f"{fb['median'] * 1e3:.1f} ({fb['q1'] * 1e3:.1f}-{fb['q3'] * 1e3:.1f})",
                     f"{r['tokens_per_s']:,.0f}", f"{r['mfu'] * 100:.1f}%",
                     f"{lat['p50'] * 1e3:.1f} / {lat['p95'] * 1e3:.1f} / {lat['p99'] * 1e3:.1f}",
                     f"{(r['peak_memory_bytes'] or 0) / 2**20:.0f}",
                     f"{r['speedup']['ideal']:.2f}x / {r['speedup']['measured']:.2f}x"])
    T = next(iter(flop_checks.values()))["T"]
    parts = [markdown.table(head, rows), "", markdown.table(
        ["entry", f"FlopCounterMode / analytic FLOPs (dense reference path, T={T})"],
        [[label, f"{c['counted'] / c['analytic']:.4f}"] for label, c in flop_checks.items()])]
    if gen:
        parts += ["", markdown.table(
            ["entry", "greedy generation (batch 1)", "cached s", f"uncached s (medians of {cfg.gen_reps})", "speedup",
             "same tokens"],
            [[label, f"{g['new_tokens']} new tokens", f"{g['cached_s']:.3f}", f"{g['uncached_s']:.3f}",
              f"{g['speedup']:.1f}x", "yes" if g["identical"] else "NO"] for label, g in gen.items()])]
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------------------------
# the memory planner's command line: python bench.py plan (nothing is run, so it has its own keys)

GiB = memory.GiB
PRESETS_DIR = Path(__file__).resolve().parent / "config"
# GPT-2 shapes (Radford et al. 2019, table 2) at the project's padded vocabulary (50257 -> 50304, as train.py builds)
GPT2_SIZES = {"gpt2 (124M)": (12, 12, 768), "gpt2-medium (350M)": (24, 16, 1024),
              "gpt2-large (774M)": (36, 20, 1280), "gpt2-xl (1558M)": (48, 25, 1600)}

@dataclass
class PlanConfig:
    variant: str = "gpt"  # a registered variant with an activation formula (gpt, llama); config files set it
    world_size: int = 8  # ranks (GPUs) the model is trained on
    gpu_gb: float = 80.0  # memory of one GPU in GiB (an "80 GB" card has 80 GiB = 81920 MiB)
    parallelism: str = ""  # ddp | fsdp; "" shows both
    activation_checkpointing: bool | None = None  # None shows both
    batch_size: int = 1  # micro-batch per rank (sequences), as train.py's batch_size
    dtype: str = "bfloat16"  # float32 | bfloat16 | float16 (train.py's auto on CUDA is bfloat16)
    presets: bool = False  # the fewest GPUs for FSDP of every LLaMA preset and GPT-2 size (batch 1, checkpointing)


def gib(n):
    return f"{n / GiB:.2f}"


def plan_table(rows):
    head = ["parallelism", "checkpointing", "params GiB", "grads GiB", "optim GiB", "act/seq GiB",
            "total GiB", "max micro-batch"]
    cells = [[r.parallelism, "on" if r.activation_checkpointing else "off", gib(r.params), gib(r.grads),
              gib(r.optim), gib(r.per_sequence), gib(r.total), str(r.max_micro_batch)] for r in rows]
    return markdown.table(head, cells, labels=2)


def preset_configs():
    """[(label, variant, model config)] of config/llama_*.py and the GPT-2 sizes."""
    out = []
    for path in sorted(PRESETS_DIR.glob("llama_*.py"), key=lambda q: int(q.stem.split("_")[1].rstrip("b"))):
        values = configurator.read_config_file(path)
        spec = variants.get(values["variant"])
        out.append((path.stem, spec.name, configurator.build(spec.config_class, values)))
    for label, (n_layer, n_head, n_embd) in GPT2_SIZES.items():
        out.append((label, "gpt", variants.get("gpt").config_class(
            n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=1024, vocab_size=50304, dropout=0.0)))
    return out


def presets_table(cfg):
    gpu = int(cfg.gpu_gb * GiB)
    cells = []
    for label, variant, config in preset_configs():
        world = memory.min_world_size(config, variant, gpu, micro_batch=1, dtype=cfg.dtype, activation_checkpointing=True)
        at = memory.plan(config, variant, world or 1, gpu, micro_batch=1, dtype=cfg.dtype, parallelism="fsdp",
                  activation_checkpointing=True)
        ddp = memory.plan(config, variant, 1, gpu, micro_batch=1, dtype=cfg.dtype, parallelism="ddp",
                   activation_checkpointing=True)
        cells.append([label, f"{at.n_params / 1e9:.2f}B", str(config.block_size), str(world or "none"),
                      gib(at.total), str(at.max_micro_batch), "yes" if ddp.max_micro_batch else "no"])
    head = ["preset", "params", "block", f"min {cfg.gpu_gb:g} GiB GPUs (FSDP)", "per-rank GiB (batch 1)",
            "max micro-batch there", "fits one GPU (DDP)"]
    return markdown.table(head, cells, labels=1)


def read_plan_args(argv):
    """(PlanConfig, model config or None), checked. Config files are train.py recipes: keys that are neither the
    planner's nor the model's (learning rates...) are ignored there, but a --key=value must be one or the other.
    The documented flag forms --config=FILE, --activation_checkpointing and --presets are accepted."""
    flags = {"--activation_checkpointing": "--activation_checkpointing=True", "--presets": "--presets=True"}
    argv = [a.partition("=")[2] if a.startswith("--config=") else flags.get(a, a) for a in argv]
    model_configs = lambda name: variants.get(name).config_class
    if any(a in configurator.HELP_FLAGS for a in argv):
        configurator.resolve(argv, PlanConfig, model_configs)  # prints the keys, exits 0
    files, overrides = {}, {}
    for arg in argv:
        (overrides if arg.startswith("--") else files).update(configurator.parse_args([arg]))
    values = {**files, **overrides}
    cfg = configurator.build(PlanConfig, values)
    config_class = model_configs(cfg.variant)
    known = {f.name for f in dataclasses.fields(PlanConfig)} | {f.name for f in dataclasses.fields(config_class)}
    unknown = [k for k in overrides if k not in known]
    if unknown:
        close = difflib.get_close_matches(unknown[0], known, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise configurator.ConfigError(f"unknown key {unknown[0]!r} for variant {cfg.variant!r}{hint}")
    checks = [(cfg.world_size >= 1, f"world_size must be >= 1, got {cfg.world_size}"),
              (cfg.gpu_gb > 0, f"gpu_gb must be > 0, got {cfg.gpu_gb}"),
              (cfg.batch_size >= 1, f"batch_size must be >= 1, got {cfg.batch_size}"),
              (cfg.parallelism in ("", "ddp", "fsdp"), f"parallelism must be ddp or fsdp, got {cfg.parallelism!r}"),
              (cfg.dtype in ("float32", "bfloat16", "float16"),
               f"dtype must be float32, bfloat16 or float16, got {cfg.dtype!r}")]
    for ok, message in checks:
        if not ok:
            raise configurator.ConfigError(message)
    if cfg.presets:
        return cfg, None
    if not files and not any(k in overrides for k in ("n_layer", "n_embd")):
        raise configurator.ConfigError("give a config file (e.g. config/llama_7b.py) or the shape as --n_layer=... "
                                       "--n_head=... --n_embd=..., or --presets")
    model_config = configurator.build(config_class, values)
    try:
        model_config.validate()
        memory.layer_bytes_per_token(model_config, cfg.variant, memory.FP32)
    except ValueError as e:
        raise configurator.ConfigError(str(e)) from None
    return cfg, model_config


def plan_main(argv):
    try:
        cfg, model_config = read_plan_args(argv)
    except (configurator.ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if cfg.presets:
        print(f"FSDP, {cfg.dtype}, micro-batch 1, activation checkpointing, {cfg.gpu_gb:g} GiB per GPU:")
        print(presets_table(cfg))
        return
    gpu = int(cfg.gpu_gb * GiB)
    rows = [memory.plan(model_config, cfg.variant, cfg.world_size, gpu, cfg.batch_size, None, cfg.dtype, par, ac)
            for par in ([cfg.parallelism] if cfg.parallelism else ["ddp", "fsdp"])
            for ac in ([cfg.activation_checkpointing] if cfg.activation_checkpointing is not None else [False, True])]
    r = rows[0]
    print(f"{cfg.variant}: {r.n_params / 1e9:.3f}B parameters, block {r.block_size}, {cfg.dtype}, world "
          f"{cfg.world_size}, {cfg.gpu_gb:g} GiB per GPU; per-rank bytes, total at micro-batch {cfg.batch_size}:")
    print(plan_table(rows))


def main(argv):
    if argv[:1] == ["plan"]:  # the memory planner: nothing is run, so it has its own keys
        return plan_main(argv[1:])
    cfg, entries, modes, seq_lens, baseline, device, dtype, shape, models = read_config(argv)
    autocast = runtime.autocast(device, dtype)
    # the machine's speed drifts (clocks, neighbours): the peak is read again in every timing round, and MFU divides
    # by the median of all readings, so numerator and denominator see the same stretch of machine
    peaks = [flops.peak_flops(device, dtype)]
    print(f"device {device}, {dtype}, {torch.get_num_threads()} threads; measured matmul peak "
          f"{peaks[0] / 1e9:.1f} GFLOP/s; shape {shape}, batch {cfg.batch_size}, component {cfg.component}")
    # generation first, on the fresh eager models, before any compilation runs in this process
    gen = time_generation(models, entries, cfg, device, autocast) if cfg.gen_tokens and cfg.component == "model" else {}
    results = [r for T in seq_lens
               for r in time_length(T, entries, modes, models, cfg, device, dtype, autocast, baseline, peaks)]
    peaks.append(flops.peak_flops(device, dtype))
    peak = statistics.median(peaks)
    for r in results:
        r["mfu"] = 3 * r["flops_per_token"] * cfg.batch_size * r["T"] / r["fwd_bwd_s"]["median"] / peak
    flop_checks = flop_counter_checks(entries, shape, min(seq_lens), device)
    table = markdown_table(results, flop_checks, gen, baseline, cfg)
    print(table)
    out = Path(cfg.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    report = {"command": "python bench.py " + " ".join(argv), "config": asdict(cfg), "device": str(device),
              "dtype": str(dtype), "threads": torch.get_num_threads(), "torch": torch.__version__,
              "peak_flops": peak, "peak_flops_readings": peaks, "results": results, "flop_counter_check": flop_checks,
              "generation": gen}
    (out / "bench.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "bench.md").write_text(
        f"`python bench.py {' '.join(argv)}` on {device} ({dtype}, {torch.get_num_threads()} threads), measured "
        f"matmul peak {peak / 1e9:.1f} GFLOP/s (median of {len(peaks)} readings taken between the timing rounds, range "
        f"{min(peaks) / 1e9:.0f}-{max(peaks) / 1e9:.0f}). "
        f"MFU = 3 x analytic forward FLOPs / fwd+bwd time / peak.\n\n"
        + table + "\n")
    if len(seq_lens) > 1:
        plot(results, seq_lens, baseline, out)
    print(f"wrote {out / 'bench.md'}, {out / 'bench.json'}" + (f", {out / 'bench.png'}" if len(seq_lens) > 1 else ""))


if __name__ == "__main__":
    main(sys.argv[1:])

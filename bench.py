"""
Compare variants at one shared shape, in one run, with repetitions interleaved across variants and modes so that
machine noise hits all of them alike:

    python bench.py                                    # gpt, 6L/6H/384, block 256, batch 12, eager
    python bench.py --variants=all --modes=eager,compile
    python bench.py --device=cuda --n_layer=12 --n_head=12 --n_embd=768 --block_size=1024 --vocab_size=50304

Reports parameters; analytic forward FLOPs per token (checked against torch.utils.flop_counter); forward and
forward+backward time (median and interquartile range); tokens/s; MFU against a matmul peak measured here and now;
peak memory (CUDA allocator, or process peak RSS on CPU); and cached vs uncached greedy generation speed (with a
check that both produce the same tokens). Writes a Markdown table and a JSON file to --out_dir.
"""
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

import configurator
from model import ATTENTION_KERNELS, VARIANTS, CausalSelfAttention, get_variant


@dataclass
class BenchConfig:
    variants: str = "gpt"  # comma-separated names, or "all"
    modes: str = "eager"  # comma-separated: eager, compile
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    block_size: int = 256
    vocab_size: int = 65
    bias: bool = False
    batch_size: int = 12
    device: str = "auto"
    dtype: str = "auto"  # float32 on CPU, bfloat16 on CUDA
    reps: int = 10
    warmup: int = 3
    gen_tokens: int = 250  # new tokens for the cached vs uncached generation comparison (0 skips it)
    out_dir: str = "bench_out"
    seed: int = 0


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure_peak_flops(device, dtype, n=None, reps=10):
    """FLOP/s of a large square matmul on this device and dtype: the denominator of MFU."""
    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    times = []
    for i in range(reps + 3):
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        if i >= 3:
            times.append(time.perf_counter() - t)
    return 2 * n ** 3 / statistics.median(times)


class PeakMemory:
    """Peak memory of what runs inside the block: CUDA allocator peak, or the process's peak RSS on Linux
    (reset through /proc/self/clear_refs, so each measurement starts from the current RSS)."""

    def __init__(self, device):
        self.device = device

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
            self.peak = None
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    self.peak = int(line.split()[1]) * 1024


def counted_flops(model, idx):
    """Forward FLOPs torch's FlopCounterMode sees, on the fast path and on the dense reference path."""
    attns = [m for m in model.modules() if isinstance(m, CausalSelfAttention)]
    out = {}
    for impl in ("sdpa", "dense"):
        for m in attns:
            m.kernel = ATTENTION_KERNELS[impl]
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(idx)
        out[impl] = counter.get_total_flops()
    for m in attns:
        m.kernel = ATTENTION_KERNELS[model.config.attn_impl]
    return out


def dense_attention_flops(model, T):
    """FLOPs the dense reference spends on QK^T and AV for one length-T sequence (all T*T pairs, mask or not)."""
    return sum(4 * m.head_dim * m.n_head * T * T for m in model.modules() if isinstance(m, CausalSelfAttention))


def time_call(fn, device):
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def summarize(times):
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return {"median": statistics.median(times), "q1": q[0], "q3": q[2]}


def main(argv):
    try:
        cfg, _, _ = configurator.resolve(argv, BenchConfig, model=False)
        names = sorted(VARIANTS) if cfg.variants == "all" else [v for v in cfg.variants.split(",") if v]
        for name in names:
            get_variant(name)
        modes = cfg.modes.split(",")
        if not names or any(m not in ("eager", "compile") for m in modes):
            raise configurator.ConfigError(f"modes must be a comma list of eager, compile; got {cfg.modes!r}")
        if cfg.reps < 2:
            raise configurator.ConfigError("reps must be >= 2")
    except (configurator.ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    device = torch.device(cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, cfg.dtype if cfg.dtype != "auto" else ("bfloat16" if device.type == "cuda" else "float32"))
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    torch.manual_seed(cfg.seed)
    B, T = cfg.batch_size, cfg.block_size
    shape = dict(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, block_size=T, vocab_size=cfg.vocab_size,
                 bias=cfg.bias, dropout=0.0)
    peak = measure_peak_flops(device, dtype)
    print(f"device {device}, {dtype}, {torch.get_num_threads()} threads; measured matmul peak "
          f"{peak / 1e9:.1f} GFLOP/s; shape {shape}, batch {B}")

    # ---- build every (variant, mode) once
    runs = []
    x = torch.randint(0, cfg.vocab_size, (B, T), device=device)
    y = torch.randint(0, cfg.vocab_size, (B, T), device=device)
    for name in names:
        cls = get_variant(name)
        model = cls(cls.config_class(**shape)).to(device)
        flops = model.flops_per_token(T)
        counted = counted_flops(model, x[:1])
        row = {"variant": name, "params": model.num_params(), "flops_per_token": flops,
               "flop_counter": {"fast_path": counted["sdpa"] / T, "dense_path": counted["dense"] / T,
                                "dense_path_analytic": flops["matmul"] + dense_attention_flops(model, T) / T}}
        for mode in modes:
            fn = torch.compile(model) if mode == "compile" else model

            def fwd(fn=fn, model=model):
                with torch.no_grad(), autocast:
                    fn(x)

            def fwd_bwd(fn=fn, model=model):
                with autocast:
                    _, loss = fn(x, y)
                loss.backward()
                model.zero_grad(set_to_none=True)

            runs.append({**row, "mode": mode, "model": model, "fwd": fwd, "fwd_bwd": fwd_bwd,
                         "t_fwd": [], "t_fwd_bwd": []})

    # ---- warm up (compiles), then interleave repetitions
    for run in runs:
        with PeakMemory(device) as mem:
            for _ in range(cfg.warmup):
                run["fwd_bwd"]()
                run["fwd"]()
        run["peak_memory_bytes"] = mem.peak
    for _ in range(cfg.reps):
        for run in runs:
            run["t_fwd"].append(time_call(run["fwd"], device))
            run["t_fwd_bwd"].append(time_call(run["fwd_bwd"], device))

    # ---- generation: cached vs uncached greedy decoding of gen_tokens from a one-token prompt
    gen = {}
    if cfg.gen_tokens:
        n = min(cfg.gen_tokens, T - 1)
        prompt = x[:1, :1]
        for run in runs:
            if run["mode"] != "eager" or not run["model"].is_causal:
                continue
            model = run["model"].eval()
            with autocast:
                outs, times = {}, {}
                for use_cache in (True, False):
                    t = time.perf_counter()
                    outs[use_cache] = model.generate(prompt, n, temperature=0, use_cache=use_cache)
                    sync(device)
                    times[use_cache] = time.perf_counter() - t
            model.train()
            gen[run["variant"]] = {"new_tokens": n, "cached_s": times[True], "uncached_s": times[False],
                                   "speedup": times[False] / times[True],
                                   "identical": bool(torch.equal(outs[True], outs[False]))}

    # ---- report
    results = []
    for run in runs:
        f = run["flops_per_token"]
        fb, fw = summarize(run["t_fwd_bwd"]), summarize(run["t_fwd"])
        results.append({k: run[k] for k in ("variant", "mode", "params", "flops_per_token", "flop_counter",
                                            "peak_memory_bytes")} | {
            "fwd_s": fw, "fwd_bwd_s": fb, "tokens_per_s": B * T / fb["median"],
            "mfu": 3 * f["total"] * B * T / fb["median"] / peak, "generation": gen.get(run["variant"])})
    lines = ["| variant | mode | params | GFLOP/token fwd (attn) | counter/analytic | fwd ms | fwd+bwd ms (IQR) "
             "| tokens/s | MFU | peak mem MB | cached gen speedup |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        f, c, g = r["flops_per_token"], r["flop_counter"], r["generation"]
        fb = r["fwd_bwd_s"]
        gen_cell = f"{g['speedup']:.1f}x ({'same tokens' if g['identical'] else 'DIFFERENT tokens'})" if g else "-"
        lines.append(
            f"| {r['variant']} | {r['mode']} | {r['params'] / 1e6:.2f}M | {f['total'] / 1e9:.4f} "
            f"({f['attention'] / 1e9:.4f}) | {c['dense_path'] / c['dense_path_analytic']:.4f} "
            f"| {r['fwd_s']['median'] * 1e3:.1f} | {fb['median'] * 1e3:.1f} ({fb['q1'] * 1e3:.1f}-{fb['q3'] * 1e3:.1f}) "
            f"| {r['tokens_per_s']:,.0f} | {r['mfu'] * 100:.1f}% "
            f"| {(r['peak_memory_bytes'] or 0) / 2**20:.0f} | {gen_cell} |")
    table = "\n".join(lines)
    print(table)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = {"config": asdict(cfg), "device": str(device), "dtype": str(dtype), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "peak_flops": peak, "results": results}
    (out / "bench.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "bench.md").write_text(
        f"`python bench.py {' '.join(argv)}` on {device} ({dtype}, {torch.get_num_threads()} threads), measured "
        f"matmul peak {peak / 1e9:.1f} GFLOP/s. MFU = 3 x analytic forward FLOPs / fwd+bwd time / peak.\n\n"
        + table + "\n")
    print(f"wrote {out / 'bench.json'} and {out / 'bench.md'}")


if __name__ == "__main__":
    main(sys.argv[1:])

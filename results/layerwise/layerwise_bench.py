"""
Forward+backward cost per layer-wise schedule at long sequence lengths, for budgets where bench.py is too costly.

    OMP_NUM_THREADS=1 python results/layerwise/layerwise_bench.py --seq_lens=4096,2048,1024 --reps=2 \
        --variants=config/bench/layerwise_full.py,config/bench/layerwise_half.py,config/bench/layerwise_quarter.py,config/bench/layerwise_aggressive.py \
        --n_layer=12 --n_head=12 --n_embd=768 --vocab_size=50304 --bias=True --batch_size=1

Same entries, shape keys, timing helpers, speedup definitions and plot as bench.py (it imports them), but per
(entry, T) it runs only cfg.warmup + reps forward+backward passes (bench.py also times forward, batch-1 latency
and generation at every length, about 2x the work: at 12L/768 and T=4096 one forward+backward is ~4 TFLOP, over a
minute on one CPU thread). Lengths run in the order given, repetitions interleaved across entries; results are
written after every length, so a run cut short keeps what it measured. Peak memory is the process peak RSS during
each entry's first pass (CPU) or the CUDA allocator peak.
"""
import json
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import bench  # noqa: E402
from infra import configurator  # noqa: E402
from infra import markdown  # noqa: E402
from infra import flops  # noqa: E402
from infra import runtime  # noqa: E402


def main(argv):
    try:
        cfg, _, _ = configurator.resolve(argv, bench.BenchConfig)
        entries = bench.parse_entries(cfg.variants)
        seq_lens = [cfg.seq_lens] if isinstance(cfg.seq_lens, int) else list(cfg.seq_lens or [cfg.block_size])
        baseline = cfg.baseline or entries[0][0]
        if cfg.reps < 1 or baseline not in [label for label, _, _ in entries]:
            raise configurator.ConfigError("reps must be >= 1 and baseline one of the entries")
        device, dtype = runtime.resolve(cfg.device, cfg.dtype)
        shape = dict(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, block_size=max(seq_lens),
                     vocab_size=cfg.vocab_size, bias=cfg.bias, dropout=0.0)
        models = {label: bench.build(name, fields, shape, device) for label, name, fields in entries}
    except (configurator.ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    autocast = runtime.autocast(device, dtype)
    peak = flops.peak_flops(device, dtype)
    command = "python results/layerwise/layerwise_bench.py " + " ".join(argv)
    print(f"{command}\ndevice {device}, {dtype}, {torch.get_num_threads()} threads; matmul peak {peak / 1e9:.1f} "
          f"GFLOP/s; shape {shape}, batch {cfg.batch_size}", flush=True)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for T in seq_lens:
        runs = [bench.make_run(label, name, "eager", models[label], cfg, T, device, autocast)
                for label, name, _ in entries]
        for run in runs:
            for _ in range(cfg.warmup):
                run["fwd_bwd"]()
        for rep in range(cfg.reps):
            for run in runs:
                if rep == 0:
                    with bench.PeakMemory(device) as mem:
                        run["t_fwd_bwd"].append(bench.timed(run["fwd_bwd"], device))
                    run["peak_memory_bytes"] = mem.peak
                else:
                    run["t_fwd_bwd"].append(bench.timed(run["fwd_bwd"], device))
                print(f"  T={T} rep {rep} {run['label']}: {run['t_fwd_bwd'][-1]:.2f} s "
                      f"({time.strftime('%H:%M:%S')})", flush=True)
        ref = next(r for r in runs if r["label"] == baseline)
        for run in runs:
            fb = bench.summarize(run["t_fwd_bwd"])
            results.append({
                "label": run["label"], "variant": run["variant"], "mode": "eager", "T": T,
                "params": run["model"].num_params(), "flops_per_token": run["flops_per_token"],
                "flops_per_token_parts": flops.flops_per_token(run["model"], T), "fwd_bwd_s": fb,
                "t_fwd_bwd": run["t_fwd_bwd"], "tokens_per_s": cfg.batch_size * T / fb["median"],
                "mfu": 3 * run["flops_per_token"] * cfg.batch_size * T / fb["median"] / peak,
                "peak_memory_bytes": run["peak_memory_bytes"],
                "speedup": {"ideal": ref["flops_per_token"] / run["flops_per_token"],
                            "measured": statistics.median(ref["t_fwd_bwd"]) / fb["median"]}})
        write(out, command, cfg, device, dtype, peak, baseline, results)
    done = sorted({r["T"] for r in results})
    if len(done) > 1:
        bench.plot(sorted(results, key=lambda r: (r["label"], r["T"])), done, baseline, out)
    print(f"wrote {out / 'bench.md'}, {out / 'bench.json'}" + (f", {out / 'bench.png'}" if len(done) > 1 else ""))


def write(out, command, cfg, device, dtype, peak, baseline, results):
    head = ["entry", "T", "GFLOP/token fwd (attention)", "fwd+bwd s (each rep)", "tokens/s", "MFU", "peak RSS MB",
            f"speedup vs {baseline}: ideal / measured", "measured / ideal", "saving achieved"]
    rows = []
    for r in sorted(results, key=lambda r: (r["T"], r["label"])):
        parts, s = r["flops_per_token_parts"], r["speedup"]
        # saving achieved: the measured time saving as a share of the saving the FLOP count promises
        gain = "-" if s["ideal"] == 1 else f"{(1 - 1 / s['measured']) / (1 - 1 / s['ideal']) * 100:.0f}%"
        rows.append([r["label"], r["T"], f"{parts['total'] / 1e9:.4f} ({parts['attention'] / 1e9:.4f})",
                     f"{r['fwd_bwd_s']['median']:.2f} ({', '.join(f'{t:.2f}' for t in r['t_fwd_bwd'])})",
                     f"{r['tokens_per_s']:,.0f}", f"{r['mfu'] * 100:.1f}%",
                     f"{(r['peak_memory_bytes'] or 0) / 2**20:.0f}", f"{s['ideal']:.3f}x / {s['measured']:.3f}x",
                     f"{s['measured'] / s['ideal'] * 100:.0f}%", gain])
    table = markdown.table(head, rows)
    (out / "bench.json").write_text(json.dumps(
        {"command": command, "config": asdict(cfg), "device": str(device), "dtype": str(dtype),
         "threads": torch.get_num_threads(), "torch": torch.__version__, "peak_flops": peak, "results": results},
        indent=1) + "\n")
    (out / "bench.md").write_text(f"`{command}` on {device} ({dtype}, {torch.get_num_threads()} threads), matmul "
                                  f"peak {peak / 1e9:.1f} GFLOP/s.\n\n{table}\n")
    print(table, flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])

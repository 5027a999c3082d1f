"""Helper of results/gpu_check/run.sh: each subcommand appends one or more rows (JSON lines) to a rows file, and `table`
prints them as one markdown table.

    python results/gpu_check/gpu_check.py env ROWS
    python results/gpu_check/gpu_check.py tests ROWS LOG RC WALL
    python results/gpu_check/gpu_check.py shakespeare ROWS RUN_DIR RC WALL [--plumbing]
    python results/gpu_check/gpu_check.py bench ROWS BENCH_JSON RC WALL [--plumbing]
    python results/gpu_check/gpu_check.py flex ROWS [--T 4096 --batch 8 --reps 20]   (times FlexAttention vs causal SDPA)
    python results/gpu_check/gpu_check.py table ROWS
"""
import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from infra import markdown  # noqa: E402

NANOGPT_SHAKESPEARE = 1.4697  # nanoGPT README: best val loss of the GPU recipe, ~3 min on one A100
NANOGPT_GPT2_MS = 135.0  # nanoGPT README: GPT-2 small, batch 12 x 1024, compiled, per iteration on an A100
SHAKESPEARE_TOLERANCE = 0.02
FLEX_FRACTION_OF_IDEAL = 0.8  # the spans' target: measured speedup >= 80 % of the ideal
SCHEDULES = ("half", "quarter", "aggressive")  # docs/layerwise.md §1 at 12 layers ("full" is causal everywhere)
SPANS = (128, 512)


def add(rows, **row):
    with open(rows, "a") as f:
        f.write(json.dumps(row) + "\n")


def status_of(rc):
    return {0: "ok", 124: "TIMEOUT", 137: "TIMEOUT"}.get(int(rc), f"FAILED (exit {rc})")


def cmd_env(a):
    import torch
    if torch.cuda.is_available():
        device = f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    else:
        device = f"CPU only, {torch.get_num_threads()} threads: the CUDA steps are skipped"
    add(a.rows, check="machine", measured=f"{device}; torch {torch.__version__}", reference="", wall="", status="")


def cmd_tests(a):
    text = Path(a.log).read_text(errors="replace") if Path(a.log).exists() else ""
    counts = dict((word, int(n)) for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?)", text))
    if not counts:  # killed before its summary: count the verbose per-test lines
        for word in ("PASSED", "FAILED", "SKIPPED", "ERROR"):
            n = len(re.findall(rf"::\S+ {word}", text))
            if n:
                counts[word.lower()] = n
    summary = ", ".join(f"{n} {w}" for w, n in counts.items()) or "nothing ran"
    status = status_of(a.rc)
    if int(a.rc) == 0 and counts.get("skipped") and not counts.get("passed"):
        status = "skipped: needs CUDA"
    add(a.rows, check="CUDA-marked tests (pytest -m cuda)", measured=summary, reference="all pass",
        wall=f"{float(a.wall):.0f} s", status=status)


def cmd_shakespeare(a):
    label = ("Shakespeare char, nanoGPT GPU recipe (6L/6H/384, block 256, batch 64, dropout 0.2, lr 1e-3, 5000 it, "
             "compiled)") + (": CPU plumbing run (tiny)" if a.plumbing else "")
    metrics = Path(a.run_dir) / "metrics.jsonl"
    evals = []
    if metrics.exists():
        evals = [r for r in map(json.loads, metrics.read_text().splitlines()) if r.get("kind") == "eval"]
    if not evals:
        add(a.rows, check=label, measured="no evaluation written", reference=f"{NANOGPT_SHAKESPEARE}",
            wall=f"{float(a.wall):.0f} s", status=status_of(a.rc) if int(a.rc) else "FAILED (no eval)")
        return
    best = min(r["val/loss"] for r in evals)
    measured = f"best val loss {best:.4f} (iter {evals[-1]['iter']})"
    if a.plumbing:
        add(a.rows, check=label, measured=measured, reference="(not comparable)",
            wall=f"{float(a.wall):.0f} s", status="plumbing ok" if int(a.rc) == 0 else status_of(a.rc))
        return
    ok = int(a.rc) == 0 and abs(best - NANOGPT_SHAKESPEARE) <= SHAKESPEARE_TOLERANCE
    add(a.rows, check=label, measured=measured,
        reference=f"{NANOGPT_SHAKESPEARE} +- {SHAKESPEARE_TOLERANCE} (nanoGPT, ~3 min on an A100)",
        wall=f"{float(a.wall):.0f} s",
        status="ok" if ok else status_of(a.rc) if int(a.rc) else f"off target (more than {SHAKESPEARE_TOLERANCE})")


def cmd_bench(a):
    label = "bench, GPT-2 small (12L/12H/768, block 1024, batch 12, bf16, compiled), fwd+bwd"
    if a.plumbing:
        label = "bench: CPU plumbing run (tiny, eager, fp32)"
    path = Path(a.bench_json)
    if int(a.rc) or not path.exists():
        add(a.rows, check=label, measured="no bench.json", reference=f"{NANOGPT_GPT2_MS:.0f} ms/iter",
            wall=f"{float(a.wall):.0f} s", status=status_of(a.rc) if int(a.rc) else "FAILED (no bench.json)")
        return
    report = json.loads(path.read_text())
    r = report["results"][0]
    ms = r["fwd_bwd_s"]["median"] * 1e3
    peak = report["peak_flops"]
    peak = f"{peak / 1e12:.0f} TFLOP/s" if peak >= 1e12 else f"{peak / 1e9:.0f} GFLOP/s"
    measured = (f"{ms:.1f} ms/iter, {r['tokens_per_s']:,.0f} tokens/s, MFU {r['mfu'] * 100:.1f}% of a measured "
                f"{peak} {report['dtype'].removeprefix('torch.')} matmul peak")
    if a.plumbing:
        add(a.rows, check=label, measured=measured,
            reference="(not comparable)", wall=f"{float(a.wall):.0f} s", status="plumbing ok")
        return
    add(a.rows, check=label, measured=measured,
        reference=f"{NANOGPT_GPT2_MS:.0f} ms/iter (nanoGPT on an A100, with the optimizer step)",
        wall=f"{float(a.wall):.0f} s", status="ok")


# ---- FlexAttention vs causal SDPA ------------------------------------------------------------------------------

def causal_pairs(T):
    return T * (T + 1) // 2


def reach_pairs(T, reach):
    """(query, key) pairs at distance 0 <= d < reach in a causal length-T sequence."""
    r = min(reach, T)
    return r * (r + 1) // 2 + (T - r) * r


def tiles(block_mask):
    return int(block_mask.to_dense().sum())


def flex_status(cuda, measured, ideal):
    if not cuda:
        return "plumbing ok (timings need CUDA)"
    if measured >= FLEX_FRACTION_OF_IDEAL * ideal:
        return "ok"
    return f"below target ({FLEX_FRACTION_OF_IDEAL:.0%} of the pair ideal)"


def cmd_flex(a):
    import torch

    from adaptive_attention_span import AdaptiveSpanAttention, AdaptiveSpanConfig
    from attention import AttnMask, auto_attention, flex_attention, flex_block_mask, use_flex
    from variants.layerwise_window import LayerwiseConfig, layer_windows

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    T, B, H, hd = a.T, a.batch, 12, 64
    dtype = torch.bfloat16 if cuda else torch.float32
    gen = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(B, H, T, hd, device=device, dtype=dtype, generator=gen).requires_grad_(cuda)
               for _ in range(3))
    causal_tiles = tiles(flex_block_mask(AttnMask(), T, T, B, device))

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def median_time(run):
        for _ in range(a.warmup):
            run()
        times = []
        for _ in range(a.reps):
            sync()
            t = time.perf_counter()
            run()
            sync()
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    def fwd_bwd(mask_of, kernel=auto_attention):
        """One attention call and, on CUDA, its backward (into q, k, v and any learnable mask parameters)."""
        def run():
            if cuda:
                kernel(q, k, v, mask_of()).float().pow(2).mean().backward()
                for t in (q, k, v):
                    t.grad = None
            else:  # Flex has no CPU backward: the plumbing run times the forward of the eager reference
                with torch.no_grad():
                    flex_attention(q, k, v, mask_of())
        return run

    t_causal = median_time(fwd_bwd(lambda: AttnMask()))
    timed = {}

    def window_time(w):
        if w not in timed:
            mask = AttnMask(window=w)
            assert not cuda or use_flex(q, mask), "a window should take the Flex route on CUDA"
            timed[w] = median_time(fwd_bwd(lambda: AttnMask(window=w)))
        return timed[w]

    what = "fwd+bwd" if cuda else "fwd, eager reference (plumbing)"
    for schedule in SCHEDULES:
        windows = layer_windows(LayerwiseConfig(schedule=schedule, n_layer=12, block_size=T))
        live = [w if w is not None and w < T else None for w in windows]
        pairs = sum(causal_pairs(T) if w is None else reach_pairs(T, w) for w in live)
        n_tiles = sum(causal_tiles if w is None else tiles(flex_block_mask(AttnMask(window=w), T, T, B, device))
                      for w in live)
        t = sum(t_causal if w is None else window_time(w) for w in live)
        ideal, ideal_tiles, measured = 12 * causal_pairs(T) / pairs, 12 * causal_tiles / n_tiles, 12 * t_causal / t
        add(a.rows, check=f"Flex vs causal SDPA, T={T}, layer-wise '{schedule}' (12 layers), {what}",
            measured=f"measured {measured:.2f}x", reference=f"ideal {ideal:.2f}x (pairs), {ideal_tiles:.2f}x "
            f"(128-tiles); measured = {measured / ideal:.0%} / {measured / ideal_tiles:.0%}",
            wall=f"{t * 1e3:.1f} ms vs {12 * t_causal * 1e3:.1f} ms", status=flex_status(cuda, measured, ideal))
    for span in SPANS:
        if span >= T // 2:
            add(a.rows, check=f"Flex vs causal SDPA, T={T}, adaptive span {span}", measured="", reference="",
                wall="", status=f"skipped: span {span} needs a longer T than {T}")
            continue
        config = AdaptiveSpanConfig(n_layer=1, n_head=H, n_embd=H * hd, block_size=T, span_init=float(span))
        attn = AdaptiveSpanAttention(config, 0).to(device)  # learnable span: its gradients are part of the backward
        with torch.no_grad():
            reach = attn.mask(T, T, 0).reach()
        mask_of = lambda: attn.mask(T, T, 0)
        assert not cuda or use_flex(q, mask_of()), "a span should take the Flex route on CUDA"
        t = median_time(fwd_bwd(mask_of))
        n_tiles = tiles(flex_block_mask(AttnMask(window=reach), T, T, B, device))
        ideal, ideal_tiles, measured = causal_pairs(T) / reach_pairs(T, reach), causal_tiles / n_tiles, t_causal / t
        add(a.rows, check=f"Flex vs causal SDPA, T={T}, adaptive span {span} (reach {reach}), {what}",
            measured=f"measured {measured:.2f}x", reference=f"ideal {ideal:.2f}x (pairs), {ideal_tiles:.2f}x "
            f"(128-tiles); measured = {measured / ideal:.0%} / {measured / ideal_tiles:.0%}",
            wall=f"{t * 1e3:.2f} ms vs {t_causal * 1e3:.2f} ms", status=flex_status(cuda, measured, ideal))


def cmd_skip(a):
    add(a.rows, check=a.check, measured="", reference="", wall="", status=a.reason)


def cmd_table(a):
    rows = [json.loads(line) for line in Path(a.rows).read_text().splitlines()] if Path(a.rows).exists() else []
    cols = ("check", "measured", "reference", "wall", "status")
    print(markdown.table(cols, [[str(r.get(c, "")).replace("|", "/") for c in cols] for r in rows]))
    broken = [r for r in rows if r.get("status", "").startswith(("FAILED", "TIMEOUT"))]
    return 1 if broken else 0


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("env")
    s.add_argument("rows")
    s = sub.add_parser("tests")
    for name in ("rows", "log", "rc", "wall"):
        s.add_argument(name)
    for name, arg in (("shakespeare", "run_dir"), ("bench", "bench_json")):
        s = sub.add_parser(name)
        for n in ("rows", arg, "rc", "wall"):
            s.add_argument(n)
        s.add_argument("--plumbing", action="store_true")
    s = sub.add_parser("flex")
    s.add_argument("rows")
    s.add_argument("--T", type=int, default=4096)
    s.add_argument("--batch", type=int, default=8)
    s.add_argument("--reps", type=int, default=20)
    s.add_argument("--warmup", type=int, default=3)
    s = sub.add_parser("skip")
    for name in ("rows", "check", "reason"):
        s.add_argument(name)
    s = sub.add_parser("table")
    s.add_argument("rows")
    a = p.parse_args(argv)
    return {"env": cmd_env, "tests": cmd_tests, "shakespeare": cmd_shakespeare, "bench": cmd_bench,
            "flex": cmd_flex, "skip": cmd_skip, "table": cmd_table}[a.cmd](a) or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

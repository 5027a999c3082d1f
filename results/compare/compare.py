"""
The comparison protocol (issue 16): every causal variant against `gpt`, and the encoders side by side, on tiny
Shakespeare (characters), at one shape, one token budget and one optimizer recipe, with several seeds each. Then one
table with error bars and the plots, regenerated from the runs' logs alone.

    python results/compare/compare.py                  # the whole protocol into results/compare
    python results/compare/compare.py --only=gpt,alibi --jobs=1
    python results/compare/compare.py --mini           # a minutes-long miniature into a temporary folder
    python results/compare/compare.py --report         # train nothing: the table and plots of the runs done

Options: --out=DIR (default results/compare; --mini: a new temporary folder), --jobs=N train.py processes side by
side (each on one thread), --seeds=N, --iters=N (the budget; the default is the protocol's), --only=LABEL,... (train
only these; the table still shows every label with finished runs), --mini, --report.

Each run is `python train.py --key=value...` into <out>/runs/<label>/seed<k>/ (metrics.jsonl, ckpt.pt, train.log,
wall.jsonl). A run whose metrics.jsonl holds the eval record at max_iters is finished and skipped; one with a ckpt.pt
continues with --init_from=resume; Ctrl-C (or SIGTERM) checkpoints the running ones (train.py's preemption), so the
protocol can be spread over several sittings. Afterwards it writes <out>/table.md and table.json, curves.png
(validation curves against gpt with a seed band), spans.png and spans_<label>_heads.png (adaptive span),
attention.png and analysis/ (attention entropy and distance per layer of the seed-1 models, tools/analysis.py).
Paths inside the repository (out_dir, data_dir) are given to train.py and compared relative to the repository root, so
the committed runs' config.json hold no machine's absolute paths. results/compare/protocol.md says why this scale.
"""
import argparse
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO.parent / "shared" / "data" / "shakespeare" / "input.txt"
sys.path.insert(0, str(REPO))  # the table and plots use the repository's modules (imported where needed)
from infra.markdown import table as markdown_table  # noqa: E402

# One recipe for every run. Dropout 0 and no biases for all, so char_gpt (default dropout 0.2) and llama (no biases)
# differ from gpt only in their architecture; 8 layers is the smallest depth at which the four layer-wise schedules
# give four different window lists at block 256 (see protocol.md).
SHAPE = dict(n_layer=8, n_head=4, n_embd=64, block_size=256, dropout=0.0, bias=False)
# Checkpoints every 100 steps (and at every eval), so a sitting that ends loses little.
RECIPE = dict(batch_size=4, learning_rate=1e-3, min_lr=1e-4, beta2=0.99, weight_decay=0.1, grad_clip=1.0,
              eval_interval=200, eval_iters=50, log_interval=10, always_save_checkpoint=True, ckpt_interval=100,
              device="cpu", dtype="float32", compile=False)
ITERS = 1600
MINI_SHAPE = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, dropout=0.0, bias=False)
MINI_RECIPE = {**RECIPE, "eval_interval": 10, "eval_iters": 5, "log_interval": 2, "ckpt_interval": 0}
MINI_ITERS, MINI_SEEDS, MINI_LABELS = 20, 2, ("gpt", "alibi")

# label -> (family, variant, the variant's own keys that make this label). Everything else is the variant's default.
CAUSAL = {
    "gpt": ("baseline", "gpt", {}),
    "char_gpt": ("foundational", "char_gpt", {}),
    "llama": ("foundational", "llama", {}),
    "alibi": ("foundational", "alibi", {}),
    "drift_diffusion": ("drift-diffusion", "drift_diffusion", {}),
    "drift_only": ("drift-diffusion", "drift_diffusion", {"apply_diffusion": False}),
    "diffusion_only": ("drift-diffusion", "drift_diffusion", {"apply_drift": False}),
    "parallel_mean": ("parallel", "parallel", {"bottleneck_method": "mean"}),
    "parallel_concat": ("parallel", "parallel", {"bottleneck_method": "concat"}),
    "duo_predict": ("duo-predict", "duo_predict", {}),
    "rotating_head_lr": ("rotating head", "rotating_head", {"rotatinghead": "lr"}),
    "rotating_head_gp": ("rotating head", "rotating_head", {"rotatinghead": "gp"}),
    "span": ("adaptive span", "adaptive_span", {"use_adaptive_attention": True}),
    "span_periodic": ("adaptive span", "adaptive_span", {"use_adaptive_attention": True,
                                                         "use_triangle_wave_masking": True}),
    "layerwise_full": ("layer-wise", "layerwise", {"schedule": "full"}),
    "layerwise_half": ("layer-wise", "layerwise", {"schedule": "half"}),
    "layerwise_quarter": ("layer-wise", "layerwise", {"schedule": "quarter"}),
    "layerwise_aggressive": ("layer-wise", "layerwise", {"schedule": "aggressive"}),
}
ENCODERS = {
    "bert": ("encoders", "bert", {}),
    "albert": ("encoders", "albert", {}),
    "deberta": ("encoders", "deberta", {}),
}
BASELINE = "gpt"
# Every label is scored by val/loss: next-token cross-entropy for the causal models (duo-predict's objective,
# InterleavedLM.metrics, reports it at the original positions only, so it is the same quantity), and the masked-token
# cross-entropy for the encoders (MaskedLM.metrics).
METRIC = "val/loss"


# ---- the runs --------------------------------------------------------------------------------------------------

def protocol(mini, iters, seeds):
    """The labels, seeds and shared train.py keys of this protocol."""
    shape, recipe = (MINI_SHAPE, MINI_RECIPE) if mini else (SHAPE, RECIPE)
    iters = iters or (MINI_ITERS if mini else ITERS)
    labels = {k: v for k, v in {**CAUSAL, **ENCODERS}.items() if not mini or k in MINI_LABELS}
    # warmup 5 % of the budget, cosine decay to min_lr at the last step
    common = {**shape, **recipe, "max_iters": iters, "lr_decay_iters": iters, "warmup_iters": max(1, iters // 20)}
    return {"labels": labels, "seeds": list(range(1, (seeds or (MINI_SEEDS if mini else 3)) + 1)), "common": common}


def repo_relative(path):
    """A path inside the repository as a string relative to its root, any other one absolute. A relative path is
    taken relative to the root, where train.py runs."""
    path = (REPO / path).resolve()  # an absolute path stays itself
    try:
        return path.relative_to(REPO).as_posix()
    except ValueError:
        return str(path)


LOCATIONS = ("out_dir", "data_dir")  # compared in their repository-relative form


def train_args(proto, label, seed, data_dir, run_dir):
    """{key: value} of train.py for one run (without init_from/overwrite). out_dir and data_dir are relative to the
    repository root when inside it (train.py runs there), so no checkout's absolute path gets into the run's logs."""
    _, variant, own = proto["labels"][label]
    return {"variant": variant, **own, **proto["common"], "seed": seed, "dataset": "shakespeare_char",
            "data_dir": repo_relative(data_dir), "out_dir": repo_relative(run_dir)}


def as_argv(args):
    return [f"--{k}={v}" for k, v in args.items()]


def read_records(run_dir):
    """metrics.jsonl as a list of dicts (a line cut short by a kill is dropped)."""
    path = Path(run_dir) / "metrics.jsonl"
    records = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                pass
    return records


def final_eval(records, iters):
    """The eval record at max_iters, or None while the run is unfinished."""
    done = [r for r in records if r.get("kind") == "eval" and r["iter"] == iters]
    return done[-1] if done else None


def check_same_protocol(run_dir, args):
    """A run on disk must have been started with the keys this invocation would give it (a resumed run with another
    budget or shape would silently mix two protocols). out_dir and data_dir are compared in their repository-relative
    form, whether config.json holds them relative (the committed runs) or absolute (as train.py records data_dir)."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        return
    saved = json.loads(path.read_text())
    for key, value in args.items():
        if key in LOCATIONS:
            same = key not in saved or repo_relative(saved[key]) == repo_relative(value)
        else:
            same = saved.get(key) == json.loads(json.dumps(value))
        if not same:
            sys.exit(f"error: {run_dir} was trained with {key}={saved.get(key)!r}, this protocol asks for {value!r}; "
                     f"use another --out or the same options as before")


def prepare_data(out):
    data_dir = out / "data"
    if not (data_dir / "meta.json").is_file():
        if not SOURCE.is_file():
            sys.exit(f"error: {SOURCE} not found (tiny Shakespeare's input.txt)")
        subprocess.run([sys.executable, str(REPO / "data/shakespeare_char/prepare.py"), "--source", str(SOURCE),
                        "--out_dir", str(data_dir)], check=True)
    return data_dir


def start(args, run_dir):
    """Launch one train.py on one thread; scratch, or resume from its checkpoint."""
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt = run_dir / "ckpt.pt"
    if ckpt.is_file():
        extra = ["--init_from=resume"]
    else:
        # no checkpoint yet: train.py would append to an earlier attempt's logs, so start them afresh
        for log in ("metrics.jsonl", "wall.jsonl"):
            (run_dir / log).unlink(missing_ok=True)
        extra = ["--init_from=scratch", "--overwrite=True"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    log = open(run_dir / "train.log", "a")
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), *as_argv(args), *extra], cwd=REPO, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    log.close()
    return proc


def last_iter(records):
    return max((r["iter"] for r in records), default=0)


def run_protocol(proto, out, data_dir, only, jobs):
    """Train every unfinished run, `jobs` at a time, seed-major (all labels' seed 1 first, so a partial protocol
    already compares every label). Returns the number of runs that did not finish."""
    iters = proto["common"]["max_iters"]
    todo, finished, later = [], 0, 0
    for seed in proto["seeds"]:
        for label in proto["labels"]:
            run_dir = out / "runs" / label / f"seed{seed}"
            args = train_args(proto, label, seed, data_dir, run_dir)
            check_same_protocol(run_dir, args)
            if final_eval(read_records(run_dir), iters) is not None:
                finished += 1
            elif only and label not in only:
                later += 1
            else:
                todo.append((label, seed, run_dir, args))
    total = len(proto["labels"]) * len(proto["seeds"])
    print(f"{finished} of {total} runs finished, {len(todo)} to train, {jobs} at a time"
          + (f" ({later} not selected by --only)" if later else ""))
    running, walls, unfinished, started = {}, [], 0, 0
    for signum in (signal.SIGINT, signal.SIGTERM):  # both stop the sitting cleanly (below), even in the background
        signal.signal(signum, interrupt)
    try:
        while todo or running:
            while todo and len(running) < jobs:
                label, seed, run_dir, args = todo.pop(0)
                at = last_iter(read_records(run_dir)) if (run_dir / "ckpt.pt").is_file() else 0
                started += 1
                how = f"resume from its checkpoint; logged up to iter {at}" if at else "scratch"
                print(f"[{started}/{started + len(todo)}] start {label} seed{seed} ({how})", flush=True)
                running[start(args, run_dir)] = (label, seed, run_dir, at, time.time())
            time.sleep(1)
            for proc in [p for p in running if p.poll() is not None]:
                label, seed, run_dir, at, t0 = running.pop(proc)
                wall = log_sitting(run_dir, at, t0, proc.returncode)
                done = final_eval(read_records(run_dir), iters)
                if done is None:
                    unfinished += 1
                    why = "stopped by a signal (checkpoint written)" if proc.returncode == 0 else \
                        f"FAILED (exit {proc.returncode}); see {run_dir / 'train.log'}"
                    print(f"  {label} seed{seed} {why}")
                    continue
                walls.append(wall * iters / max(iters - at, 1))  # as if the whole run had been this sitting
                left = len(todo) + len(running)
                eta = statistics.mean(walls) * left / jobs
                print(f"  {label} seed{seed} finished in {timedelta(seconds=round(wall))}: {METRIC} "
                      f"{done[METRIC]:.4f}; {left} runs left, ETA {timedelta(seconds=round(eta))}", flush=True)
    except KeyboardInterrupt:
        for proc in running:  # train.py finishes its step, writes ckpt.pt and exits 0
            proc.send_signal(signal.SIGTERM)
        for proc, (label, seed, run_dir, at, t0) in running.items():
            proc.wait()
            log_sitting(run_dir, at, t0, proc.returncode)
        sys.exit("interrupted: the running runs wrote checkpoints; run the same command again to continue")
    return unfinished


def interrupt(signum, frame):
    raise KeyboardInterrupt


def log_sitting(run_dir, at, t0, returncode):
    """One line per sitting in wall.jsonl (the table's wall time is their sum); returns this sitting's seconds."""
    wall = time.time() - t0
    with open(run_dir / "wall.jsonl", "a") as f:
        f.write(json.dumps({"from_iter": at, "to_iter": last_iter(read_records(run_dir)), "wall_s": wall,
                            "returncode": returncode}) + "\n")
    return wall


# ---- the table -------------------------------------------------------------------------------------------------

def mean_std(xs):
    """(mean, sample std) over seeds; std is nan for a single seed."""
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else math.nan)


def diff_se(a, b):
    """mean(a) - mean(b) and its standard error, the seeds of a and b being independent runs."""
    (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
    return ma - mb, math.sqrt(sa ** 2 / len(a) + sb ** 2 / len(b))


def verdict(diff, se):
    """Lower loss is better; a difference within two standard errors is noise."""
    if not math.isfinite(se):
        return "n/a"
    if abs(diff) <= 2 * se:
        return "within noise"
    return "better" if diff < 0 else "worse"


def run_summary(run_dir, iters):
    """What the table needs from one finished run, read from its logs; None while it is unfinished."""
    records = read_records(run_dir)
    final = final_eval(records, iters)
    if final is None:
        return None
    speeds = [r["tokens_per_s"] for r in records if r.get("kind") == "train"]
    wall_log = run_dir / "wall.jsonl"
    walls = [json.loads(line)["wall_s"] for line in wall_log.read_text().splitlines()] if wall_log.is_file() else []
    return {"final": {k: v for k, v in final.items() if k.startswith(("val/", "train/"))},
            "tokens_per_s": statistics.median(speeds) if speeds else None,  # wall-clock, as train.py logs it
            "wall_s": sum(walls) if walls else None}  # every sitting of the run, startup and evals included


def count_params(run_dir):
    """All parameters (shared ones once) of the model in the run's config.json, built on the meta device."""
    import dataclasses
    import torch
    import variants
    saved = json.loads((run_dir / "config.json").read_text())
    spec = variants.get(saved["variant"])
    fields = {f.name for f in dataclasses.fields(spec.config_class)}
    with torch.device("meta"):
        model = spec.build(spec.config_class(**{k: v for k, v in saved.items() if k in fields}))
    return sum(p.numel() for p in model.parameters())


def pair_task(finals):
    """The encoders' sentence-pair task (nsp/sop) their eval records report, or None."""
    names = {k[len("val/"):-len("_acc")] for f in finals for k in f if k.startswith("val/") and k.endswith("_acc")}
    names.discard("mlm")
    return next(iter(sorted(names)), None)


def summarize(proto, out):
    """The table as a dict, from the logs of every finished run of the protocol's labels."""
    iters = proto["common"]["max_iters"]
    rows = {}
    for label, (family, variant, own) in proto["labels"].items():
        seeds = {}
        for seed in proto["seeds"]:
            summary = run_summary(out / "runs" / label / f"seed{seed}", iters)
            if summary is not None:
                seeds[seed] = summary
        if not seeds:
            continue
        finals = [s["final"] for s in seeds.values()]
        losses = [f[METRIC] for f in finals]
        row = {"family": family, "variant": variant, "keys": own, "n": len(seeds), "seeds": seeds,
               "loss": mean_std(losses),
               "params": count_params(out / "runs" / label / f"seed{min(seeds)}"),
               "tokens_per_s": mean_or_none([s["tokens_per_s"] for s in seeds.values()]),
               "wall_s": mean_or_none([s["wall_s"] for s in seeds.values()])}
        if label in ENCODERS:
            row["mlm_acc"] = mean_std([f["val/mlm_acc"] for f in finals])
            task = pair_task(finals)
            if task:
                row["pair"] = pair_summary(task, [f[f"val/{task}_acc"] for f in finals], proto["common"])
        else:
            row["bpc"] = mean_std([x / math.log(2) for x in losses])  # char data: bits per character
        rows[label] = row
    base = rows.get(BASELINE)
    for label, row in rows.items():
        if label in ENCODERS or base is None or label == BASELINE:
            continue
        diff, se = diff_se([s["final"][METRIC] for s in row["seeds"].values()],
                           [s["final"][METRIC] for s in base["seeds"].values()])
        row.update(diff=diff, se=se, verdict=verdict(diff, se))
    meta = json.loads((out / "data" / "meta.json").read_text())
    data = (f"tiny Shakespeare, {meta['tokenizer']} level (vocabulary {meta['vocab_size']}), first 90 % train / "
            f"last 10 % val")
    return {"protocol": {"data": data,
                         "metric": METRIC, "seeds": proto["seeds"], **proto["common"]},
            "rows": rows}


def mean_or_none(xs):
    xs = [x for x in xs if x is not None]
    return statistics.mean(xs) if xs else None


def pair_summary(task, accs, common):
    """NSP/SOP accuracy and whether it left chance (0.5): above 0.5 by more than two standard errors, the larger of
    the seeds' spread and the binomial error of the pairs scored in the final evals."""
    mean, std = mean_std(accs)
    pairs = len(accs) * common["eval_iters"] * common["batch_size"]
    se = max(std / math.sqrt(len(accs)) if len(accs) > 1 else 0.0, math.sqrt(0.25 / pairs))
    return {"task": task, "acc": (mean, std), "se": se, "above_chance": mean - 0.5 > 2 * se}


def pm(value, digits=4):
    """'mean ± std' ('mean' alone when std is undefined)."""
    mean, std = value
    return f"{mean:.{digits}f}" if not math.isfinite(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def number(x, fmt):
    return "-" if x is None else format(x, fmt)


def markdown(table):
    p, rows = table["protocol"], table["rows"]
    n_seeds = len(p["seeds"])
    tokens = p["max_iters"] * p["batch_size"] * p["block_size"]
    lines = [f"# Comparison protocol: {p['data']}", "",
             f"Shape {p['n_layer']} layers / {p['n_head']} heads / width {p['n_embd']}, block {p['block_size']}, "
             f"batch {p['batch_size']}, {p['max_iters']} iterations ({tokens:,} tokens), AdamW lr "
             f"{p['learning_rate']:g} (warmup {p['warmup_iters']}, cosine to {p['min_lr']:g}), beta2 {p['beta2']}, "
             f"weight decay {p['weight_decay']}, grad clip {p['grad_clip']}, dropout {p['dropout']}; seeds "
             f"{', '.join(map(str, p['seeds']))}. Each eval: {p['eval_iters']} batches per split. Generated by "
             f"results/compare/compare.py from the runs' logs.", ""]
    causal = {k: v for k, v in rows.items() if k not in ENCODERS}
    if causal:
        cells = []
        for label, r in causal.items():
            diff = "-" if "diff" not in r else f"{r['diff']:+.4f}" + (f" ± {r['se']:.4f}" if math.isfinite(r["se"])
                                                                       else "")
            cells.append([label, r["family"], f"{r['n']}/{n_seeds}", pm(r["loss"]), pm(r["bpc"]), diff,
                          r.get("verdict", "-"), f"{r['params']:,}", number(r["tokens_per_s"], ",.0f"),
                          number(r["wall_s"], ".0f")])
        lines += ["## Causal variants against gpt", "", markdown_table(
            ["label", "family", "seeds", "val loss", "val bpc", "Δ loss vs gpt ± se", "verdict", "params", "tokens/s",
             "wall s"], cells)]
        lines += ["", "Notes:",
                  "- val loss: next-token cross-entropy (nats) of the final model, mean ± sample std over seeds; "
                  "bpc = loss / ln 2. duo_predict's is scored at the original positions only "
                  "(InterleavedLM.metrics), the same quantity as the others'.",
                  "- Δ = mean(label) - mean(gpt); se = sqrt(s_a²/n_a + s_b²/n_b) (seeds are independent runs). "
                  "'better' / 'worse' only when |Δ| > 2 se, otherwise 'within noise'.",
                  "- tokens/s: median over the run's logged training steps (wall clock, one thread, on a shared "
                  "machine: compare within one sitting only); wall s: the whole run, startup and evaluations "
                  "included, mean over seeds.",
                  "- params: every parameter, shared ones once.", ""]
    encoders = {k: v for k, v in rows.items() if k in ENCODERS}
    if encoders:
        cells = []
        for label, r in encoders.items():
            pair = r.get("pair")
            acc = "-" if not pair else pm(pair["acc"], 3) if pair["above_chance"] else "at chance"
            cells.append([label, f"{r['n']}/{n_seeds}", pm(r["loss"]), pm(r["mlm_acc"]),
                          pair["task"] if pair else "none", acc, f"{r['params']:,}",
                          number(r["tokens_per_s"], ",.0f"), number(r["wall_s"], ".0f")])
        lines += ["## Encoders (masked LM)", "", markdown_table(
            ["label", "seeds", "MLM loss", "MLM accuracy", "pair task", "pair accuracy", "params", "tokens/s",
             "wall s"], cells)]
        chance = [f"{k} {v['pair']['task']} {v['pair']['acc'][0]:.3f} (se {v['pair']['se']:.3f})"
                  for k, v in encoders.items() if "pair" in v and not v["pair"]["above_chance"]]
        lines += ["", "Notes:",
                  "- MLM loss: cross-entropy over the masked tokens only (15 % of them); accuracy over the same "
                  "tokens.",
                  "- The pair task (NSP for bert, SOP for albert; deberta has none) is reported only when its "
                  "accuracy exceeds chance (0.5) by more than two standard errors (the larger of the seeds' and the "
                  "binomial one)." + (f" At chance with this budget: {'; '.join(chance)}." if chance else ""), ""]
    return "\n".join(lines)


def write_table(table, out):
    (out / "table.md").write_text(markdown(table))
    (out / "table.json").write_text(json.dumps(table, indent=1) + "\n")


# ---- plots -----------------------------------------------------------------------------------------------------

def eval_curves(out, label, seeds, metric, iters):
    """(eval iters, values per seed) of a label's finished runs, on the iters every seed logged."""
    runs = [read_records(out / "runs" / label / f"seed{s}") for s in seeds]
    runs = [[r for r in recs if r.get("kind") == "eval"] for recs in runs if final_eval(recs, iters)]
    if not runs:
        return [], []
    steps = sorted(set.intersection(*[{r["iter"] for r in recs} for recs in runs]))
    return steps, [[next(r[metric] for r in recs if r["iter"] == it) for it in steps] for recs in runs]


def plot_band(ax, steps, per_seed, label, **style):
    import numpy as np
    values = np.array(per_seed)
    mean = values.mean(0)
    std = values.std(0, ddof=1) if len(values) > 1 else np.zeros_like(mean)
    line, = ax.plot(steps, mean, label=f"{label} (n={len(values)})", **style)
    ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2)


def plot_curves(proto, out, labels):
    """One panel per family: its labels' validation curves (mean ± std over seeds) against gpt's."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    iters = proto["common"]["max_iters"]
    families = {}
    for label in labels:
        families.setdefault(proto["labels"][label][0], []).append(label)
    panels = [(f, ls) for f, ls in families.items() if f != "baseline"] or list(families.items())
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4 * rows), squeeze=False)
    start = iters // 5  # the fast early phase would squash the differences that matter
    for ax, (family, members) in zip(axes.flat, panels):
        shown = members if family == "encoders" or BASELINE not in labels else [BASELINE, *members]
        for label in dict.fromkeys(shown):
            steps, per_seed = eval_curves(out, label, proto["seeds"], METRIC, iters)
            keep = [i for i, s in enumerate(steps) if s >= start]
            style = {"color": "black", "linestyle": "--"} if label == BASELINE and family != "baseline" else {}
            plot_band(ax, [steps[i] for i in keep], [[v[i] for i in keep] for v in per_seed], label, **style)
        ylabel = "val MLM loss (nats)" if family == "encoders" else "val loss (nats/char)"
        ax.set(title=family, xlabel="iteration", ylabel=ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle("validation loss, mean ± std over seeds (gpt dashed)")
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)
    plt.close(fig)


def plot_spans(proto, out, labels):
    """Adaptive span: learned span (and period) per layer, final value, mean over heads, ± std over seeds, from the
    eval records; plus adaptive_attention_span.plot_spans (every head) of the seed-1 models."""
    span_labels = [l for l in labels if proto["labels"][l][1] == "adaptive_span"]
    if not span_labels:
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from infra import checkpoint
    import variants
    from adaptive_attention_span import plot_spans as plot_heads
    iters, n_layer = proto["common"]["max_iters"], proto["common"]["n_layer"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for color, label in enumerate(span_labels):
        finals = [final_eval(read_records(out / "runs" / label / f"seed{k}"), iters) for k in proto["seeds"]]
        for ax, key in zip(axes, ("span_mean", "period_mean")):
            per_seed = [[r[f"model/{key}/{i}"] for i in range(n_layer)] for r in finals if r and f"model/{key}/0" in r]
            if per_seed:
                plot_band(ax, list(range(n_layer)), per_seed, label, marker="o", color=f"C{color}")
        seed_dir = out / "runs" / label / f"seed{proto['seeds'][0]}"
        if final_eval(read_records(seed_dir), iters) and (seed_dir / "ckpt.pt").is_file():
            model = checkpoint.build_model(checkpoint.load(seed_dir / "ckpt.pt"), variants.get)
            plot_heads(model, out / f"spans_{label}_heads.png")
    axes[0].set(title="learned span z per layer (mean over heads)", xlabel="layer", ylabel="tokens")
    axes[1].set(title="learned period p per layer (mean over heads)", xlabel="layer", ylabel="tokens")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.ticklabel_format(useOffset=False, axis="y")
    fig.tight_layout()
    fig.savefig(out / "spans.png", dpi=110)
    plt.close(fig)


def attention_analysis(proto, out, labels):
    """tools/analysis.py on the seed-1 model of every causal label (entropy and mean attention distance per layer, mask
    statistics), into <out>/analysis, then one panel per family against gpt in attention.png. analysis.json is
    redone only when a checkpoint is newer or a label is missing; without the checkpoints (only the logs kept) the
    existing analysis.json is plotted."""
    seed = proto["seeds"][0]
    labels = [l for l in labels if l not in ENCODERS
              and final_eval(read_records(out / "runs" / l / f"seed{seed}"), proto["common"]["max_iters"])]
    ckpt = {l: out / "runs" / l / f"seed{seed}" / "ckpt.pt" for l in labels}
    result = out / "analysis" / "analysis.json"
    reports = json.loads(result.read_text())["reports"] if result.is_file() else {}
    stale = [l for l in labels if l not in reports or (ckpt[l].is_file() and
                                                        ckpt[l].stat().st_mtime > result.stat().st_mtime)]
    have = [l for l in labels if ckpt[l].is_file()]
    if stale and have:
        from tools import analysis
        cfg = analysis.AnalysisConfig(out_dir=str(out / "analysis"), batch_size=4, crop=0)  # crop=0: no heatmaps
        analysis.run([ckpt[l] for l in have], have, cfg,
                     "results/compare/compare.py: analysis.run on the seed-1 checkpoints")
        # analysis.json records where it went: relative to the repository root, as the runs' config.json
        saved = json.loads(result.read_text())
        saved["config"]["out_dir"] = repo_relative(saved["config"]["out_dir"])
        result.write_text(json.dumps(saved, indent=1) + "\n")
        reports = saved["reports"]
    labels = [l for l in labels if l in reports]
    if not labels:
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    families = {}
    for label in labels:
        families.setdefault(proto["labels"][label][0], []).append(label)
    panels = [(f, ls) for f, ls in families.items() if f != "baseline"] or list(families.items())
    fig, axes = plt.subplots(2, len(panels), figsize=(4.2 * len(panels), 7), squeeze=False)
    for col, (family, members) in enumerate(panels):
        for label in dict.fromkeys([BASELINE, *members] if BASELINE in reports else members):
            layers = reports[label]["layers"]
            style = {"color": "black", "linestyle": "--"} if label == BASELINE and family != "baseline" else {}
            line, = axes[0, col].plot([s["entropy"] for s in layers], marker="o", label=label, **style)
            # the most entropy the layer's mask allows (uniform attention): windows and spans lower it by themselves
            axes[0, col].plot([s["max_entropy"] for s in layers], linestyle=":", color=line.get_color(), alpha=0.7)
            axes[1, col].plot([s["mean_distance"] for s in layers], marker="o", label=label, **style)
        axes[0, col].set(title=family, ylabel="attention entropy (nats)")
        axes[1, col].set(xlabel="layer", ylabel="mean attention distance (tokens)")
        for ax in axes[:, col]:
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
            ax.ticklabel_format(useOffset=False, axis="y")
    fig.suptitle(f"attention per layer, seed-{seed} models (gpt dashed; dotted: uniform over the mask)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "attention.png", dpi=110)
    plt.close(fig)


# ---- main ------------------------------------------------------------------------------------------------------

def main(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="default results/compare (--mini: a temporary folder)")
    parser.add_argument("--jobs", type=int, default=2, help="train.py processes side by side, one thread each")
    parser.add_argument("--seeds", type=int, default=0, help="seeds 1..N (default 3; --mini 2)")
    parser.add_argument("--iters", type=int, default=0, help=f"iterations per run (default {ITERS}; --mini "
                                                              f"{MINI_ITERS})")
    parser.add_argument("--only", default="", help="train only these labels (comma-separated)")
    parser.add_argument("--mini", action="store_true", help="tiny shapes, gpt and alibi, 2 seeds, few iterations")
    parser.add_argument("--report", action="store_true", help="train nothing: the table and plots of the runs done")
    args = parser.parse_args(argv)
    proto = protocol(args.mini, args.iters, args.seeds)
    only = [l for l in args.only.split(",") if l]
    unknown = [l for l in only if l not in proto["labels"]]
    if unknown:
        parser.error(f"unknown labels {unknown}; the protocol has {', '.join(proto['labels'])}")
    if args.jobs < 1:
        parser.error("--jobs must be >= 1")
    out = args.out or (Path(tempfile.mkdtemp(prefix="compare-mini-")) if args.mini else REPO / "results" / "compare")
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    print(f"protocol into {out}")
    data_dir = prepare_data(out)  # the table's header describes the data, so --report needs it too (seconds)
    unfinished = 0 if args.report else run_protocol(proto, out, data_dir, only, args.jobs)

    import torch
    torch.set_num_threads(1)
    table = summarize(proto, out)
    write_table(table, out)
    labels = list(table["rows"])
    if labels:
        plot_curves(proto, out, labels)
        plot_spans(proto, out, labels)
        attention_analysis(proto, out, labels)
    print(f"wrote {out / 'table.md'}, {out / 'table.json'} and the plots ({len(labels)} labels)")
    if unfinished:
        sys.exit(f"{unfinished} runs did not finish; rerun to continue them")


if __name__ == "__main__":
    main(sys.argv[1:])

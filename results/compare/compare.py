"""
The comparison: every causal variant against `gpt` and the encoders against `bert`, on tiny Shakespeare (characters),
under protocol files (results/compare/protocols/*.toml) that fix the labels, shape, recipe, seeds, learning-rate grid
and budget rule. Then tables with error bars, the plan with its machine time, and the plots, regenerated from the runs'
logs alone.

    python results/compare/compare.py                              # every standard protocol, in order
    python results/compare/compare.py --protocol=lr_sweep,tuned    # some of them (a name, or a path to a .toml)
    python results/compare/compare.py --protocol=equal_tokens --labels=my_variant --out=/tmp/mine
    python results/compare/compare.py --plan                       # train nothing: every run, done or not, and its time
    python results/compare/compare.py --report                     # train nothing: tables, plan.md and plots

Options: --out=DIR (default results/compare), --jobs=N train.py processes side by side on the CPU (one thread each),
--devices=cuda:0,cuda:1 (one run per device instead), --labels=A,B (only these labels and the baseline; any
registered variant name is a label with its defaults), --plan, --report.

A protocol file sets labels ("all", a list, or "best_per_family": the baseline and each causal family's best label in
another protocol), seeds, learning_rates (a list, or "best": each label's best rate in the best_from protocol),
min_lr_divisor, iters, budget ("tokens": every label runs iters iterations; "flops": a label whose step costs more
training FLOPs than its baseline's, beyond flops_tolerance, runs floor(iters * baseline FLOPs / its FLOPs), with its own
warmup and cosine schedule ending there), the shape and recipe tables of train.py keys, and may extend another file.
`analysis = true` (not passed on by extends) marks the protocol whose runs get curves.png, the span plots and the
attention analysis.

Each run is `python train.py --key=value...` into <out>/runs/<label>/[lr<rate>_][iters<N>/]seed<k>/ (metrics.jsonl,
config.json, wall.jsonl; ckpt.pt and train.log stay out of git): the rate and length name the directory, so protocols
that ask for the same run share it. A run whose metrics.jsonl holds the eval record at its max_iters is finished and
skipped; one with a ckpt.pt continues with --init_from=resume; Ctrl-C (or SIGTERM) checkpoints the running ones
(train.py's preemption), so the protocols can be spread over several sittings. A run on disk whose config.json differs
from what its protocol asks for is refused before anything trains. Runs that wait for another protocol's results
(a best rate, a family's best label) start once those are in, in the same invocation when it trains them.

Outputs in <out>: table.md and table.json (the verdicts of every protocol side by side, then the detailed table of the
protocol marked analysis, else the first with one rate per label), plan.md (every run, its state and machine time),
curves.png (validation curves against the baseline with a seed band) and curves_<protocol>.png for the others,
sweep_<protocol>.png (final loss against the learning rate per family), spans.png and spans_<label>_heads.png
(adaptive span), attention.png and analysis/ (attention entropy and distance per layer of the seed-1 models,
tools/analysis.py). Paths inside the repository (out_dir, data_dir) are given to train.py and compared relative to the
repository root, so the committed runs' config.json hold no machine's absolute paths. results/compare/protocol.md
gives the design, the machine time and what the results say.
"""
import argparse
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO.parent / "shared" / "data" / "shakespeare" / "input.txt"
sys.path.insert(0, str(REPO))  # the table and plots use the repository's modules (imported where needed)
from infra.markdown import table as markdown_table  # noqa: E402

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
# Every label is scored by val/loss: next-token cross-entropy for the causal models (duo-predict's objective,
# InterleavedLM.metrics, reports it at the original positions only, so it is the same quantity), and the masked-token
# cross-entropy for the encoders (MaskedLM.metrics).
METRIC = "val/loss"


# ---- protocols -------------------------------------------------------------------------------------------------

PROTOCOLS = Path(__file__).resolve().parent / "protocols"
# what a protocol file may set (with `extends`, a file takes every key of another and changes some; its shape and
# recipe tables are merged key by key)
PROTOCOL_KEYS = {"description": str, "extends": str, "labels": (list, str), "baseline": str, "encoder_baseline": str,
                 "seeds": list, "learning_rates": (list, str), "best_from": str, "best_per_family_from": str,
                 "min_lr_divisor": (int, float), "iters": int, "budget": str, "flops_tolerance": (int, float),
                 "analysis": bool, "shape": dict, "recipe": dict}
# keys a file does not pass on to the files that extend it
OWN_KEYS = ("analysis", "description")
REQUIRED = ("labels", "baseline", "encoder_baseline", "seeds", "learning_rates", "min_lr_divisor", "iters", "budget",
            "shape", "recipe")
# keys of a run that the driver sets itself, per run
DRIVER_KEYS = {"variant", "seed", "dataset", "data_dir", "out_dir", "device", "learning_rate", "min_lr", "max_iters",
               "lr_decay_iters", "warmup_iters", "init_from", "overwrite"}
# A run at this rate and length lives in runs/<label>/seed<k>; any other adds lr<rate>_iters<N> (the parts that
# differ) between the label and the seed, so every protocol that asks for the same run finds it.
NAMED_PLAINLY = {"learning_rate": 1e-3, "iters": 1600}


class ProtocolError(Exception):
    """A protocol file or a selection that cannot run: one line for the user."""


def protocol_path(name):
    path = Path(name)
    return path if path.suffix == ".toml" else PROTOCOLS / f"{name}.toml"


def read_protocol(name, seen=()):
    """A protocol file (a name in protocols/ or a path), with what it extends filled in, checked."""
    path = protocol_path(name)
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PROTOCOLS.glob("*.toml")))
        raise ProtocolError(f"protocol {name!r} not found (no {path}); the protocols here are {known}")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ProtocolError(f"{path}: {e}") from None
    for key, value in data.items():
        if key not in PROTOCOL_KEYS:
            raise ProtocolError(f"{path}: unknown key {key!r}; a protocol sets {', '.join(PROTOCOL_KEYS)}")
        if not isinstance(value, PROTOCOL_KEYS[key]) or (isinstance(value, bool) and PROTOCOL_KEYS[key] is not bool):
            raise ProtocolError(f"{path}: {key} = {value!r} has the wrong type")
    if "extends" in data:
        if path.stem in seen:
            raise ProtocolError(f"{path}: extends itself through {' -> '.join(seen)}")
        base = {k: v for k, v in read_protocol(data["extends"], (*seen, path.stem)).items() if k not in OWN_KEYS}
        data = {**base, **{k: v for k, v in data.items() if k not in ("shape", "recipe")},
                "shape": {**base["shape"], **data.get("shape", {})},
                "recipe": {**base["recipe"], **data.get("recipe", {})}}
    data["name"], data["path"] = path.stem, path
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise ProtocolError(f"{path}: missing {', '.join(missing)}")
    checks = [
        (data["budget"] in ("tokens", "flops"), f"budget must be 'tokens' or 'flops', got {data['budget']!r}"),
        (data["iters"] >= 1, f"iters must be >= 1, got {data['iters']}"),
        (data["seeds"] and all(isinstance(s, int) and s >= 1 for s in data["seeds"]),
         f"seeds must be a list of integers >= 1, got {data['seeds']!r}"),
        (data["learning_rates"] == "best" or (data["learning_rates"] and all(
            isinstance(r, (int, float)) and 0 < r < 1 for r in data["learning_rates"])),
         f"learning_rates must be \"best\" or a list of rates in (0, 1), got {data['learning_rates']!r}"),
        (data["learning_rates"] != "best" or "best_from" in data, "learning_rates = \"best\" needs best_from"),
        (data["labels"] != "best_per_family" or "best_per_family_from" in data,
         "labels = \"best_per_family\" needs best_per_family_from"),
        (isinstance(data["labels"], list) or data["labels"] in ("all", "best_per_family"),
         f"labels must be a list, \"all\" or \"best_per_family\", got {data['labels']!r}"),
        (data["min_lr_divisor"] >= 1, f"min_lr_divisor must be >= 1, got {data['min_lr_divisor']}"),
        (not set(data["shape"]) & DRIVER_KEYS and not set(data["recipe"]) & DRIVER_KEYS,
         f"shape and recipe may not set {', '.join(sorted(DRIVER_KEYS))} (the driver sets them per run)"),
    ]
    for ok, message in checks:
        if not ok:
            raise ProtocolError(f"{path}: {message}")
    if isinstance(data["labels"], list):
        for label in data["labels"]:
            label_spec(label)
    return data


def label_spec(label):
    """(family, variant, the variant's own keys) of a label: a named one above, or any registered variant by its
    name with its defaults (how a new variant enters a comparison)."""
    if label in CAUSAL or label in ENCODERS:
        return {**CAUSAL, **ENCODERS}[label]
    import variants
    try:
        spec = variants.get(label)
    except (KeyError, ValueError):
        raise ProtocolError(f"unknown label {label!r}: neither a label of compare.py "
                            f"({', '.join([*CAUSAL, *ENCODERS])}) nor a registered variant") from None
    return ("encoders" if not spec.objective.causal else "new", label, {})


def is_encoder(label):
    return label_spec(label)[0] == "encoders"


def baseline_of(proto, label):
    return proto["encoder_baseline"] if is_encoder(label) else proto["baseline"]


def run_dir_of(out, label, seed, lr, iters):
    parts = [f"lr{lr:g}"] if lr != NAMED_PLAINLY["learning_rate"] else []
    parts += [f"iters{iters}"] if iters != NAMED_PLAINLY["iters"] else []
    return out / "runs" / label / "_".join(parts) / f"seed{seed}" if parts else out / "runs" / label / f"seed{seed}"


def train_args(proto, label, seed, lr, iters, data_dir, run_dir, device="cpu"):
    """{key: value} of train.py for one run (without init_from/overwrite). out_dir and data_dir are relative to the
    repository root when inside it (train.py runs there), so no checkout's absolute path gets into the run's logs."""
    _, variant, own = label_spec(label)
    return {"variant": variant, **own, **proto["shape"], **proto["recipe"], "learning_rate": lr,
            "min_lr": float(f"{lr / proto['min_lr_divisor']:.12g}"), "device": device, "max_iters": iters,
            "lr_decay_iters": iters, "warmup_iters": max(1, iters // 20),  # warmup: 5 % of the run's own budget
            "seed": seed, "dataset": "shakespeare_char", "data_dir": repo_relative(data_dir),
            "out_dir": repo_relative(run_dir)}


class StepFlops:
    """Training FLOPs of one optimizer step of each label at a protocol's shape (flops.training_step_flops on a
    batch of the label's own objective), computed once per label."""

    def __init__(self, vocab_size):
        self.vocab_size, self.cache = vocab_size, {}

    def __call__(self, proto, label):
        key = (label, json.dumps([proto["shape"], proto["recipe"]["batch_size"]], sort_keys=True))
        if key not in self.cache:
            import torch
            import variants
            from infra import flops
            _, variant, own = label_spec(label)
            spec = variants.get(variant)
            config = spec.config_class(**{**proto["shape"], **own, "vocab_size": self.vocab_size})
            with torch.random.fork_rng():
                torch.manual_seed(0)
                model = spec.build(config)
                gen = torch.Generator().manual_seed(0)
                shape = (proto["recipe"]["batch_size"], config.block_size)
                x, y = (torch.randint(0, self.vocab_size, shape, generator=gen) for _ in range(2))
                batch = spec.objective.prepare(config, x, y, generator=gen)
                self.cache[key] = flops.training_step_flops(model, spec.objective, batch)
        return self.cache[key]


def budget_iters(proto, label, step_flops):
    """Iterations of a label's run: the protocol's, or under budget = "flops" for a label whose step costs more than
    its baseline's (beyond flops_tolerance), as many as the baseline's total training FLOPs pay for."""
    iters = proto["iters"]
    if proto["budget"] == "tokens":
        return iters
    own, base = step_flops(proto, label), step_flops(proto, baseline_of(proto, label))
    if own <= base * (1 + proto.get("flops_tolerance", 0.0)):
        return iters
    return math.floor(iters * base / own)


@dataclass(frozen=True)
class Cell:
    """One run a protocol asks for; lr and run_dir are None while it waits for another protocol's results."""
    protocol: str
    label: str
    seed: int
    lr: float | None
    iters: int
    run_dir: Path | None
    waiting: str = ""  # what it waits for


def labels_of(proto, out, selected, step_flops, memo):
    """The protocol's labels (or those selected on the command line, its baseline first), or, for
    "best_per_family", the baseline and each causal family's label with the lowest mean final loss in another
    protocol. The second value names a protocol still missing results (then the list may be short)."""
    if selected:
        return list(dict.fromkeys([proto["baseline"], *selected])), ""
    if proto["labels"] == "all":
        return [*CAUSAL, *ENCODERS], ""
    if proto["labels"] != "best_per_family":
        return list(proto["labels"]), ""
    source = memo.protocol(proto["best_per_family_from"])
    losses = {}
    for cell in cells_of(source, out, (), step_flops, memo):
        losses.setdefault(cell.label, []).append(memo.final_loss(cell))
    families, incomplete = {}, set()
    for label, found in losses.items():
        family = label_spec(label)[0]
        if family in ("encoders", "baseline") or label == source["baseline"]:
            continue
        if None in found:
            incomplete.add(family)
        else:
            families.setdefault(family, []).append((statistics.mean(found), label))
    best = [min(members)[1] for family, members in families.items() if family not in incomplete]
    return [proto["baseline"], *best], source["name"] if incomplete else ""


def best_rate(proto, out, label, step_flops, memo):
    """(the label's learning rate with the lowest final loss in the best_from protocol's runs, or None while any of
    them is unfinished; the protocol's name)."""
    source = memo.protocol(proto["best_from"])
    found = []
    for cell in cells_of(source, out, (label,), step_flops, memo):
        if cell.label == label:
            loss = memo.final_loss(cell)
            if loss is None:
                return None, source["name"]
            found.append((loss, cell.lr))
    return (min(found)[1] if found else None), source["name"]


def cells_of(proto, out, selected, step_flops, memo):
    """Every run the protocol asks for, seed-major (all labels' first seed first, so a partial sitting already
    compares every label), then label, then rate."""
    labels, waiting = labels_of(proto, out, selected, step_flops, memo)
    cells = []
    for seed in proto["seeds"]:
        for label in labels:
            iters = budget_iters(proto, label, step_flops)
            if proto["learning_rates"] == "best":
                lr, source = best_rate(proto, out, label, step_flops, memo)
                rates, why = ([lr], "") if lr is not None else ([None], f"the {source} runs of {label}")
            else:
                rates, why = proto["learning_rates"], ""
            for lr in rates:
                run_dir = run_dir_of(out, label, seed, lr, iters) if lr is not None else None
                cells.append(Cell(proto["name"], label, seed, lr, iters, run_dir, why))
    if waiting:
        cells.append(Cell(proto["name"], FAMILY_BEST, 0, None, proto["iters"], None,
                          f"every run of {waiting}"))
    return cells


FAMILY_BEST = "(each family's best)"  # the cell standing for labels not known yet


class Memo:
    """Protocol files and final losses read once per pass."""

    def __init__(self):
        self.protocols, self.losses = {}, {}

    def protocol(self, name):
        if name not in self.protocols:
            self.protocols[name] = read_protocol(name)
        return self.protocols[name]

    def final_loss(self, cell):
        if cell.run_dir is None:
            return None
        if cell.run_dir not in self.losses:
            final = final_eval(read_records(cell.run_dir), cell.iters)
            self.losses[cell.run_dir] = None if final is None else final[METRIC]
        return self.losses[cell.run_dir]


# ---- the runs --------------------------------------------------------------------------------------------------

def repo_relative(path):
    """A path inside the repository as a string relative to its root, any other one absolute. A relative path is
    taken relative to the root, where train.py runs."""
    path = (REPO / path).resolve()  # an absolute path stays itself
    try:
        return path.relative_to(REPO).as_posix()
    except ValueError:
        return str(path)


LOCATIONS = ("out_dir", "data_dir")  # compared in their repository-relative form
WHEREVER = ("device",)  # where a run trains is not part of what it is


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
        if key in WHEREVER:
            continue
        if key in LOCATIONS:
            same = key not in saved or repo_relative(saved[key]) == repo_relative(value)
        else:
            same = saved.get(key) == json.loads(json.dumps(value))
        if not same:
            raise ProtocolError(f"{run_dir} was trained with {key}={saved.get(key)!r}, this protocol asks for "
                                f"{value!r}; use another --out or the protocol it was trained under")


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


def unique_runs(cells):
    """The cells with a run directory, each directory once (protocols share runs), in order."""
    seen = {}
    for cell in cells:
        if cell.run_dir is not None and cell.run_dir not in seen:
            seen[cell.run_dir] = cell
    return list(seen.values())


def seconds_per_iter(out, label):
    """Measured wall seconds per iteration of a label's finished runs (every sitting, startup and evals included),
    or None before its first."""
    rates = []
    for wall_log in sorted((out / "runs" / label).glob("**/wall.jsonl")):
        config = json.loads((wall_log.parent / "config.json").read_text())
        if final_eval(read_records(wall_log.parent), config["max_iters"]):
            rates.append(sum(json.loads(l)["wall_s"] for l in wall_log.read_text().splitlines()) / config["max_iters"])
    return statistics.median(rates) if rates else None


def estimate_s(out, cell, step_flops, proto):
    """A run's expected wall seconds on one thread: its label's measured seconds per iteration, or the baseline's
    scaled by the FLOPs per step. None where neither is known."""
    if cell.label == FAMILY_BEST:
        return None
    rate = seconds_per_iter(out, cell.label)
    if rate is None:
        base = baseline_of(proto, cell.label)
        base_rate = seconds_per_iter(out, base)
        if base_rate is None:
            return None
        rate = base_rate * step_flops(proto, cell.label) / step_flops(proto, base)
    done = last_iter(read_records(cell.run_dir)) if cell.run_dir is not None and cell.run_dir.is_dir() else 0
    return rate * (cell.iters - min(done, cell.iters))


def free_slots(slots, busy):
    """Indices of the slots no run occupies (slots may repeat a device name: --jobs=2 is cpu, cpu)."""
    return [i for i in range(len(slots)) if i not in busy]


def run_protocols(protos, out, data_dir, selected, slots, step_flops):
    """Train every unfinished run the protocols ask for, one per slot (a device; on a CPU, N one-thread slots).
    Runs waiting for another protocol's results (a best rate, a family's best label) start as soon as those are in.
    Returns the number of runs that stopped unfinished or wait."""
    running, failed, walls, started = {}, set(), [], 0
    for signum in (signal.SIGINT, signal.SIGTERM):  # both stop the sitting cleanly (below), even in the background
        signal.signal(signum, interrupt)

    def pending():
        memo = Memo()
        cells = [c for p in protos for c in cells_of(p, out, selected, step_flops, memo)]
        runs = unique_runs(cells)
        finished = [c for c in runs if memo.final_loss(c) is not None]
        busy = {info[0].run_dir for info in running.values()}
        todo = [c for c in runs if c not in finished and c.run_dir not in failed and c.run_dir not in busy]
        waiting = [c for c in cells if c.run_dir is None]
        return runs, finished, todo, waiting

    check_runs(protos, out, data_dir, selected, step_flops)
    runs, finished, todo, waiting = pending()
    print(f"{len(finished)} of {len(runs)} runs finished, {len(todo)} to train on {len(slots)} slot(s) "
          f"({', '.join(slots)})" + (f"; {len(waiting)} wait for other results" if waiting else ""), flush=True)
    try:
        while True:
            free = free_slots(slots, [info[1] for info in running.values()])
            while todo and free:
                cell, slot = todo.pop(0), free.pop(0)
                args = train_args(by_name(protos, cell.protocol), cell.label, cell.seed, cell.lr, cell.iters,
                                  data_dir, cell.run_dir, device=slots[slot])
                check_same_protocol(cell.run_dir, args)
                at = last_iter(read_records(cell.run_dir)) if (cell.run_dir / "ckpt.pt").is_file() else 0
                started += 1
                how = f"resume from its checkpoint; logged up to iter {at}" if at else "scratch"
                print(f"[{started}] start {describe(cell)} on {slots[slot]} ({how})", flush=True)
                running[start(args, cell.run_dir)] = (cell, slot, at, time.time())
            if not running:
                break
            time.sleep(1)
            for proc in [p for p in running if p.poll() is not None]:
                cell, slot, at, t0 = running.pop(proc)
                wall = log_sitting(cell.run_dir, at, t0, proc.returncode)
                done = final_eval(read_records(cell.run_dir), cell.iters)
                if done is None:
                    failed.add(cell.run_dir)
                    why = "stopped by a signal (checkpoint written)" if proc.returncode == 0 else \
                        f"FAILED (exit {proc.returncode}); see {cell.run_dir / 'train.log'}"
                    print(f"  {describe(cell)} {why}", flush=True)
                    continue
                relative_locations(cell.run_dir)
                walls.append(wall / max(cell.iters - at, 1))
                runs, finished, todo, waiting = pending()
                left = sum(c.iters for c in todo) + sum(info[0].iters for info in running.values())
                eta = statistics.mean(walls) * left / len(slots)
                print(f"  {describe(cell)} finished in {timedelta(seconds=round(wall))}: {METRIC} {done[METRIC]:.4f}; "
                      f"{len(todo) + len(running)} runs left, ETA {timedelta(seconds=round(eta))}"
                      + (f", {len(waiting)} waiting" if waiting else ""), flush=True)
    except KeyboardInterrupt:
        for proc in running:  # train.py finishes its step, writes ckpt.pt and exits 0
            proc.send_signal(signal.SIGTERM)
        for proc, (cell, slot, at, t0) in running.items():
            proc.wait()
            log_sitting(cell.run_dir, at, t0, proc.returncode)
        sys.exit("interrupted: the running runs wrote checkpoints; run the same command again to continue")
    runs, finished, todo, waiting = pending()
    return len(runs) - len(finished) + len(waiting)


def check_runs(protos, out, data_dir, selected, step_flops):
    """Refuse, before training or reporting anything, a run on disk (finished or not) that was trained with other
    settings than those its protocol asks for."""
    for cell in unique_runs([c for p in protos for c in cells_of(p, out, selected, step_flops, Memo())]):
        check_same_protocol(cell.run_dir, train_args(by_name(protos, cell.protocol), cell.label, cell.seed, cell.lr,
                                                     cell.iters, data_dir, cell.run_dir))


def relative_locations(run_dir):
    """config.json with out_dir and data_dir relative to the repository root where they lie inside it (train.py
    records data_dir absolute), so a finished run's committed logs hold no machine's paths and a clone anywhere reports
    them."""
    path = run_dir / "config.json"
    saved = json.loads(path.read_text())
    fixed = {k: repo_relative(v) if k in LOCATIONS else v for k, v in saved.items()}
    if fixed != saved:
        path.write_text(json.dumps(fixed, indent=1) + "\n")


def by_name(protos, name):
    return next(p for p in protos if p["name"] == name)


def describe(cell):
    return f"{cell.label} seed{cell.seed} lr {cell.lr:g} {cell.iters} iters"


def interrupt(signum, frame):
    raise KeyboardInterrupt


def log_sitting(run_dir, at, t0, returncode):
    """One line per sitting in wall.jsonl (the table's wall time is their sum); returns this sitting's seconds."""
    wall = time.time() - t0
    with open(run_dir / "wall.jsonl", "a") as f:
        f.write(json.dumps({"from_iter": at, "to_iter": last_iter(read_records(run_dir)), "wall_s": wall,
                            "returncode": returncode}) + "\n")
    return wall


# ---- the plan --------------------------------------------------------------------------------------------------

REPORTED = ("equal_tokens", "equal_flops", "lr_sweep", "lr_edge", "tuned", "longer")  # the default protocols, in this order


def run_wall_s(run_dir):
    """Wall seconds of every sitting of a run (startup and evals included), or None without wall.jsonl."""
    path = run_dir / "wall.jsonl"
    if not path.is_file():
        return None
    return sum(json.loads(line)["wall_s"] for line in path.read_text().splitlines())


def plan_rows(protos, out, selected, step_flops):
    """Every run of the protocols, grouped as (protocol, label, rate, iterations) with its seeds done and to do,
    and the machine time spent and still needed. A run that several protocols share is counted under the first."""
    memo, counted, rows = Memo(), set(), []
    for proto in protos:
        groups = {}
        for cell in cells_of(proto, out, selected, step_flops, memo):
            groups.setdefault((cell.label, cell.lr, cell.iters, cell.waiting), []).append(cell)
        for (label, lr, iters, waiting), cells in groups.items():
            done = [c for c in cells if memo.final_loss(c) is not None]
            spent = left = 0.0
            unknown = False
            for c in cells:
                if c.run_dir in counted:
                    continue
                if c.run_dir is not None:
                    counted.add(c.run_dir)
                if c in done:
                    spent += run_wall_s(c.run_dir) or 0.0
                else:
                    estimate = estimate_s(out, c, step_flops, proto)
                    unknown |= estimate is None
                    left += estimate or 0.0
            shared = [c for c in cells if c.run_dir is not None and c not in done] == [] and spent == 0 and done
            rows.append({"protocol": proto["name"], "label": label, "lr": lr, "iters": iters,
                         "done": [c.seed for c in done], "todo": [c.seed for c in cells if c not in done],
                         "waiting": waiting, "spent_s": spent, "left_s": None if unknown else left,
                         "shared": bool(shared)})
    return rows


def hours(seconds):
    return f"{seconds / 3600:.2f}"


def plan_markdown(rows):
    lines = ["# Plan: every run the protocols ask for", "",
             "Generated by results/compare/compare.py from the runs' logs. Machine time is one-thread wall time "
             "(startup and evaluations included); a run two protocols share is counted under the first. Time left "
             "is each label's measured seconds per iteration times the iterations still to run (the baseline's, "
             "scaled by FLOPs per step, for a label not yet measured).", ""]
    for name in dict.fromkeys(r["protocol"] for r in rows):
        mine = [r for r in rows if r["protocol"] == name]
        spent = sum(r["spent_s"] for r in mine)
        left = [r["left_s"] for r in mine if r["todo"]]
        runs_done = sum(len(r["done"]) for r in mine)
        runs = runs_done + sum(len(r["todo"]) for r in mine)
        left_text = "unknown" if None in left else f"{hours(sum(left))} h"
        lines += [f"## {name}: {runs_done} of {runs} runs done; {hours(spent)} thread-hours spent, {left_text} left",
                  ""]
        cells = []
        for r in mine:
            status = ("done" if not r["todo"] else f"waiting for {r['waiting']}" if r["waiting"] else
                      "to run" if not r["done"] else "partly done")
            cells.append([r["label"], "-" if r["lr"] is None else f"{r['lr']:g}", r["iters"],
                          ",".join(map(str, r["done"])) or "-", ",".join(map(str, r["todo"])) or "-", status,
                          "shared" if r["shared"] else f"{r['spent_s']:.0f}",
                          "-" if not r["todo"] else "?" if r["left_s"] is None else f"{r['left_s']:.0f}"])
        lines += [markdown_table(["label", "lr", "iters", "seeds done", "seeds to run", "status", "spent s",
                                  "left s (est.)"], cells), ""]
    return "\n".join(lines)


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


def view(proto, out, selected, step_flops, memo):
    """A protocol as the tables and plots read it: each label's (family, variant, keys), learning rates,
    iterations and run directories per (rate, seed)."""
    labels = {}
    for cell in cells_of(proto, out, selected, step_flops, memo):
        if cell.run_dir is None:
            continue
        entry = labels.setdefault(cell.label, {"spec": label_spec(cell.label), "iters": cell.iters, "runs": {}})
        entry["runs"].setdefault(cell.lr, {})[cell.seed] = cell.run_dir
    return {"name": proto["name"], "description": proto.get("description", ""), "labels": labels,
            "seeds": proto["seeds"], "baseline": proto["baseline"], "encoder_baseline": proto["encoder_baseline"],
            "proto": proto}


def finished(entry, lr):
    """{seed: run summary} of a label's finished runs at one rate."""
    runs = {seed: run_summary(run_dir, entry["iters"]) for seed, run_dir in entry["runs"].get(lr, {}).items()}
    return {seed: s for seed, s in runs.items() if s is not None}


def only_rate(entry):
    """The one learning rate a label runs at in a protocol with one rate per label."""
    (lr,) = entry["runs"]
    return lr


def summarize(v, out):
    """The detailed table of a protocol with one rate per label, as a dict, from the logs of its finished runs."""
    rows = {}
    for label, entry in v["labels"].items():
        family, variant, own = entry["spec"]
        lr = only_rate(entry)
        seeds = finished(entry, lr)
        if not seeds:
            continue
        finals = [s["final"] for s in seeds.values()]
        losses = [f[METRIC] for f in finals]
        row = {"family": family, "variant": variant, "keys": own, "lr": lr, "iters": entry["iters"],
               "n": len(seeds), "seeds": seeds, "loss": mean_std(losses),
               "params": count_params(entry["runs"][lr][min(seeds)]),
               "tokens_per_s": mean_or_none([s["tokens_per_s"] for s in seeds.values()]),
               "wall_s": mean_or_none([s["wall_s"] for s in seeds.values()])}
        if family == "encoders":
            row["mlm_acc"] = mean_std([f["val/mlm_acc"] for f in finals])
            task = pair_task(finals)
            if task:
                row["pair"] = pair_summary(task, [f[f"val/{task}_acc"] for f in finals], v["proto"]["recipe"])
        else:
            row["bpc"] = mean_std([x / math.log(2) for x in losses])  # char data: bits per character
        rows[label] = row
    for label, row in rows.items():
        base = rows.get(v["baseline"])
        if row["family"] == "encoders" or base is None or label == v["baseline"]:
            continue
        diff, se = diff_se([s["final"][METRIC] for s in row["seeds"].values()],
                           [s["final"][METRIC] for s in base["seeds"].values()])
        row.update(diff=diff, se=se, verdict=verdict(diff, se))
    return {"protocol": {"name": v["name"], "data": data_description(out), "metric": METRIC, "seeds": v["seeds"],
                         "budget": v["proto"]["budget"], "iters": v["proto"]["iters"],
                         "min_lr_divisor": v["proto"]["min_lr_divisor"], **v["proto"]["shape"],
                         **v["proto"]["recipe"]},
            "rows": rows}


def data_description(out):
    meta = json.loads((out / "data" / "meta.json").read_text())
    return (f"tiny Shakespeare, {meta['tokenizer']} level (vocabulary {meta['vocab_size']}), first 90 % train / "
            f"last 10 % val")


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


def shape_text(p):
    """The shared part of a protocol in one sentence."""
    return (f"Shape {p['n_layer']} layers / {p['n_head']} heads / width {p['n_embd']}, block {p['block_size']}, "
            f"batch {p['batch_size']}, AdamW (warmup 5 % of each run's iterations, cosine to lr / "
            f"{p['min_lr_divisor']:g}), beta2 {p['beta2']}, weight decay {p['weight_decay']}, grad clip "
            f"{p['grad_clip']}, dropout {p['dropout']}. Each eval: {p['eval_iters']} batches per split.")


def markdown(table):
    """The detailed tables of one protocol (one rate per label)."""
    p, rows = table["protocol"], table["rows"]
    n_seeds = len(p["seeds"])
    lines = [f"## Details: {p['name']}", "",
             f"Seeds {', '.join(map(str, p['seeds']))}; budget: {p['budget']} ({p['iters']} iterations"
             + (" for the baseline's FLOPs)." if p["budget"] == "flops" else ")."), ""]
    causal = {k: v for k, v in rows.items() if v["family"] != "encoders"}
    if causal:
        cells = []
        for label, r in causal.items():
            diff = "-" if "diff" not in r else f"{r['diff']:+.4f}" + (f" ± {r['se']:.4f}" if math.isfinite(r["se"])
                                                                       else "")
            cells.append([label, r["family"], f"{r['lr']:g}", r["iters"], f"{r['n']}/{n_seeds}", pm(r["loss"]),
                          pm(r["bpc"]), diff, r.get("verdict", "-"), f"{r['params']:,}",
                          number(r["tokens_per_s"], ",.0f"), number(r["wall_s"], ".0f")])
        lines += ["### Causal variants against gpt", "", markdown_table(
            ["label", "family", "lr", "iters", "seeds", "val loss", "val bpc", "Δ loss vs gpt ± se", "verdict",
             "params", "tokens/s", "wall s"], cells)]
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
    encoders = {k: v for k, v in rows.items() if v["family"] == "encoders"}
    if encoders:
        cells = []
        for label, r in encoders.items():
            pair = r.get("pair")
            acc = "-" if not pair else pm(pair["acc"], 3) if pair["above_chance"] else "at chance"
            cells.append([label, f"{r['lr']:g}", r["iters"], f"{r['n']}/{n_seeds}", pm(r["loss"]), pm(r["mlm_acc"]),
                          pair["task"] if pair else "none", acc, f"{r['params']:,}",
                          number(r["tokens_per_s"], ",.0f"), number(r["wall_s"], ".0f")])
        lines += ["### Encoders (masked LM)", "", markdown_table(
            ["label", "lr", "iters", "seeds", "MLM loss", "MLM accuracy", "pair task", "pair accuracy", "params",
             "tokens/s", "wall s"], cells)]
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


# ---- the verdicts across protocols ------------------------------------------------------------------------------

# column titles of the standard protocols; any other protocol is titled by its name
TITLES = {"equal_tokens": "Δ equal tokens", "equal_flops": "Δ equal FLOPs", "lr_edge": "Δ at lr 1e-2 (seed 1)",
          "tuned": "Δ at best rates",
          "longer": "Δ 4x longer"}


def losses_at(entry, lr):
    return {seed: s["final"][METRIC] for seed, s in finished(entry, lr).items()}


def contrast(v, label):
    """A label against its baseline in a protocol with one rate per label: Δ of the mean final losses, its standard
    error and verdict, with the seeds each side has finished; None before either has one."""
    base = v["baseline"] if label_spec(label)[0] != "encoders" else v["encoder_baseline"]
    if label not in v["labels"] or base not in v["labels"]:
        return None
    mine, theirs = v["labels"][label], v["labels"][base]
    a, b = losses_at(mine, only_rate(mine)), losses_at(theirs, only_rate(theirs))
    if not a or not b:
        return None
    diff, se = diff_se(list(a.values()), list(b.values()))
    return {"diff": diff, "se": se, "verdict": verdict(diff, se), "n": len(a), "n_base": len(b),
            "asked": len(v["seeds"]), "lr": only_rate(mine), "base_lr": only_rate(theirs), "iters": mine["iters"]}


def sweep(v, label):
    """A label across a protocol's rates on its first seed: its final loss and Δ against the baseline at the same
    rate, and the best rate (lowest loss) once every rate has finished."""
    base = v["baseline"] if label_spec(label)[0] != "encoders" else v["encoder_baseline"]
    if label not in v["labels"]:
        return None
    seed = v["seeds"][0]
    rates = {}
    for lr in sorted(v["labels"][label]["runs"]):
        loss = losses_at(v["labels"][label], lr).get(seed)
        base_loss = losses_at(v["labels"][base], lr).get(seed) if base in v["labels"] else None
        rates[f"{lr:g}"] = {"loss": loss, "diff": None if loss is None or base_loss is None else loss - base_loss}
    done = {lr: r["loss"] for lr, r in rates.items() if r["loss"] is not None}
    best = min(done, key=done.get) if len(done) == len(rates) else None
    return {"seed": seed, "rates": rates, "best": best}


def verdict_rows(views, step_flops):
    """For every label: params, FLOPs per step against its baseline, and its result in every protocol."""
    first = views[0]["proto"]
    labels = list(dict.fromkeys(l for v in views for l in v["labels"]))
    rows = {}
    for label in labels:
        base = first["encoder_baseline"] if label_spec(label)[0] == "encoders" else first["baseline"]
        runs = [d for v in views if label in v["labels"] for by_seed in v["labels"][label]["runs"].values()
                for d in by_seed.values() if (d / "config.json").is_file()]
        row = {"family": label_spec(label)[0], "baseline": base,
               "params": count_params(runs[0]) if runs else None,
               "flops_ratio": step_flops(first, label) / step_flops(first, base), "protocols": {}}
        for v in views:
            multi = any(len(e["runs"]) > 1 for e in v["labels"].values())
            row["protocols"][v["name"]] = sweep(v, label) if multi else contrast(v, label)
        rows[label] = row
    return rows


def delta_text(c):
    """A contrast as one cell: 'Δ ± se verdict', the seeds when fewer than asked, or 'missing'."""
    if c is None:
        return "missing"
    text = f"{c['diff']:+.4f}" + (f" ± {c['se']:.4f} {c['verdict']}" if math.isfinite(c["se"]) else "")
    if c["n"] < c["asked"] or c["n_base"] < c["asked"]:
        text += f" ({c['n']}/{c['asked']} seeds)"
    return text


def sweep_text(s):
    if s is None:
        return "missing"
    shown = " / ".join("-" if r["diff"] is None else f"{r['diff']:+.3f}" for r in s["rates"].values())
    return f"{s['best'] or '?'} ({shown})"


def verdict_markdown(rows, views):
    names = [v["name"] for v in views]
    multi = {v["name"] for v in views if any(len(e["runs"]) > 1 for e in v["labels"].values())}
    rates = {n: next((" / ".join(s["rates"]) for r in rows.values() if (s := r["protocols"].get(n))), "")
             for n in multi}
    head = ["label", "family", "params", "FLOPs/step"] + [
        f"{n}: best lr (Δ at {rates[n]}, seed 1)" if n in multi else TITLES.get(n, n) for n in names]
    lines = []
    for title, encoders in (("Causal variants against gpt", False), ("Encoders against bert", True)):
        cells = []
        for label, r in rows.items():
            if (r["family"] == "encoders") != encoders or label == r["baseline"]:
                continue
            cells.append([label, r["family"], "-" if r["params"] is None else f"{r['params']:,}",
                          f"{r['flops_ratio']:.2f}x"] + [
                sweep_text(r["protocols"][n]) if n in multi else delta_text(r["protocols"][n]) for n in names])
        if cells:
            lines += [f"## {title}", "", markdown_table(head, cells), ""]
    return lines


# ---- plots -----------------------------------------------------------------------------------------------------

def eval_curves(entry, metric):
    """(eval iters, values per seed) of a label's finished runs (at its one rate), on the iters every seed logged."""
    runs = [read_records(run_dir) for run_dir in entry["runs"][only_rate(entry)].values()]
    runs = [[r for r in recs if r.get("kind") == "eval"] for recs in runs if final_eval(recs, entry["iters"])]
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


def plot_curves(v, labels, path):
    """One panel per family: its labels' validation curves (mean ± std over seeds) against the baseline's."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    iters = v["proto"]["iters"]
    families = {}
    for label in labels:
        families.setdefault(v["labels"][label]["spec"][0], []).append(label)
    panels = [(f, ls) for f, ls in families.items() if f != "baseline"] or list(families.items())
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4 * rows), squeeze=False)
    start = iters // 5  # the fast early phase would squash the differences that matter
    for ax, (family, members) in zip(axes.flat, panels):
        base = v["baseline"]
        shown = members if family == "encoders" or base not in labels else [base, *members]
        for label in dict.fromkeys(shown):
            steps, per_seed = eval_curves(v["labels"][label], METRIC)
            keep = [i for i, s in enumerate(steps) if s >= start]
            style = {"color": "black", "linestyle": "--"} if label == base and family != "baseline" else {}
            plot_band(ax, [steps[i] for i in keep], [[v[i] for i in keep] for v in per_seed], label, **style)
        ylabel = "val MLM loss (nats)" if family == "encoders" else "val loss (nats/char)"
        ax.set(title=family, xlabel="iteration", ylabel=ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"{v['name']}: validation loss, mean ± std over seeds ({v['baseline']} dashed)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def gap_curve(v, label):
    """(x, Δ, se): a causal label's validation loss minus its baseline's over training, mean and standard error over
    seeds. Each eval sits at the same fraction of the baseline's run as of the label's own (a label stopped early at
    the baseline's FLOPs ends where the baseline does, at the same point of its cosine schedule), in baseline
    iterations; the baseline's per-seed curves are interpolated linearly there. The last Δ is the table's."""
    import numpy as np
    base_steps, base_seeds = eval_curves(v["labels"][v["baseline"]], METRIC)
    steps, per_seed = eval_curves(v["labels"][label], METRIC)
    x = np.array(steps) * base_steps[-1] / v["labels"][label]["iters"]
    own = np.array(per_seed)
    theirs = np.array([np.interp(x, base_steps, s) for s in base_seeds])
    se = np.sqrt(sum(a.var(0, ddof=1) / len(a) for a in (own, theirs) if len(a) > 1))
    return x, own.mean(0) - theirs.mean(0), se


def plot_gaps(v, labels, path):
    """One panel: every causal label's gap_curve against the baseline, past the fast early phase."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    base = v["baseline"]
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for label in labels:
        if label == base or label_spec(label)[0] == "encoders":
            continue
        x, diff, se = gap_curve(v, label)
        keep = x >= v["proto"]["iters"] // 5
        n = len(finished(v["labels"][label], only_rate(v["labels"][label])))
        line, = ax.plot(x[keep], diff[keep], label=f"{label} (n={n})")
        ax.fill_between(x[keep], (diff - se)[keep], (diff + se)[keep], color=line.get_color(), alpha=0.2)
    ax.axhline(0, color="black", linestyle="--", linewidth=1)
    n_base = len(finished(v["labels"][base], only_rate(v["labels"][base])))
    ax.set(xlabel=f"training progress ({base} iterations; shorter runs scaled to end with {base})",
           ylabel=f"Δ val loss vs {base} (nats/char)",
           title=f"{v['name']}: Δ validation loss against {base} (n={n_base}), mean ± se over seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_spans(v, out, labels):
    """Adaptive span: learned span (and period) per layer, final value, mean over heads, ± std over seeds, from the
    eval records; plus adaptive_attention_span.plot_spans (every head) of the seed-1 models."""
    span_labels = [l for l in labels if v["labels"][l]["spec"][1] == "adaptive_span"]
    if not span_labels:
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from infra import checkpoint
    import variants
    from adaptive_attention_span import plot_spans as plot_heads
    n_layer = v["proto"]["shape"]["n_layer"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for color, label in enumerate(span_labels):
        entry = v["labels"][label]
        seed_dirs = entry["runs"][only_rate(entry)]
        finals = [final_eval(read_records(d), entry["iters"]) for d in seed_dirs.values()]
        for ax, key in zip(axes, ("span_mean", "period_mean")):
            per_seed = [[r[f"model/{key}/{i}"] for i in range(n_layer)] for r in finals if r and f"model/{key}/0" in r]
            if per_seed:
                plot_band(ax, list(range(n_layer)), per_seed, label, marker="o", color=f"C{color}")
        seed_dir = seed_dirs.get(v["seeds"][0])
        if seed_dir and final_eval(read_records(seed_dir), entry["iters"]) and (seed_dir / "ckpt.pt").is_file():
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


def attention_analysis(v, out, labels):
    """tools/analysis.py on the seed-1 model of every causal label (entropy and mean attention distance per layer, mask
    statistics), into <out>/analysis, then one panel per family against gpt in attention.png. analysis.json is
    redone only when a checkpoint is newer or a label is missing; without the checkpoints (only the logs kept) the
    existing analysis.json is plotted."""
    seed = v["seeds"][0]
    first = {l: v["labels"][l]["runs"][only_rate(v["labels"][l])].get(seed) for l in labels}
    labels = [l for l in labels if v["labels"][l]["spec"][0] != "encoders" and first[l]
              and final_eval(read_records(first[l]), v["labels"][l]["iters"])]
    ckpt = {l: first[l] / "ckpt.pt" for l in labels}
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
        families.setdefault(v["labels"][label]["spec"][0], []).append(label)
    panels = [(f, ls) for f, ls in families.items() if f != "baseline"] or list(families.items())
    fig, axes = plt.subplots(2, len(panels), figsize=(4.2 * len(panels), 7), squeeze=False)
    for col, (family, members) in enumerate(panels):
        base = v["baseline"]
        for label in dict.fromkeys([base, *members] if base in reports else members):
            layers = reports[label]["layers"]
            style = {"color": "black", "linestyle": "--"} if label == base and family != "baseline" else {}
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


def plot_sweep(v, path):
    """Final validation loss (first seed) against the learning rate, one panel per family, its baseline dashed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    families = {}
    for label in v["labels"]:
        families.setdefault(label_spec(label)[0], []).append(label)
    panels = [(f, ls) for f, ls in families.items() if f != "baseline"] or list(families.items())
    cols = min(4, len(panels))
    fig, axes = plt.subplots(math.ceil(len(panels) / cols), cols, figsize=(4.2 * cols, 3.6 * math.ceil(
        len(panels) / cols)), squeeze=False)
    for ax, (family, members) in zip(axes.flat, panels):
        base = v["encoder_baseline"] if family == "encoders" else v["baseline"]
        for label in dict.fromkeys([base, *members] if base in v["labels"] else members):
            s = sweep(v, label)
            points = [(float(lr), r["loss"]) for lr, r in s["rates"].items() if r["loss"] is not None]
            if not points:
                continue
            style = {"color": "black", "linestyle": "--"} if label == base and family != "baseline" else {}
            ax.plot(*zip(*points), marker="o", label=label, **style)
        ax.set_xscale("log")
        rates = sorted({lr for label in members for lr in v["labels"][label]["runs"]})
        ax.set_xticks(rates, [f"{lr:g}" for lr in rates])
        ax.minorticks_off()
        ax.set(title=family, xlabel="peak learning rate", ylabel="final val loss (seed 1)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"{v['name']}: final validation loss against the learning rate (baselines dashed)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_reports(protos, out, selected, step_flops, plan_only=False):
    """plan.md (every run, done or not, and the machine time); table.md and table.json (the verdicts across the
    protocols, then the details of the first protocol with one rate per label); the plots."""
    text = plan_markdown(plan_rows(protos, out, selected, step_flops))
    if plan_only:
        print(text)
        return
    (out / "plan.md").write_text(text + "\n")
    memo = Memo()
    views = [view(p, out, selected, step_flops, memo) for p in protos]
    single = [v for v in views if v["labels"] and all(len(e["runs"]) == 1 for e in v["labels"].values())]
    multi = [v for v in views if any(len(e["runs"]) > 1 for e in v["labels"].values())]
    rows = verdict_rows(views, step_flops)
    details = {v["name"]: summarize(v, out) for v in single}
    first = views[0]["proto"]
    lines = [f"# Comparison: {data_description(out)}", "", shape_text({**first["shape"], **first["recipe"],
                                                                       "min_lr_divisor": first["min_lr_divisor"]}),
             "Generated by results/compare/compare.py from the runs' logs; plan.md lists every run and the machine "
             "time.", "", "Protocols:"]
    lines += [f"- {v['name']}: {v['description']}" for v in views] + [""]
    lines += verdict_markdown(rows, views)
    lines += ["Notes:",
              "- Δ = mean(label) - mean(baseline) of the final validation loss (nats; the encoders' is the masked-token "
              "loss); se = sqrt(s_a²/n_a + s_b²/n_b) over seeds (independent runs). 'better' / 'worse' only when "
              "|Δ| > 2 se, otherwise 'within noise'. A cell with fewer seeds than asked says so; 'missing': not run "
              "yet (plan.md).",
              "- FLOPs/step: training FLOPs of one step (forward + backward, infra/flops.py) against the baseline's. "
              "Under budget = flops a label above the tolerance trains floor(iters / ratio) iterations.",
              "- The sweep column: the rate with the lowest final loss on seed 1 ('?' until every rate has run), then "
              "Δ against the baseline at the same rate, rate by rate.",
              "- Each label in 'Δ at best rates' runs at its own best rate and the baseline at its own.", ""]
    if single:
        marked = [v for v in single if v["proto"].get("analysis")]
        lines += [markdown(details[(marked or single)[0]["name"]])]
    (out / "table.md").write_text("\n".join(lines))
    (out / "table.json").write_text(json.dumps({"protocols": {v["name"]: {k: v["proto"][k] for k in v["proto"]
                                                                          if k != "path"} for v in views},
                                                "verdicts": rows, "details": details}, indent=1) + "\n")
    # the protocol marked analysis = true gets curves.png, the span plots and the attention analysis of its seed-1
    # models; every other protocol with one rate per label gets curves_<name>.png, so no invocation overwrites them
    for v in single:
        done = list(details[v["name"]]["rows"])
        if not done:
            continue
        if v["proto"].get("analysis"):
            plot_curves(v, done, out / "curves.png")
            plot_spans(v, out, done)
            attention_analysis(v, out, done)
        else:
            plot_curves(v, done, out / f"curves_{v['name']}.png")
        if v["proto"]["labels"] == "best_per_family" and v["baseline"] in done:
            plot_gaps(v, done, out / f"gaps_{v['name']}.png")
    for v in multi:
        plot_sweep(v, out / f"sweep_{v['name']}.png")
    print(f"wrote {out / 'table.md'}, table.json, plan.md and the plots")


# ---- main ------------------------------------------------------------------------------------------------------

def main(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocol", default=",".join(REPORTED),
                        help="protocol names (protocols/<name>.toml) or .toml paths, comma-separated, run in order")
    parser.add_argument("--labels", default="", help="only these labels (comma-separated; the baseline is added); "
                                                     "any registered variant name is a label")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "compare")
    parser.add_argument("--jobs", type=int, default=2, help="on a CPU: train.py processes side by side, one thread each")
    parser.add_argument("--devices", default="", help="cuda:0,cuda:1,...: one run per device (instead of --jobs)")
    parser.add_argument("--plan", action="store_true", help="train nothing: list every run, done or not, with its "
                                                            "measured or estimated time")
    parser.add_argument("--report", action="store_true", help="train nothing: the tables and plots of the runs done")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be >= 1")
    slots = [d for d in args.devices.split(",") if d] or ["cpu"] * args.jobs
    selected = [l for l in args.labels.split(",") if l]
    try:
        protos = [read_protocol(name) for name in args.protocol.split(",") if name]
        for label in selected:
            label_spec(label)
    except ProtocolError as e:
        sys.exit(f"error: {e}")
    if not protos:
        parser.error("--protocol names no protocol")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    print(f"protocols {', '.join(p['name'] for p in protos)} into {out}")
    data_dir = prepare_data(out)  # the table's header describes the data, so --report needs it too (seconds)
    import torch
    torch.set_num_threads(1)
    step_flops = StepFlops(json.loads((data_dir / "meta.json").read_text())["vocab_size"])
    unfinished = 0
    try:
        if not (args.report or args.plan):
            unfinished = run_protocols(protos, out, data_dir, selected, slots, step_flops)
        check_runs(protos, out, data_dir, selected, step_flops)
        write_reports(protos, out, selected, step_flops, plan_only=args.plan)
    except ProtocolError as e:
        sys.exit(f"error: {e}")
    if unfinished:
        sys.exit(f"{unfinished} runs are unfinished or wait for other results; rerun to continue them")


if __name__ == "__main__":
    main(sys.argv[1:])

"""Golden outputs of every registered variant at a tiny CPU shape, so a refactor can prove it keeps every number.

    python tests/golden/golden.py write     # record tests/golden/<case>.pt and environment.json from the code as it is
    python tests/golden/golden.py check     # recompute and compare (tests/test_golden.py runs the same comparison)
    python tests/golden/golden.py measure   # print how far this environment's numbers are from the recorded ones

The comparison is bit for bit where the environment matches the recording's (environment.json: torch version, ATen
CPU capability, threads, CPU model and flags) and within the measured tolerances of TOLERANCE everywhere else: another
CPU's kernels sum in another order, so fp32 results move by ~1e-7 (try ATEN_CPU_CAPABILITY=default).

Per case: the initial weights of a fresh model (seed 0), the logits of a fixed batch, greedy generation of 20 tokens
with and without the KV cache (causal models), fill-mask predictions (models that have them), the metrics of 20
training steps through train.py (1 thread, dropout on), and the checkpoint that run wrote.
"""
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SHARED = REPO.parent / "shared"
sys.path[:0] = [str(REPO), str(HERE.parent)]  # the project, and tests/ for test_golden and conftest

import variants  # noqa: E402

SHAPE = dict(n_layer=2, n_head=2, n_embd=32, block_size=64, dropout=0.1, bias=True)
TRAIN = ["--device=cpu", "--batch_size=4", "--learning_rate=2e-3", "--warmup_iters=3", "--lr_decay_iters=20",
         "--min_lr=2e-4", "--max_iters=20", "--eval_interval=10", "--eval_iters=2", "--log_interval=1", "--seed=7",
         "--gradient_accumulation_steps=2"]

TRAIN_INIT_SEED = 8_000_000_057  # train.py's mix_seed(7, 0)

# name: (variant, extra model fields). The fields switch on the options whose numbers must survive, and put the fast
# paths (banded windows and spans, duo's blocks, batched pairs) inside the 64-token shape.
CASES = {
    "gpt": ("gpt", {}),
    "char_gpt": ("char_gpt", {}),
    "llama": ("llama", {"n_kv_head": 1, "bias": False, "multiple_of": 16}),
    "drift_diffusion": ("drift_diffusion", {}),
    "drift_only": ("drift_diffusion", {"apply_diffusion": False}),
    "parallel_mean": ("parallel", {}),
    "parallel_concat_batched": ("parallel", {"bottleneck_method": "concat", "pair_impl": "batched"}),
    "duo_predict": ("duo_predict", {"duo_block": 8}),
    "duo_double_shift": ("duo_predict", {"duo_loss": "hf_double_shift", "duo_block": 8}),
    "rotating_head_lr": ("rotating_head", {"rope_freq_norm": True}),
    "rotating_head_gp": ("rotating_head", {"rotatinghead": "gp"}),
    "adaptive_span": ("adaptive_span", {"softness_span_mask": 4.0, "max_span": 8, "span_block": 8}),
    "span_periodic": ("adaptive_span", {"use_triangle_wave_masking": True, "softness_span_mask": 4.0,
                                         "max_span": 8, "span_block": 8}),
    "layerwise": ("layerwise", {"windows": [0, 8], "attn_block": 8}),
    "bert": ("bert", {}),
    "albert": ("albert", {"embedding_size": 16}),
    "deberta": ("deberta", {}),
    "deberta_no_emd": ("deberta", {"emd": False, "max_relative_positions": 16}),
}
# cases whose fresh initial weights differ from the recorded ones (their parts draw from the random stream in another
# order); loaded with the recorded initial weights they must still reproduce every other number
REBUILT = {"char_gpt", "llama", "bert", "albert", "deberta", "deberta_no_emd"}


# Tolerances outside the recording environment. Measured (`measure`) under ATEN_CPU_CAPABILITY=default, avx2 and avx512
# against a recording made with avx512 on another CPU: the largest deviations are in docs/design.md ("Golden outputs");
# each bound below is about ten times the largest deviation measured for its kind.
TOLERANCE = {
    "weights": 1e-5,       # initial weights (the normal sampler's vectorised and scalar paths differ)
    "outputs": 5e-6,       # logits, probabilities, losses and metric sums of one forward pass
    "train": 1e-4,         # a train.py record after up to 20 steps (losses, grad norms, learning rates)
    "accuracy": 1 / 128,   # accuracies of a record: a near-tie argmax may flip a token or two of the 256-512 counted
    "trained": 3e-4,       # the weights after 20 AdamW steps
    "margin": 1e-4,        # a greedy choice made by a smaller top-two logit gap may differ
}
# Tensors compare by max |new - old|; numbers by |new - old| / max(1, |old|) (metric sums run into the thousands).


def environment():
    """What decides the bits of a CPU result: equal environments reproduce the recording exactly."""
    cpu = {"model": platform.processor() or platform.machine(), "flags": ""}
    try:
        info = Path("/proc/cpuinfo").read_text()
        cpu["model"] = next(l.split(":", 1)[1].strip() for l in info.splitlines() if l.startswith("model name"))
        flags = next(l.split(":", 1)[1].split() for l in info.splitlines() if l.startswith("flags"))
        cpu["flags"] = hashlib.sha256(" ".join(sorted(flags)).encode()).hexdigest()[:16]
    except (OSError, StopIteration):
        pass
    return {"torch": torch.__version__, "capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads(), "cpu_model": cpu["model"], "cpu_flags": cpu["flags"]}


def shakespeare_dir(tmp):
    """tiny Shakespeare prepared by the real prepare script (65 characters)."""
    out = Path(tmp) / "shakespeare_char"
    if not (out / "meta.json").exists():
        subprocess.run([sys.executable, str(REPO / "data/shakespeare_char/prepare.py"), "--source",
                        str(SHARED / "data/shakespeare/input.txt"), "--out_dir", str(out)], check=True,
                       capture_output=True)
    return out


# ---- the project API the outputs are read through (the only part a redesign rewrites)

def objective(name):
    return variants.get(CASES[name][0]).objective


def build(name, state=None, seed=0):
    variant, extra = CASES[name]
    spec = variants.get(variant)
    config = spec.config_class(**{**SHAPE, "vocab_size": spec.objective.vocab_size(65), **extra})
    torch.manual_seed(seed)
    model = spec.build(config)
    if state is not None:
        model.load_state_dict(state)
    return model.eval()


def variant_objective(model):
    return next(v.objective for v in variants.VARIANTS.values() if type(model) is v.model_class)


def is_causal(model):
    return variant_objective(model).causal


def training_batch(model, x, y):
    return variant_objective(model).prepare(model.config, x, y, generator=torch.Generator().manual_seed(3))


def batch_outputs(model, batch):
    """(logits, loss) of the objective's training layout, and its eval metrics {name: (sum, count)}."""
    obj = variant_objective(model)
    logits, loss = obj.step(model, batch)
    metrics = {k: (float(s), float(n)) for k, (s, n) in obj.metrics(logits, batch).items()}
    return logits, loss, metrics


def plain_logits(model, x):
    return model(x)


def fill(model, segments, top_k=3):
    """Fill-mask predictions, or None for models without that mode."""
    obj = variant_objective(model)
    return obj.fill_mask(model, segments, top_k=top_k) if obj.fills else None


def fill_segments(data_dir):
    """Two pieces of the fixed batch's first row with the one character between them hidden."""
    x = fixed_batch(data_dir)[0]
    return [x[0, :10].tolist(), x[0, 11:20].tolist()]


def start_checkpoint_model_args(model):
    from dataclasses import asdict
    return asdict(model.config)


def fixed_batch(data_dir, T=64, B=2):
    data = np.memmap(data_dir / "val.bin", dtype=np.uint16, mode="r")
    x = torch.from_numpy(np.stack([data[i * 97:i * 97 + T] for i in range(B)]).astype(np.int64))
    y = torch.from_numpy(np.stack([data[i * 97 + 1:i * 97 + 1 + T] for i in range(B)]).astype(np.int64))
    return x, y


def model_outputs(name, data_dir, state=None):
    """Everything but training: logits of the fixed batch (and of its objective's training layout), generations."""
    model = build(name, state)
    x, y = fixed_batch(data_dir)
    out = {}
    with torch.no_grad():
        out["batch_logits"], out["batch_loss"], out["batch_metrics"] = batch_outputs(model, training_batch(model, x, y))
        if is_causal(model):
            out["logits"] = plain_logits(model, x)
    if is_causal(model):
        prompt = x[:1, :8]
        out["greedy_cached"] = model.generate(prompt, 20, temperature=0, use_cache=True)
        out["greedy_uncached"] = model.generate(prompt, 20, temperature=0, use_cache=False)
    out["fill"] = fill(model, fill_segments(data_dir))
    return out


def train_run(name, data_dir, out_dir, init_state=None):
    """Metrics of 20 steps of train.py (from scratch, or from given initial weights) and its final checkpoint."""
    variant, extra = CASES[name]
    args = [f"--variant={variant}", f"--data_dir={data_dir}", f"--out_dir={out_dir}", *TRAIN]
    args += [f"--{k}={v!r}" if isinstance(v, str) else f"--{k}={v}" for k, v in {**SHAPE, **extra}.items()]
    if init_state is not None:
        args += ["--init_from=resume"]
        write_start_checkpoint(name, data_dir, out_dir, init_state)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    proc = subprocess.run([sys.executable, str(REPO / "train.py"), *args], cwd=REPO, env=env, capture_output=True,
                          text=True)
    if proc.returncode:
        raise RuntimeError(f"train.py failed for {name}:\n{proc.stderr[-3000:]}")
    records = [json.loads(line) for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]
    for r in records:
        # wall-clock fields differ run to run; train_flops, the running product of the step's FLOP count, has its
        # own test (test_train_flops_accumulate_across_resume)
        for timing in ("dt_ms", "tokens_per_s", "mfu", "eta_s", "train_s", "train_flops"):
            r.pop(timing, None)
    return records, torch.load(Path(out_dir) / "ckpt.pt", weights_only=True)


def write_start_checkpoint(name, data_dir, out_dir, state):
    """An iteration-0 checkpoint holding the given initial weights, for train.py --init_from=resume."""
    from infra import checkpoint
    from data.common import load_meta
    from train import TrainConfig, make_optimizer, rng_states
    model = build(name, state)
    variant = CASES[name][0]
    opt = make_optimizer(model, TrainConfig(learning_rate=2e-3), "cpu")  # TRAIN's optimizer settings
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    checkpoint.save({"variant": variant, "model_args": start_checkpoint_model_args(model), "model": model.state_dict(),
                     "optimizer": opt.state_dict(), "iter_num": 0, "best_val_loss": float("inf"), "eval_done": False,
                     "rng": rng_states(), "sampler": {"seed": 7, "next_iter": 0}, "config": {}, "data_meta": load_meta(data_dir)},
                    Path(out_dir) / "ckpt.pt")


def record(name, data_dir, tmp):
    model = build(name)
    out = {"init": {k: v.clone() for k, v in model.state_dict().items()}, **model_outputs(name, data_dir)}
    # the weights train.py starts from (it seeds the init with mix_seed(seed, 0))
    out["train_init"] = {k: v.clone() for k, v in build(name, seed=TRAIN_INIT_SEED).state_dict().items()}
    out["train"], ckpt = train_run(name, data_dir, Path(tmp) / name)
    out["checkpoint"] = ckpt
    out["checkpoint_outputs"] = checkpoint_outputs(ckpt, data_dir)
    return out


def checkpoint_outputs(ckpt, data_dir):
    """Outputs of the model a checkpoint rebuilds into (weights, config and variant as saved)."""
    from infra import checkpoint
    model = checkpoint.build_model(ckpt, variants.get, "golden checkpoint", dropout=0.0).eval()
    x, y = fixed_batch(data_dir)
    with torch.no_grad():
        logits, loss, metrics = batch_outputs(model, training_batch(model, x, y))
        return {"batch_logits": logits, "batch_loss": loss, "batch_metrics": metrics,
                "logits": plain_logits(model, x) if is_causal(model) else None}


def main(argv):
    torch.set_num_threads(1)
    mode = argv[0] if argv else "check"
    names = argv[1:] or list(CASES)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = shakespeare_dir(tmp)
        if mode == "write":
            (HERE / "environment.json").write_text(json.dumps(environment(), indent=1) + "\n")
        for name in names:
            path = HERE / f"{name}.pt"
            if mode == "write":
                torch.save(record(name, data_dir, tmp), path)
                print(f"wrote {path}")
            else:
                from test_golden import compare_case
                exact = mode == "check" and environment() == json.loads((HERE / "environment.json").read_text())
                worst = compare_case(name, data_dir, Path(tmp) / mode, exact=exact, strict=mode == "check")
                print(f"{name}: {'identical' if exact else 'within tolerance' if mode == 'check' else ''}",
                      " ".join(f"{k}={v:.3g}" for k, v in sorted(worst.items())))


if __name__ == "__main__":
    main(sys.argv[1:])

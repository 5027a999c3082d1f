"""Run by tests/test_scaling.py under torchrun (2 ranks, gloo, CPU); also imported there for the shared setup.

    torchrun --standalone --nproc_per_node=2 tests/scaling_worker.py train OUT    FSDP vs DDP vs one process, saves
    torchrun --standalone --nproc_per_node=2 tests/scaling_worker.py resume OUT   loads the saves in fresh processes
    python tests/scaling_worker.py kill OUT POINT                                  a save killed at POINT

Rank 0 writes OUT/<phase>.json with what the test asserts on; OUT/<variant>/ holds the sharded checkpoint (ckpt),
the same state gathered whole (full.pt) and the parameters one step later (next.pt).
"""
import json
import os
import shutil
import signal
import sys
import types
import warnings
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict  # noqa: E402
from torch.distributed.tensor import DTensor  # noqa: E402
from torch.nn.parallel import DistributedDataParallel as DDP  # noqa: E402

from infra import scaling  # noqa: E402
import train  # noqa: E402
import variants  # noqa: E402

BASE = dict(n_layer=2, n_head=2, n_embd=16, block_size=16, vocab_size=40)
CASES = {  # the variants checked in full (steps, DDP, checkpoints), each with what makes it awkward to shard
    "gpt": dict(dropout=0.1),  # tied wte/lm_head; dropout masks must agree micro-batch by micro-batch
    "llama": dict(dropout=0.1, n_head=4, n_kv_head=2, multiple_of=8),  # untied head, RMSNorm, GQA
    "albert": dict(n_layer=3, embedding_size=8),  # one block run n_layer times; factorised, tied MLM decoder
    "parallel": dict(n_layer=4, bottleneck_method="concat"),  # paired blocks, a root-level bottleneck
    "adaptive_span": dict(span_reg=0.1, span_block=8, softness_span_mask=4.0, use_triangle_wave_masking=True),
}
ACCUM, STEPS, SAVE_AT = 2, 3, 2  # micro-steps per rank; steps; the checkpoint is of the state after SAVE_AT steps
CLIP = 0.05  # small enough that every step clips
CFG = types.SimpleNamespace(learning_rate=1e-2, beta1=0.9, beta2=0.95, weight_decay=0.1)


def build(name, seed=0, **overrides):
    spec = variants.get(name)
    torch.manual_seed(seed)
    return spec, spec.build(spec.config_class(**{**BASE, **CASES.get(name, {}), **overrides}))


def batch(spec, config, index):
    """Micro-batch `index` of a fixed random stream (the objective's own randomness, MLM masking, seeded by it)."""
    g = torch.Generator().manual_seed(1000 + index)
    x, y = torch.randint(0, 30, (2, 16), generator=g), torch.randint(0, 30, (2, 16), generator=g)
    return spec.objective.prepare(config, x, y, generator=torch.Generator().manual_seed(5000 + index))


REDUCE_SCATTERS = [0]  # calls of dist.reduce_scatter_single so far (FSDP2's gradient reduction)


def count_reduce_scatters():
    real = dist.reduce_scatter_single

    def counted(*args, **kwargs):
        REDUCE_SCATTERS[0] += 1
        return real(*args, **kwargs)

    dist.reduce_scatter_single = counted


def step(spec, model, raw, optimizer, it, accum, rank, world, comms=None):
    """One optimizer step as train.py takes it: micro-batch (it*accum + micro)*world + rank, dropout seeded by that
    index, gradients reduced on the last micro-step only, clipped, AdamW. Returns the norm before clipping; appends
    the reduce-scatters of each micro-step's backward to comms."""
    for micro in range(accum):
        index = (it * accum + micro) * world + rank
        torch.manual_seed(77 + index)
        scaling.set_gradient_sync(model, micro == accum - 1)
        _, loss = spec.objective.step(model, batch(spec, raw.config, index), raw)
        before = REDUCE_SCATTERS[0]
        (loss / accum).backward()
        if comms is not None:
            comms.append(REDUCE_SCATTERS[0] - before)
    norm = torch.nn.utils.clip_grad_norm_(raw.parameters(), CLIP)  # as train.py clips: a DTensor norm under FSDP
    assert norm.dim() == 0 and bool(torch.isfinite(norm))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(norm)


@torch.no_grad()
def eval_loss(spec, model, raw):
    """A no-grad forward in eval mode (every rank: it is a collective under FSDP)."""
    model.eval()
    _, loss = spec.objective.step(model, batch(spec, raw.config, 10_000), raw)
    model.train()
    return loss.item()


def full(model):
    """{name: whole tensor}: sharded parameters gathered (a collective)."""
    return {n: (p.full_tensor() if isinstance(p, DTensor) else p).detach().clone() for n, p in model.named_parameters()}


def max_diff(a, b):
    return max((a[n] - b[n]).abs().max().item() for n in a)


def extra_of(name, model, it):
    return {"variant": name, "model_args": asdict(model.config), "iter_num": it, "best_val_loss": 2.5,
            "eval_done": False, "sampler": {"seed": 1, "next_iter": it}, "config": {"variant": name, "seed": 1},
            "data_meta": {"vocab_size": 30, "tokenizer": "char"}}


def full_state(model, optimizer):
    """Model and optimizer state gathered whole onto rank 0 (others get empty dicts)."""
    return get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def train_phase(out, rank, world):
    results = {}
    for name in CASES:
        spec, ref = build(name)
        _, ddp_raw = build(name)
        _, fsdp = build(name)
        ref_opt = train.make_optimizer(ref, CFG, "cpu")
        ddp = DDP(ddp_raw)
        ddp_opt = train.make_optimizer(ddp_raw, CFG, "cpu")
        scaling.shard_model(fsdp, "cpu")
        fsdp_opt = train.make_optimizer(fsdp, CFG, "cpu")
        records, comms, metrics = [], [], {}
        eval_loss(spec, fsdp, fsdp)  # before any step: adaptive span caches its eval mask here, to be invalidated
        for it in range(STEPS):
            if rank == 0:  # one process with all the micro-batches
                ref_norm = step(spec, ref, ref, ref_opt, it, ACCUM * world, 0, 1)
            ddp_norm = step(spec, ddp, ddp_raw, ddp_opt, it, ACCUM, rank, world)
            fsdp_norm = step(spec, fsdp, fsdp, fsdp_opt, it, ACCUM, rank, world, comms if it == 0 else None)
            if it == 0:  # parameters read outside a forward (log_metrics), on every rank, then training goes on
                with scaling.gathered(fsdp):
                    metrics = {"fsdp": fsdp.log_metrics(), "ref": ref.log_metrics() if rank == 0 else {}}
            fsdp_params, fsdp_eval, ddp_eval = full(fsdp), eval_loss(spec, fsdp, fsdp), eval_loss(spec, ddp, ddp_raw)
            if it + 1 in (1, SAVE_AT):  # the second save replaces the first
                scaling.save_sharded(out / name / "ckpt", fsdp, fsdp_opt, extra_of(name, fsdp, it + 1),
                                     {"torch": torch.get_rng_state(), "rank": rank})
            if it + 1 == SAVE_AT:
                model_state, optim_state = full_state(fsdp, fsdp_opt)
                torch.save({"torch": torch.get_rng_state(), "rank": rank}, out / name / f"rng{rank}.pt")
                if rank == 0:
                    torch.save({"model": model_state, "optimizer": optim_state}, out / name / "full.pt")
            if it + 1 == SAVE_AT + 1 and rank == 0:
                torch.save(fsdp_params, out / name / "next.pt")
            if rank == 0:
                ref_params, ddp_params = full(ref), full(ddp_raw)
                records.append({"fsdp_vs_ref": max_diff(fsdp_params, ref_params),
                                "ddp_vs_ref": max_diff(ddp_params, ref_params),
                                "fsdp_vs_ddp": max_diff(fsdp_params, ddp_params),
                                "norms": [ref_norm, ddp_norm, fsdp_norm],
                                "evals": [eval_loss(spec, ref, ref), ddp_eval, fsdp_eval],
                                "moved": max_diff(ref_params, dict(build(name)[1].named_parameters()))})
        # the non-finite guard: a NaN in rank 1's shard alone must be seen by every rank
        sharded = [p for group in fsdp_opt.param_groups for p in group["params"]]  # always the DTensor shards
        finite = [scaling.all_finite(sharded)]
        if rank == 1:
            with torch.no_grad():
                sharded[0].to_local().view(-1)[0] = float("nan")
        finite.append(scaling.all_finite(sharded))
        results[name] = {"steps": records, "reduce_scatters": comms, "metrics": metrics, "finite": finite}
    # every other variant, and compiled blocks: one accumulated step under FSDP equals one process
    for name in [n for n in variants.names() if n not in CASES] + ["compiled"]:
        compiled = name == "compiled"
        spec, ref = build("gpt", dropout=0.0) if compiled else build(name)  # compiled dropout draws other masks
        _, fsdp = build("gpt", dropout=0.0) if compiled else build(name)
        ref_opt, _ = train.make_optimizer(ref, CFG, "cpu"), scaling.shard_model(fsdp, "cpu", compile=compiled)
        fsdp_opt = train.make_optimizer(fsdp, CFG, "cpu")
        if rank == 0:
            step(spec, ref, ref, ref_opt, 0, ACCUM * world, 0, 1)
        step(spec, fsdp, fsdp, fsdp_opt, 0, ACCUM, rank, world)
        fsdp_params = full(fsdp)
        if rank == 0:
            results[name] = {"steps": [{"fsdp_vs_ref": max_diff(fsdp_params, full(ref))}]}
    return results


def resume_phase(out, rank, world):
    results = {}
    for name in CASES:
        spec, model = build(name, seed=123)  # other weights, so that only the load can make them equal
        scaling.shard_model(model, "cpu")
        optimizer = train.make_optimizer(model, CFG, "cpu")
        extra, rank_extra = scaling.load_sharded(out / name / "ckpt", model, optimizer)
        model_state, optim_state = full_state(model, optimizer)
        saved_rng = torch.load(out / name / f"rng{rank}.pt", weights_only=True)
        rng_same = rank_extra["rank"] == rank and torch.equal(rank_extra["torch"], saved_rng["torch"])
        agreed = [None] * world
        dist.all_gather_object(agreed, rng_same)
        rng_same = all(agreed)
        if rank == 0:  # compared before the next step, which updates some of these tensors in place
            saved = torch.load(out / name / "full.pt", weights_only=True)
            results[name] = {"extra": extra == extra_of(name, model, SAVE_AT), "rng": rng_same,
                             "model": same(model_state, saved["model"]),
                             "optimizer": same(optim_state, saved["optimizer"])}
        step(spec, model, model, optimizer, SAVE_AT, ACCUM, rank, world)
        after = full(model)
        if rank == 0:
            results[name]["next"] = same(after, torch.load(out / name / "next.pt", weights_only=True))
        # the same state read whole (as from a DDP run's single file) into a sharded model: a DDP run goes on in FSDP
        _, model = build(name, seed=7)
        scaling.shard_model(model, "cpu")
        optimizer = train.make_optimizer(model, CFG, "cpu")
        scaling.load_full_state(model, optimizer, scaling.read_checkpoint(out / name / "ckpt"))
        model_state, optim_state = full_state(model, optimizer)
        if rank == 0:
            results[name]["from_full"] = same(model_state, saved["model"]) and same(optim_state, saved["optimizer"])
    # a sharded checkpoint resumes a DDP run too: a plain replicated model in each of the two ranks
    _, model = build("gpt", seed=7)
    optimizer = train.make_optimizer(model, CFG, "cpu")
    extra, rank_extra = scaling.load_sharded(out / "gpt" / "ckpt", model, optimizer)
    model_state, optim_state = get_state_dict(model, optimizer)
    saved = torch.load(out / "gpt" / "full.pt", weights_only=True)
    ok = [same(model_state, saved["model"]) and same(optim_state, saved["optimizer"]) and rank_extra["rank"] == rank]
    agreed = [None] * world
    dist.all_gather_object(agreed, ok)
    results["replicated"] = all(a[0] for a in agreed)
    return results


def kill_phase(out, point):
    """One process, no process group: save iter 1, then die by SIGKILL at `point` of saving iter 2. The parameters of
    each iteration are kept beside (params<iter>.pt) for the test to compare with what loads."""
    spec, model = build("gpt")
    optimizer = train.make_optimizer(model, CFG, "cpu")
    folder = out / "ckpt"
    tmp, old = folder.with_name(f".{folder.name}.tmp"), folder.with_name(f".{folder.name}.old")
    for it in (1, 2):
        step(spec, model, model, optimizer, it - 1, ACCUM, 0, 1)
        torch.save(full(model), out / f"params{it}.pt")
        if it == 2:
            die = lambda: os.kill(os.getpid(), signal.SIGKILL)  # noqa: E731
            if point == "before_manifest":  # the shards are written; the small files and the manifest are not
                scaling._write_checked = lambda obj, path: (path.write_bytes(b"half"), die())
            elif point == "between_renames":  # the old folder is under the trash name, the new one not yet in place
                real_rename = os.rename
                os.rename = lambda src, dst: die() if Path(src) == tmp else real_rename(src, dst)
            elif point == "before_trash_removed":
                real_rmtree = shutil.rmtree
                shutil.rmtree = lambda path, *a, **k: die() if Path(path) == old else real_rmtree(path, *a, **k)
        scaling.save_sharded(folder, model, optimizer, extra_of("gpt", model, it), {"rank": 0})


def same(a, b):
    """Bit-identical nested state (tensors by torch.equal, everything else by ==)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype and \
            torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def main(phase, out, point=None):
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module")  # views returned by a module: none are edited
    torch.set_num_threads(1)
    if phase == "kill":
        return kill_phase(Path(out), point)
    count_reduce_scatters()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    out = Path(out)
    results = (train_phase if phase == "train" else resume_phase)(out, rank, world)
    if rank == 0:
        (out / f"{phase}.json").write_text(json.dumps(results, indent=1))
    scaling.exit_rank()


if __name__ == "__main__":
    main(*sys.argv[1:])

"""Training past one GPU's memory with PyTorch's own engines: FSDP2 (torch.distributed.fsdp.fully_shard) shards
parameters, gradients and optimizer state over the ranks, and torch.distributed.checkpoint (DCP) writes and reads
them as a folder of shards that any world size can load.

    shard_model(model, device_type, mixed_precision)   fully_shard each block, then the root (in place)
    set_gradient_sync(model, sync)                      reduce gradients only on the last micro-step (FSDP or DDP)
    all_finite(params)                                  every parameter finite, on every rank
    exit_rank()                                         end a torchrun rank after its last collective (exit 0)
    gathered(model)                                     whole parameters for code outside a forward (log_metrics)
    save_sharded / load_sharded                         DCP checkpoint folders, replaced atomically, any world size
    read_extra / read_checkpoint / is_sharded_checkpoint   a folder's plain values / all of it as one dict, no ranks
    load_checkpoint(path) / checkpoint_at(path)        a file or a folder, as checkpoint.load's dict / where it is
    load_full_state(model, optimizer, ckpt)             a single-file checkpoint into a sharded model (DDP -> FSDP)
    consolidate(folder, out_file)                       a DCP folder -> the single-file format of checkpoint.py

A checkpoint folder holds DCP's .metadata and __<rank>_<n>.distcp shards (model and optimizer), extra.pt (the run's
plain values, written by rank 0), rng_rank<r>.pt (each rank's own state) and, written last, manifest.json: every
file's size and sha256. A folder without a valid manifest is never read as a checkpoint. Saving needs a filesystem
that every rank sees (as DCP itself does).

CLI: python -m infra.scaling consolidate <ckpt_dir> <out.pt>
"""
import hashlib
import json
import os
import re
import shutil
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_state_dict,
                                                     set_model_state_dict, set_state_dict)
from torch.distributed.checkpoint.state_dict_loader import _load_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from infra import checkpoint, runtime
import variants
from data.common import fsync_dir

MANIFEST = "manifest.json"
EXTRA = "extra.pt"
SHARDED_FORMAT = "dcp-1"


# --------------------------------------------------------------------------------------------------------------
# sharding

def params_used_outside_forward(model):
    """Parameters that model.aux_loss() reads (adaptive span's span and wave parameters). The objective adds the
    auxiliary loss after the forward, when a block's own parameters are already resharded (DTensors that do not mix
    with the plain loss), so these parameters must live in the root unit, which stays unsharded from forward to the
    end of backward."""
    aux = model.aux_loss()
    if not isinstance(aux, torch.Tensor) or not aux.requires_grad:
        return set()
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(aux, params, allow_unused=True)
    return {p for p, g in zip(params, grads) if g is not None}


def _units(module, keep):
    """The largest submodules of module that hold parameters but none of `keep` (module itself if it holds none)."""
    if not any(p in keep for p in module.parameters()):
        return [module] if any(True for _ in module.parameters()) else []
    return [unit for child in module.children() for unit in _units(child, keep)]


def check_shardable(model):
    """ValueError (one line) for a model FSDP cannot shard block by block."""
    if not getattr(model, "calls_blocks", True):
        raise ValueError("this model computes its blocks outside their forward (pair_impl='batched'), where FSDP would "
                         "not gather their weights; use pair_impl='sequential' with parallelism=fsdp")


def shard_model(model, device_type, mixed_precision=False, compile=False):
    """Apply FSDP2 in place: one unit per block of model.transformer.h, then the root (embeddings, heads, final norm,
    tied weights, and any parameter read outside the forward). Returns the model. Needs an initialised process group;
    moves this rank's shards to the current device_type device (call torch.cuda.set_device first).

    mixed_precision (CUDA only): bf16 parameters for compute, fp32 gradient reduction, fp32 master weights and
    optimizer state, fp32 logits out of the root; it replaces autocast. On CPU everything stays fp32.
    compile: torch.compile each block in place before sharding (state-dict keys unchanged), as torchtitan does.

    Blocks that run several times per forward with shared weights (ALBERT: fewer blocks than n_layer) stay in the
    root unit: FSDP2 gets their gradients right as a unit of their own, but would all-gather them again at every call
    in forward and in backward, while the shared block is nearly all of such a model anyway."""
    check_shardable(model)
    mesh = init_device_mesh(device_type, (dist.get_world_size(),))
    if device_type == "cuda" and mixed_precision:
        block_mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        root_mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32,
                                       output_dtype=torch.float32)  # the loss and metrics see fp32 logits
    else:
        block_mp = root_mp = MixedPrecisionPolicy()
    keep = params_used_outside_forward(model)
    blocks = list(model.transformer.h)
    shared = len(blocks) < model.config.n_layer
    for block in blocks:
        if compile:
            block.compile()
        if shared:
            continue
        units = _units(block, keep)
        if units:  # several units of one block form one group: one all-gather, one reduce-scatter per block
            fully_shard(units if len(units) > 1 else units[0], mesh=mesh, mp_policy=block_mp)
    fully_shard(model, mesh=mesh, mp_policy=root_mp)
    return model


def set_gradient_sync(model, sync):
    """Whether the coming backward reduces gradients across ranks: False on all micro-steps but the last, so
    gradient accumulation communicates once per optimizer step. FSDP keeps the unsharded gradients meanwhile
    (accumulated in fp32 under mixed precision); DDP skips its all-reduce. A no-op for a plain model."""
    if isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(sync)
    elif isinstance(model, DistributedDataParallel):
        model.require_backward_grad_sync = sync


def _local(t):
    return t.to_local() if isinstance(t, DTensor) else t


def all_finite(params):
    """True when every parameter is finite. With sharded parameters each rank checks its own shards and one
    all-reduce agrees (so call it on every rank); with replicated ones the local answer is everyone's."""
    params = list(params)
    local_ok = all(bool(torch.isfinite(_local(p)).all()) for p in params)
    if not any(isinstance(p, DTensor) for p in params):
        return local_ok
    flag = torch.tensor([0.0 if local_ok else 1.0], device=_local(params[0]).device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return not bool(flag.item())


@contextmanager
def gathered(model):
    """Every FSDP unit unsharded inside the block (a collective: enter it on every rank), so that code reading
    parameters outside a forward (log_metrics) sees plain tensors. A no-op for an unsharded model."""
    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for m in units:
        m.unshard()
    try:
        yield model
    finally:
        for m in units:
            m.reshard()


def exit_rank():
    """End this rank with exit code 0 once every rank is past its last collective, without tearing down the process
    group (runtime.exit_now says why)."""
    dist.barrier()
    runtime.exit_now(0)


# --------------------------------------------------------------------------------------------------------------
# sharded checkpoints

def _rank_world():
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier():
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _siblings(folder):
    """(temporary, trash) names beside folder: the new checkpoint is written to the first, and the old one moved to
    the second only for the instant between the two renames that publish the new one."""
    return folder.with_name(f".{folder.name}.tmp"), folder.with_name(f".{folder.name}.old")


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _write_checked(obj, path):
    """torch.save a dict with a checksum entry over every other entry, fsynced (inside a temporary folder)."""
    obj = dict(obj)
    obj["checksum"] = checkpoint.entry_checksums(obj)
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def _read_checked(path):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise checkpoint.CheckpointError(f"checkpoint {path} is unreadable ({type(e).__name__})") from None
    if not isinstance(obj, dict) or "checksum" not in obj:
        raise checkpoint.CheckpointError(f"checkpoint {path} is not a part of a sharded checkpoint")
    saved = obj.pop("checksum")
    if saved != checkpoint.entry_checksums(obj):
        raise checkpoint.CheckpointError(f"checkpoint {path} fails its checksum")
    return obj


def _manifest(folder):
    """The folder's manifest dict, or None when it has none (a save that did not finish) or an unreadable one."""
    try:
        manifest = json.loads((Path(folder) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != SHARDED_FORMAT or \
            not isinstance(manifest.get("files"), dict) or not isinstance(manifest.get("world_size"), int):
        return None
    for entry in manifest["files"].values():
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], int) and
                isinstance(entry[1], str)):
            return None
    return manifest


def _complete(folder):
    return Path(folder).is_dir() and _manifest(folder) is not None


def resolve(folder):
    """The complete checkpoint folder to read for `folder`: itself; else, after a save killed between its two renames,
    the new one under the temporary name or the previous one under the trash name. None when none is complete."""
    folder = Path(folder)
    tmp, old = _siblings(folder)
    for candidate in (folder, tmp, old):
        if _complete(candidate):
            return candidate
    return None


def is_sharded_checkpoint(path):
    """Whether path names a sharded checkpoint: a folder with a manifest, or one that a killed save left recoverable
    under the temporary or trash name. A file, or a folder without any complete checkpoint, is not."""
    path = Path(path)
    return not path.is_file() and resolve(path) is not None


def _repair(folder):
    """Rank 0, before a save: put back under folder's own name the complete checkpoint a killed save left under the
    temporary or trash name, then remove the leftovers."""
    tmp, old = _siblings(folder)
    if not _complete(folder):
        for candidate in (tmp, old):
            if _complete(candidate):
                if folder.exists():
                    shutil.rmtree(folder)
                os.rename(candidate, folder)
                break
    for leftover in (tmp, old):
        if leftover.exists():
            shutil.rmtree(leftover)


def _publish(new, folder):
    """Rename the complete folder `new` to `folder`, replacing a previous one: at every instant either the old or the
    new complete checkpoint exists under a name that resolve() finds."""
    _, old = _siblings(folder)
    if old.exists():
        shutil.rmtree(old)
    if folder.exists():
        os.rename(folder, old)
    os.rename(new, folder)
    fsync_dir(folder.parent)
    if old.exists():
        shutil.rmtree(old)


def _hash_share(folder, rank, world):
    """{name: [bytes, sha256]} of this rank's share of the folder's files (every world-th from rank): the reading
    work of a manifest is spread over the ranks."""
    names = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name != MANIFEST)
    return {name: [(folder / name).stat().st_size, _sha256(folder / name)] for name in names[rank::world]}


def _gather(obj):
    rank, world = _rank_world()
    if world == 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


@contextmanager
def _quiet():
    """Silence DCP's warning that it runs in a single process: without a process group that is the point."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def save_sharded(folder, model, optimizer, extra, rank_extra=None, keep_copy=None, keep_last=1):
    """Write a checkpoint folder on every rank (a collective): model and optimizer state through DCP (loadable at any
    world size), `extra` (plain values: iter_num, config, sampler, data meta...; variant and model_args for
    consolidate) once by rank 0, `rank_extra` (this rank's RNG states) per rank. Written to a temporary sibling,
    completed by the manifest, then renamed into place. keep_copy: also keep the checkpoint as this sibling folder
    (hard links, no second write), e.g. ckpt_00000100, and of the folders named like it (same prefix, same number of
    digits) only the keep_last newest besides it. Works without a process group too (one process, plain model)."""
    folder = Path(folder)
    tmp, old = _siblings(folder)
    rank, world = _rank_world()
    # everything that can refuse is checked before the first collective, identically on every rank
    try:
        checkpoint.entry_checksums({"extra": extra, "state": rank_extra})
    except TypeError as e:
        raise checkpoint.CheckpointError(f"cannot save checkpoint {folder}: {e}") from None
    if keep_copy is not None and not re.fullmatch(r".*_\d+", Path(keep_copy).name):
        raise ValueError(f"keep_copy {Path(keep_copy).name!r} is not named <prefix>_<digits>")
    if folder.exists() and not _complete(folder) and not (_complete(tmp) or _complete(old)):
        raise checkpoint.CheckpointError(f"{folder} exists and is not a sharded checkpoint; not replacing it")
    if rank == 0:
        folder.parent.mkdir(parents=True, exist_ok=True)
        _repair(folder)
        tmp.mkdir()
    _barrier()
    if optimizer is None:
        state = {"model": get_model_state_dict(model)}
    else:
        model_state, optim_state = get_state_dict(model, optimizer)
        state = {"model": model_state, "optimizer": optim_state}
    with _quiet():
        dcp.save(state, checkpoint_id=str(tmp))
    _write_checked({"rank": rank, "world_size": world, "state": rank_extra}, tmp / f"rng_rank{rank}.pt")
    if rank == 0:
        _write_checked({"extra": extra, "has_optimizer": optimizer is not None}, tmp / EXTRA)
    _barrier()
    shares = _gather(_hash_share(tmp, rank, world))
    if rank == 0:
        files = {name: entry for share in shares for name, entry in share.items()}
        manifest = {"format": SHARDED_FORMAT, "world_size": world, "files": dict(sorted(files.items()))}
        with open(tmp / MANIFEST, "w") as f:  # the completion marker: written last, after every rank's files
            f.write(json.dumps(manifest, indent=1) + "\n")
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(tmp)
        _publish(tmp, folder)
        if keep_copy is not None:
            _keep_copy(folder, Path(keep_copy), keep_last)
    _barrier()


def _keep_copy(folder, copy, keep_last):
    numbered = re.fullmatch(r"(.*_)(\d+)", copy.name)
    staged, _ = _siblings(copy)
    if staged.exists():
        shutil.rmtree(staged)
    staged.mkdir()
    for p in folder.iterdir():
        os.link(p, staged / p.name)  # the same files, not a second write
    _publish(staged, copy)
    pattern = re.compile(f"{re.escape(numbered[1])}\\d{{{len(numbered[2])}}}")
    others = sorted(p for p in copy.parent.iterdir() if p.is_dir() and pattern.fullmatch(p.name) and p != copy)
    for stale in others[:max(len(others) - (max(keep_last, 1) - 1), 0)]:
        shutil.rmtree(stale)


def _checked_folder(folder):
    """(complete folder to read, its manifest), or CheckpointError of one line."""
    folder = Path(folder)
    source = resolve(folder)
    if source is not None:
        return source, _manifest(source)
    if folder.is_file():
        raise checkpoint.CheckpointError(f"checkpoint {folder} is a file, not a sharded checkpoint folder")
    tmp, old = _siblings(folder)
    if folder.is_dir() or tmp.is_dir() or old.is_dir():
        raise checkpoint.CheckpointError(f"checkpoint {folder} is incomplete: no valid {MANIFEST} (a save that did not "
                                         f"finish, or not a sharded checkpoint)")
    raise checkpoint.CheckpointError(f"checkpoint {folder} not found")


def _verify_files(source, manifest, alone=False):
    """CheckpointError naming the first file that is missing, of another size or fails its sha256; the hashing is
    shared out over the ranks (a collective when there are several), unless alone."""
    rank, world = (0, 1) if alone else _rank_world()
    names = sorted(manifest["files"])
    present = sorted(p.name for p in source.iterdir() if p.is_file() and p.name != MANIFEST)
    problems = []
    if rank == 0:
        problems += [f"{name} is missing" for name in names if name not in present]
        problems += [f"{name} is not in the manifest" for name in present if name not in manifest["files"]]
    for name in names[rank::world]:
        path = source / name
        size, digest = manifest["files"][name]
        if not path.is_file():
            continue  # named by rank 0
        if path.stat().st_size != size:
            problems.append(f"{name} has {path.stat().st_size} bytes, not {size}")
        elif _sha256(path) != digest:
            problems.append(f"{name} fails its checksum")
    if not alone:
        problems = sorted(p for share in _gather(problems) for p in share)
    if problems:
        raise checkpoint.CheckpointError(f"checkpoint {source} is corrupt: {problems[0]}"
                                         + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))


def read_extra(folder):
    """The `extra` dict of a sharded checkpoint (no collective, no shards read): what builds the model to load into."""
    source, _ = _checked_folder(folder)
    return _read_checked(source / EXTRA)["extra"]


def load_sharded(folder, model, optimizer=None):
    """Load a checkpoint folder into model (and optimizer) on every rank (a collective): a model already sharded with
    shard_model at any world size, or a plain model in a process without a process group. DCP reshards when the
    world size differs from the save's. Returns (extra, rank_extra), rank_extra None when the world size changed (the
    per-rank states then belong to no rank). Every file is verified against the manifest first."""
    source, manifest = _checked_folder(folder)
    _verify_files(source, manifest)
    head = _read_checked(source / EXTRA)
    if optimizer is not None and not head["has_optimizer"]:
        raise checkpoint.CheckpointError(f"checkpoint {source} holds no optimizer state")
    try:
        with _quiet():
            _load_into(source, model, optimizer)
    except (RuntimeError, KeyError, ValueError) as e:  # DCP's reasons are many lines long
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        raise checkpoint.CheckpointError(f"checkpoint {source} does not fit this model: "
                                         f"{lines[0][:300] if lines else type(e).__name__}") from None
    rank, world = _rank_world()
    rank_extra = None
    if manifest["world_size"] == world:
        rank_extra = _read_checked(source / f"rng_rank{rank}.pt")["state"]
    return head["extra"], rank_extra


def _load_into(source, model, optimizer):
    """DCP fills state dicts shaped like this model's (its own shards at this world size), then they are set."""
    if optimizer is None:
        model_state = get_model_state_dict(model)
        dcp.load({"model": model_state}, checkpoint_id=str(source))
        set_model_state_dict(model, model_state)
    else:
        model_state, optim_state = get_state_dict(model, optimizer)
        dcp.load({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(source))
        set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optim_state)


def load_full_state(model, optimizer, ckpt):
    """Load a single-file checkpoint dict (checkpoint.load's, or read_checkpoint's) into a model sharded with
    shard_model, or a plain one, and its optimizer (None: the weights only): every rank reads the whole state and
    keeps its own shards. This is how a run trained under DDP continues under FSDP. The optimizer must be built as the
    saved one was (same parameter groups, in model.parameters() order)."""
    options = StateDictOptions(full_state_dict=True)
    if optimizer is None:
        set_model_state_dict(model, ckpt["model"], options=options)
        return
    name_of = {}
    for name, p in model.named_parameters():
        name_of.setdefault(p, name)
    order = [name_of[p] for group in optimizer.param_groups for p in group["params"]]
    saved = ckpt["optimizer"]
    try:
        optim = {"state": {order[i]: value for i, value in saved["state"].items()},
                 "param_groups": [{**group, "params": [order[i] for i in group["params"]]}
                                  for group in saved["param_groups"]]}
    except (IndexError, KeyError, TypeError):
        raise checkpoint.CheckpointError("the checkpoint's optimizer state does not fit this optimizer's parameters")
    set_state_dict(model, optimizer, model_state_dict=ckpt["model"], optim_state_dict=optim, options=options)


# --------------------------------------------------------------------------------------------------------------
# consolidation into checkpoint.py's single-file format

def _read_all(source, keys=None):
    """The DCP state {'model': {fqn: tensor}, 'optimizer': {...}} (only `keys` of it, when given) as plain tensors,
    read in this process alone."""
    state = {}  # what format_utils.dcp_to_torch_save does, kept in memory
    _load_state_dict(state, storage_reader=dcp.FileSystemReader(str(source)),
                     planner=_EmptyStateDictLoadPlanner(keys=keys), no_dist=True)
    return state


def _plain_model_keys(extra):
    """(state-dict keys of the plain model, {parameter key: the key of its first occurrence} for tied weights), from a
    model built on the meta device."""
    spec = variants.get(extra["variant"])
    with torch.device("meta"):
        model = spec.build(spec.config_class(**extra["model_args"]))
    first = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        first.setdefault(p, name)
    alias = {name: first[p] for name, p in model.named_parameters(remove_duplicate=False)}
    return list(model.state_dict().keys()), alias


def _plain_optimizer_state(optim, where):
    """DCP's optimizer state (keyed by parameter name) in torch.optim's own state_dict form (keyed by the parameter's
    index across param_groups, in group order), which a plain optimizer over the unsharded model loads."""
    index, groups = {}, []
    for group in optim["param_groups"]:
        ids = []
        for name in group["params"]:
            index[name] = len(index)
            ids.append(index[name])
        groups.append({**group, "params": ids})
    unknown = sorted(set(optim["state"]) - set(index))
    if unknown:
        raise checkpoint.CheckpointError(f"{where}: optimizer state for {unknown[0]!r}, which no param group holds")
    return {"state": {index[name]: value for name, value in optim["state"].items()}, "param_groups": groups}


def read_checkpoint(folder, optimizer=True, rank_extra_key="rng"):
    """A sharded checkpoint as the dict checkpoint.load returns for a single file, read in this process alone (no
    process group): extra's entries, "model" keyed exactly as the plain model's state_dict (tied weights under each
    of their names), "optimizer" in a plain torch.optim state_dict form (or None when optimizer=False or none was
    saved), and rank 0's rank_extra under rank_extra_key. What sample.py, eval.py and analysis.py can read directly."""
    source, manifest = _checked_folder(folder)
    _verify_files(source, manifest, alone=True)
    head = _read_checked(source / EXTRA)
    extra = head["extra"]
    if not isinstance(extra, dict) or "variant" not in extra or "model_args" not in extra:
        raise checkpoint.CheckpointError(f"checkpoint {source}: its extra entries lack variant and model_args")
    with_optimizer = optimizer and head["has_optimizer"]
    state = _read_all(source, None if with_optimizer else {"model"})
    weights = state.get("model", {})
    keys, alias = _plain_model_keys(extra)
    model = {}
    for key in keys:
        found = key if key in weights else alias.get(key)
        if found not in weights:
            raise checkpoint.CheckpointError(f"checkpoint {source}: no weights for {key!r} of variant "
                                             f"{extra['variant']!r}")
        model[key] = weights[found]
    unexpected = sorted(set(weights) - set(keys))
    if unexpected:
        raise checkpoint.CheckpointError(f"checkpoint {source}: weights {unexpected[:3]} are not in variant "
                                         f"{extra['variant']!r}")
    optim = None
    if with_optimizer:
        optim = _plain_optimizer_state(state["optimizer"], f"checkpoint {source}")
    out = {**extra, "model": model, "optimizer": optim}
    if rank_extra_key is not None:
        out[rank_extra_key] = _read_checked(source / "rng_rank0.pt")["state"]
    return out


def checkpoint_at(path):
    """path, or, when path names a missing .pt file, the sharded folder of the same name without .pt if there is one
    (out/ckpt.pt -> out/ckpt, best.pt -> best): where an entry point finds the checkpoint an FSDP run wrote."""
    path = Path(path)
    folder = path.with_suffix("")
    if path.suffix == ".pt" and not path.exists() and (folder.is_dir() or resolve(folder) is not None):
        return folder
    return path


def load_checkpoint(path, optimizer=True):
    """The checkpoint dict at path, whichever format: a folder (or what a killed save left beside its name) through
    read_checkpoint, a file through checkpoint.load (loader.open_model comes here for folders)."""
    path = Path(path)
    if path.is_dir() or (not path.exists() and resolve(path) is not None):
        return read_checkpoint(path, optimizer=optimizer)
    return checkpoint.load(path)


def consolidate(folder, out_file):
    """Write a sharded checkpoint as one file of checkpoint.py's format (checkpoint.load and build_model read it; a
    plain AdamW over the rebuilt model loads its optimizer state). Runs without any process group."""
    checkpoint.save(read_checkpoint(folder), out_file)


def main(argv):
    if len(argv) != 3 or argv[0] != "consolidate":
        print("usage: python -m infra.scaling consolidate <ckpt_dir> <out.pt>", file=sys.stderr)
        return 2
    try:
        consolidate(argv[1], argv[2])
    except (checkpoint.CheckpointError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {argv[2]} from {argv[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

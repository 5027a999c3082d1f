"""Checkpoints: written atomically (temp file + rename), verified when read, rebuilt into a model by variant name."""
import hashlib
import os
from pathlib import Path

import torch


FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "variant", "model_args", "model", "checksum")


class CheckpointError(ValueError):
    pass


def atomic_save(obj, path):
    """torch.save to a temp name in the same directory, fsync, then rename: a crash leaves the old file intact."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def state_checksum(state_dict):
    """sha256 over every tensor's name, dtype, shape and bytes: detects a corrupted or tampered checkpoint."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save(state, path, keep_copy=None, keep_last=1):
    """Write a checkpoint dict (its model weights checksummed) atomically to path. With keep_copy, the same file is
    also kept under that name (a hard link, so no second write) and only the keep_last newest such copies remain."""
    state = dict(state, format_version=FORMAT_VERSION, checksum=state_checksum(state["model"]))
    path = Path(path)
    if keep_copy is None:
        atomic_save(state, path)
        return
    keep_copy = Path(keep_copy)
    atomic_save(state, keep_copy)
    link = path.with_name(f".{path.name}.link{os.getpid()}")
    link.unlink(missing_ok=True)
    os.link(keep_copy, link)
    os.replace(link, path)
    pattern = keep_copy.name.split("_")[0] + "_*.pt"
    for old in sorted(keep_copy.parent.glob(pattern))[:-max(keep_last, 1)]:
        old.unlink()


def load(path, map_location="cpu"):
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(e).__name__}: {str(e).splitlines()[0]})")
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in REQUIRED_KEYS):
        raise CheckpointError(f"checkpoint {path} lacks the keys {', '.join(REQUIRED_KEYS)}: not a checkpoint of ours")
    if ckpt["format_version"] != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format {ckpt['format_version']}, expected {FORMAT_VERSION}")
    if state_checksum(ckpt["model"]) != ckpt["checksum"]:
        raise CheckpointError(f"checkpoint {path} fails its checksum: the weights are corrupt")
    return ckpt


def build_model(ckpt, lookup, path="checkpoint", **overrides):
    """Instantiate the checkpoint's variant with its saved config (plus overrides such as dropout) and weights.
    lookup maps the saved variant name to its registry entry (variants.get)."""
    try:
        cls = lookup(ckpt["variant"]).model_class
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    args = dict(ckpt["model_args"], **overrides)
    try:
        config = cls.config_class(**args)
    except TypeError as e:
        raise CheckpointError(f"{path}: saved config does not fit variant {ckpt['variant']!r}: {e}") from None
    model = cls(config)
    try:
        missing, unexpected = model.load_state_dict(ckpt["model"], strict=False)
    except RuntimeError as e:  # shape mismatches
        raise CheckpointError(f"{path}: weights do not fit the saved config: {str(e).splitlines()[1].strip()}")
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not match variant {ckpt['variant']!r} "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model

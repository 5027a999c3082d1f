"""Checkpoints: written atomically (temp file + rename), verified when read, rebuilt into a model by variant name.

Format 2 (written): every top-level entry except "checksum" (weights, optimizer state, RNG, sampler, config and every
plain value) has a sha256 in the "checksum" dict, keyed by the entry's name. Format 1 (still read): "checksum" is one
sha256 over the model weights only."""
import hashlib
import os
import re
import warnings
from pathlib import Path

import torch

from data.common import fsync_dir, remove_dead_temporaries


FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)
REQUIRED_KEYS = ("format_version", "variant", "model_args", "model", "checksum")
ENTRY_NAMES = {"model": "the weights", "optimizer": "the optimizer state", "rng": "the RNG state",
               "sampler": "the sampler state", "config": "the run config", "model_args": "the model config",
               "data_meta": "the data meta"}
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's archive format
PICKLE_MAGIC = b"\x80"  # a pickle of protocol 2+ (torch's legacy format)


class CheckpointError(ValueError):
    pass


def remove_stale_temporaries(path, name_pattern=None):
    """Delete the temporary files (.<name>.tmp<pid>, .<name>.link<pid>) that writers of path, or of every file whose
    name fully matches the regex name_pattern, left behind when they died: those whose pid no longer runs. Files of
    running writers, and of this process, stay."""
    path = Path(path)
    name = re.escape(path.name) if name_pattern is None else f"(?:{name_pattern})"
    remove_dead_temporaries(path.parent, rf"\.{name}\.(?:tmp|link)(\d+)")


def atomic_save(obj, path):
    """torch.save to a temp name in the same directory, fsync, then rename: a crash leaves the old file intact.
    Temporaries for the same path left by writers that died are removed first."""
    path = Path(path)
    remove_stale_temporaries(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            try:
                torch.save(obj, f)
            except RuntimeError as e:  # torch reports a failed write (disk full...) vaguely; the OS error says what
                if isinstance(e.__context__, OSError):
                    raise e.__context__ from None
                raise
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_dir(path.parent)


def _hash_tensor(h, t):
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy())


def state_checksum(state_dict):
    """sha256 over every tensor's name, dtype, shape and bytes (format 1's checksum: the model weights only)."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        h.update(f"{name}|".encode())
        _hash_tensor(h, state_dict[name])
    return h.hexdigest()


def _hash_value(h, value, where):
    """Feed one value to h, tagged by kind so that different values never share an encoding: tensors by dtype, shape
    and bytes, floats exactly (hex), dicts in key order independent of insertion order."""
    if isinstance(value, torch.Tensor):
        h.update(b"T")
        _hash_tensor(h, value)
    elif isinstance(value, dict):
        h.update(f"D{len(value)}|".encode())
        for key in sorted(value, key=lambda k: (type(k).__name__, repr(k))):
            _hash_value(h, key, where)
            _hash_value(h, value[key], f"{where}[{key!r}]")
    elif isinstance(value, (list, tuple)):  # torch.Size too
        h.update(f"L{len(value)}|".encode())
        for i, item in enumerate(value):
            _hash_value(h, item, f"{where}[{i}]")
    elif value is None or isinstance(value, bool):
        h.update(f"B{value}|".encode())
    elif isinstance(value, int):
        h.update(f"I{value}|".encode())
    elif isinstance(value, float):
        h.update(f"F{value.hex()}|".encode())
    elif isinstance(value, str):
        data = value.encode("utf-8", "surrogatepass")
        h.update(f"S{len(data)}|".encode() + data)
    elif isinstance(value, (bytes, bytearray)):
        h.update(f"Y{len(value)}|".encode() + bytes(value))
    elif isinstance(value, (torch.dtype, torch.device)):
        h.update(f"O{type(value).__name__}:{value}|".encode())
    else:
        raise TypeError(f"{where} is a {type(value).__name__}, which a checkpoint cannot checksum")


def entry_checksums(state):
    """{entry name: sha256} for every top-level entry of a checkpoint dict except "checksum" itself."""
    sums = {}
    for key in sorted(state):
        if key != "checksum":
            h = hashlib.sha256()
            _hash_value(h, state[key], key)
            sums[key] = h.hexdigest()
    return sums


def _verify(ckpt, path):
    """Raise CheckpointError unless ckpt matches the checksum its format defines."""
    fmt = ckpt["format_version"]
    if fmt == 1:
        try:
            good = state_checksum(ckpt["model"]) == ckpt["checksum"]
        except (TypeError, AttributeError, RuntimeError):
            good = False
        if not good:
            raise CheckpointError(f"checkpoint {path} fails its checksum: the weights are corrupt")
        return
    saved = ckpt["checksum"]
    if not isinstance(saved, dict):
        raise CheckpointError(f"checkpoint {path} fails its checksum: its checksum entry is not a dict of entries")
    try:
        actual = entry_checksums(ckpt)
    except TypeError as e:
        raise CheckpointError(f"checkpoint {path} fails its checksum: {e}") from None
    if set(saved) != set(actual):
        added, missing = sorted(set(actual) - set(saved)), sorted(set(saved) - set(actual))
        raise CheckpointError(f"checkpoint {path} fails its checksum: entries "
                              f"{', '.join(repr(k) for k in added) or 'none'} were added and "
                              f"{', '.join(repr(k) for k in missing) or 'none'} removed")
    bad = [k for k in sorted(actual, key=lambda k: (k != "model", k)) if saved[k] != actual[k]]
    if bad:
        names = [ENTRY_NAMES.get(k, f"its {k!r} entry") for k in bad]
        raise CheckpointError(f"checkpoint {path} fails its checksum: {' and '.join(names)} "
                              f"{'is' if len(bad) == 1 and bad[0] != 'model' else 'are'} corrupt")


def save(state, path, keep_copy=None, keep_last=1):
    """Write a checkpoint dict (every entry checksummed) atomically to path. With keep_copy, a name ending in
    _<digits>.pt such as ckpt_00000100.pt, the same file is also kept under that name (a hard link, so no second
    write) and of the files named like it (same prefix, same number of digits) only the keep_last highest-numbered
    remain, besides the one just written; files with any other name are never touched."""
    state = {k: v for k, v in state.items() if k != "checksum"}
    state["format_version"] = FORMAT_VERSION
    try:
        state["checksum"] = entry_checksums(state)
    except TypeError as e:
        raise CheckpointError(f"cannot save checkpoint {path}: {e}") from None
    path = Path(path)
    if keep_copy is None:
        atomic_save(state, path)
        return
    keep_copy = Path(keep_copy)
    numbered = re.fullmatch(r"(.*_)(\d+)(\.pt)", keep_copy.name)
    if not numbered:
        raise ValueError(f"keep_copy {keep_copy.name!r} is not named <prefix>_<digits>.pt")
    copy_pattern = f"{re.escape(numbered[1])}\\d{{{len(numbered[2])}}}{re.escape(numbered[3])}"
    atomic_save(state, keep_copy)
    remove_stale_temporaries(path)
    link = path.with_name(f".{path.name}.link{os.getpid()}")
    link.unlink(missing_ok=True)
    os.link(keep_copy, link)
    os.replace(link, path)
    copies = sorted(p for p in keep_copy.parent.iterdir()
                    if re.fullmatch(copy_pattern, p.name) and p.name != keep_copy.name)
    for old in copies[:max(len(copies) - (max(keep_last, 1) - 1), 0)]:
        old.unlink()
    remove_stale_temporaries(keep_copy, copy_pattern)


def _first_line(e):
    """The first non-empty line of an exception's message, cut at its first sentence, else the exception's type."""
    message = str(e)
    if "WeightsUnpickler error:" in message:  # torch's own advice comes first; the reason follows this marker
        message = message.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    text = lines[0] if lines else ""
    text = text.split(". ")[0].rstrip(".")
    if len(text) > 200:
        text = text[:200] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def load(path, map_location="cpu"):
    """The checkpoint dict at path, verified against its checksum; every failure is a CheckpointError of one line."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory, not a file")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:
        raise CheckpointError(f"checkpoint {path} is unreadable ({_first_line(e)})") from None
    if not head:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes)")
    if not head.startswith((ZIP_MAGIC, PICKLE_MAGIC)):
        raise CheckpointError(f"checkpoint {path} is unreadable: it is not a checkpoint (neither a zip archive nor a "
                              f"pickle; it begins {head[:12]!r})")
    try:
        with warnings.catch_warnings():  # torch's warnings about odd pickles would add lines to a one-line error
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} is unreadable, truncated or corrupt ({path.stat().st_size} bytes; "
                              f"{_first_line(e)})") from None
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in REQUIRED_KEYS):
        raise CheckpointError(f"checkpoint {path} lacks the keys {', '.join(REQUIRED_KEYS)}: not a checkpoint of ours")
    if ckpt["format_version"] not in READABLE_FORMATS or isinstance(ckpt["format_version"], bool):
        raise CheckpointError(f"checkpoint {path} has format {ckpt['format_version']!r}; this code reads formats "
                              f"{' and '.join(map(str, READABLE_FORMATS))}")
    _verify(ckpt, path)
    return ckpt


def build_model(ckpt, lookup, path="checkpoint", weights=True, **overrides):
    """Instantiate the checkpoint's variant with its saved config (plus overrides such as dropout) and, unless
    weights=False (a sharded checkpoint's weights load after sharding), its weights. lookup maps the saved variant
    name to its registry entry (variants.get)."""
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
    if not weights:
        return model
    try:
        missing, unexpected = model.load_state_dict(ckpt["model"], strict=False)
    except RuntimeError as e:  # shape mismatches
        lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
        raise CheckpointError(f"{path}: weights do not fit the saved config: {lines[min(1, len(lines) - 1)]}")
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not match variant {ckpt['variant']!r} "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model


def trained_data_dir(ckpt):
    """The data_dir a checkpoint was trained on ("" if it records none). A relative one (older checkpoints) is taken
    from the working directory when it exists there, else from the repository root, where data/<dataset> lives."""
    recorded = (ckpt.get("config") or {}).get("data_dir") or ""
    if not recorded or os.path.isabs(recorded) or os.path.isdir(recorded):
        return recorded
    in_repo = Path(__file__).resolve().parents[1] / recorded
    return str(in_repo) if in_repo.is_dir() else recorded


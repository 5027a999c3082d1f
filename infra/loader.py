"""Opening a checkpoint for use, the same way in sample.py and tools/ (eval, analysis, export): find it, read it (a
file through checkpoint.load; a sharded folder through scaling's torch.distributed.checkpoint reader), rebuild its
model and check the data it will read against its vocabulary."""
from dataclasses import dataclass
from pathlib import Path

import torch

from data.common import check_same_vocabulary, load_meta
from infra import checkpoint, scaling


@dataclass
class Opened:
    """A checkpoint opened for use: where it was found, its dict, the model rebuilt from it, its variant's objective,
    and the data meta (of data_dir when one was asked for, else the checkpoint's own record) with that data_dir."""
    path: Path
    ckpt: dict
    model: torch.nn.Module
    objective: object
    meta: dict | None
    data_dir: str


def locate(path):
    """The checkpoint a user names: a file; a run directory means its ckpt.pt; a missing x.pt means the folder x an
    FSDP run wrote, when there is one. A sharded folder is named as itself."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir() and not scaling.is_sharded_checkpoint(path):
        path = path / "ckpt.pt"
    return scaling.checkpoint_at(path)


def open_model(path, lookup, data_dir=None, **overrides):
    """The one loader behind sample, eval, analysis and export: locate, read (without a sharded checkpoint's
    optimizer state), rebuild the model with overrides (such as dropout=0.0), and, when data_dir is given ("" = the
    data the checkpoint was trained on), require that data's vocabulary to be the checkpoint's. Every failure is one
    line: checkpoint.CheckpointError or data.common.DataError."""
    path = locate(path)
    if path.is_file():
        ckpt = checkpoint.load(path)
    else:
        ckpt = scaling.load_checkpoint(path, optimizer=False)
    model = checkpoint.build_model(ckpt, lookup, path, **overrides)
    objective = lookup(ckpt["variant"]).objective
    if data_dir is None:
        return Opened(path, ckpt, model, objective, ckpt.get("data_meta"), "")
    data_dir = data_dir or checkpoint.trained_data_dir(ckpt)
    if not data_dir:
        raise checkpoint.CheckpointError(f"{path} records no data_dir; pass --data_dir")
    meta = load_meta(data_dir)
    check_same_vocabulary(ckpt.get("data_meta") or {}, meta, path, data_dir)
    return Opened(path, ckpt, model, objective, meta, data_dir)

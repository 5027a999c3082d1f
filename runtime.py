"""The device and precision every entry point runs with: "auto" means CUDA when present, with bfloat16 autocast
there and float32 on CPU (where fp32 is the fast dtype)."""
from contextlib import nullcontext

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve(device="auto", dtype="auto"):
    """(torch.device, torch.dtype) for the device and dtype settings of any entry point."""
    if dtype not in ("auto", *DTYPES):
        raise ValueError(f"dtype must be auto, {', '.join(DTYPES)}; got {dtype!r}")
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       "cpu" if device == "auto" else device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available here")
    if dtype == "auto":
        return dev, torch.bfloat16 if dev.type == "cuda" else torch.float32
    return dev, DTYPES[dtype]


def autocast(device, dtype):
    """Mixed precision for dtype on device (nothing for float32)."""
    return nullcontext() if dtype == torch.float32 else torch.autocast(device.type, dtype=dtype)

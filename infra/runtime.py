"""The device and precision every entry point runs with: "auto" means CUDA when present, with bfloat16 autocast
there and float32 on CPU (where fp32 is the fast dtype)."""
import os
import sys
from contextlib import nullcontext

import torch

from data.common import output_dir_problem


class Unavailable(ValueError):
    """A device or directory the run needs is missing or unusable: a fault of the machine (exit 1), not of the
    configuration (exit 2)."""


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve(device="auto", dtype="auto"):
    """(torch.device, torch.dtype) for the device and dtype settings of any entry point."""
    if dtype not in ("auto", *DTYPES):
        raise ValueError(f"dtype must be auto, {', '.join(DTYPES)}; got {dtype!r}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:<index>; got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise Unavailable(f"device={device!r} but CUDA is not available here")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise Unavailable(f"device={device!r} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:<index>; got {device!r}")
    if dtype == "auto":
        return dev, torch.bfloat16 if dev.type == "cuda" else torch.float32
    if dev.type == "cpu" and dtype == "float16":
        raise ValueError("dtype=float16 on CPU: CPUs have no fast float16 matmuls (4x slower than float32 on the "
                         "project's test CPU) and training would need loss scaling; use float32 or bfloat16")
    return dev, DTYPES[dtype]


def autocast(device, dtype):
    """Mixed precision for dtype on device (nothing for float32)."""
    return nullcontext() if dtype == torch.float32 else torch.autocast(device.type, dtype=dtype)


def require_path(path, what="out_dir"):
    """ValueError (a configuration error) when a path setting is empty or blank: an unset shell variable must not
    mean the working directory."""
    if not str(path).strip():
        raise ValueError(output_dir_problem(path, what)[1])


def check_output_dir(path, what="out_dir"):
    """Raise Unavailable (one line) unless path is, or can become, a directory this process can write into; an empty
    or blank path is a configuration error (ValueError). data.common.output_dir_problem has the rules."""
    code, message = output_dir_problem(path, what)
    if code:
        raise (ValueError if code == 2 else Unavailable)(message)


def out_of_memory(e):
    """Whether an exception is a failed allocation (the CPU allocator, CUDA, or Python's own)."""
    return isinstance(e, (MemoryError, torch.OutOfMemoryError)) or (
        isinstance(e, RuntimeError) and "can't allocate memory" in str(e))


def fail(message, code=1):
    """One `error:` line on stderr and exit: code 2 for configuration, 1 for files, data and devices."""
    print(f"error: {message}", file=sys.stderr)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        exit_now(code)  # a torchrun rank: exit with this code, not an abort in the process group's teardown
    sys.exit(code)


def exit_now(code):
    """Flush stdout and stderr and end the process with `code`, skipping interpreter teardown. A torchrun rank ends
    this way: gloo's worker threads can still hold a finished collective's tensors, whose release needs the GIL, so
    tearing the process group down can hang (a destructor joining them while holding the GIL) or abort (SIGABRT during
    interpreter finalization). Callers close their own files first."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

"""A run directory belongs to one run. The process that writes a run (train.py, or a tool writing into it: eval,
export) holds an exclusive advisory lock (flock) on the directory itself for its whole life. The kernel releases it
when the process ends, however it ends, so a crash leaves no stale lock, and taking it writes nothing into the
directory. A second writer refuses with one line naming the holder's PID (read from /proc/locks on Linux).

    claim(out_dir)      lock out_dir for this process (creating it), or Unavailable naming the holder
    retire(out_dir)     remove what an earlier run wrote there (--overwrite), leaving other files alone
"""
import fcntl
import os
import shutil
from pathlib import Path

from infra.runtime import Unavailable

# what a run writes into its out_dir (train.py, and the tools that write beside it), temporaries included
RUN_OUTPUTS = ("config.json", "metrics.jsonl", "ckpt.pt", "best.pt", "ckpt", "best", "ckpt_*", "best_*",
               ".ckpt*", ".best*", ".config.json.tmp", ".metrics.jsonl.tmp*", "loss.png", "eval_*.json",
               "attention", "analysis", "hf", ".hf*")
_held = {}  # real path -> the open directory descriptor that holds its lock


def holder(path):
    """The PID holding an flock on path, from /proc/locks, or None where that cannot be read."""
    try:
        st = os.stat(path)
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in lines:
        parts = line.split()
        if "FLOCK" in parts and "->" not in parts and inode in parts:
            pid = parts[parts.index(inode) - 1]
            return int(pid) if pid.isdigit() else None
    return None


def claim(out_dir):
    """Hold out_dir (created if missing) for this process until it exits; again for the same directory is a no-op.
    Unavailable (one line, naming the holder's PID) when another process holds it."""
    path = Path(out_dir)
    key = os.path.realpath(path)
    if key in _held:
        return
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)  # not inherited by child processes
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = holder(path)
        os.close(fd)
        by = f"process {pid}" if pid else "another process"
        raise Unavailable(f"out_dir {out_dir} is in use by {by} (a run or a tool writing there); wait for it to end "
                          f"or choose another out_dir") from None
    _held[key] = fd


def retire(out_dir):
    """Remove every file and folder an earlier run wrote into out_dir (RUN_OUTPUTS), so that afterwards it holds
    one run; anything else a user put there stays. The caller holds the directory (claim)."""
    for pattern in RUN_OUTPUTS:
        for p in Path(out_dir).glob(pattern):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()

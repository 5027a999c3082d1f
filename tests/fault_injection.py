"""Run train.py with a fault injected from outside its code (used by tests/test_reliability.py):

    python tests/fault_injection.py kill-during-save N -- <train.py args>   SIGKILL itself halfway through writing
                                                                            its N-th checkpoint file
    python tests/fault_injection.py die-on-rank R K -- <train.py args>      rank R exits abruptly at iteration K
"""
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import train  # noqa: E402


def kill_during_save(n):
    real_save, calls = torch.save, [0]

    def dying_save(obj, f, *args, **kwargs):
        calls[0] += 1
        if calls[0] == n:  # leave a half-written temp file behind, as a power cut or OOM kill would
            f.write(b"half a checkpoint")
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return real_save(obj, f, *args, **kwargs)

    torch.save = dying_save


def die_on_rank(rank, at_iter):
    real_get_lr = train.get_lr

    def get_lr(cfg, it):
        if int(os.environ.get("RANK", 0)) == rank and it == at_iter:
            os._exit(3)
        return real_get_lr(cfg, it)

    train.get_lr = get_lr


if __name__ == "__main__":
    split = sys.argv.index("--")
    mode, params, train_args = sys.argv[1], [int(a) for a in sys.argv[2:split]], sys.argv[split + 1:]
    {"kill-during-save": kill_during_save, "die-on-rank": die_on_rank}[mode](*params)
    train.main(train_args)

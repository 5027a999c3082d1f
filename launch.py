"""torchrun with a clean stop: `python launch.py [torchrun options] train.py [train options]`, e.g.

    python launch.py --standalone --nproc_per_node=8 train.py config/train_wikitext103.py

Everything is torchrun's (same options, same environment for the workers) except what happens when the launcher
itself gets SIGTERM or SIGINT (a scheduler preempting the job): torchrun forwards the signal to every worker, which
checkpoints and exits 0 (train.py's preemption), and then dies with a SignalException traceback and exit code 1.
Here it prints one line instead and exits 0 when the workers reported their checkpoint, 1 with an `error:` line
when they did not. A worker that fails is reported the same way: its own error above, then one line (torchrun
prints a traceback of its own).
"""
import os
import sys
import tempfile
from pathlib import Path

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import main as torchrun

# the file train.py's rank 0 touches once every rank has stopped after writing its preemption checkpoint
PREEMPTION_MARKER = "TRAIN_PREEMPTION_MARKER"


def main(argv):
    with tempfile.TemporaryDirectory(prefix="launch-") as tmp:
        marker = Path(tmp) / "preempted"
        os.environ[PREEMPTION_MARKER] = str(marker)
        try:
            torchrun(argv)
        except ChildFailedError as e:
            codes = ", ".join(f"rank {rank}: exit {f.exitcode}" for rank, f in sorted(e.failures.items()))
            print(f"error: {len(e.failures)} worker(s) failed ({codes}); their own errors are above", file=sys.stderr)
            sys.exit(1)
        except SignalException as e:
            name = getattr(e.sigval, "name", e.sigval)
            if not marker.exists():
                print(f"error: the launcher got {name} and the workers stopped without writing their "
                      f"checkpoint (see their output above)", file=sys.stderr)
                sys.exit(1)
            print(f"launch: stopped by {name} after the workers checkpointed; continue with "
                  f"--init_from=resume")


if __name__ == "__main__":
    main(sys.argv[1:])

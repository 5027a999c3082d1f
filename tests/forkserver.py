"""Run entry-point command lines as real processes without paying Python's and torch's start-up for each: this
server imports the project once (no tensor work, so no thread pool exists yet), then forks one child per command.
The child changes into the command's directory, points stdout and stderr at files, runs the script as __main__ with
its argv exactly as `python script.py ...` would (an uncaught exception prints its traceback and exits 1), and exits
with the script's code. Used by tests/test_fuzz.py.

Protocol (JSON lines): the test writes {"argv": [...], "cwd": ..., "stdout": path, "stderr": path, "timeout": s}
to stdin; the server answers {"code": int, "timed_out": bool, "seconds": float} on stdout. It starts by answering
{"ready": true}.
"""
import json
import os
import runpy
import signal
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def child(job):
    os.chdir(job["cwd"])
    for fd, path in ((1, job["stdout"]), (2, job["stderr"])):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(target, fd)
        os.close(target)
    script = str(REPO / job["argv"][0])
    sys.argv = [script, *job["argv"][1:]]
    sys.path[0] = str(Path(script).parent)  # as `python script.py` sets it
    code = 0
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as e:
        if isinstance(e.code, int):
            code = e.code
        elif e.code is not None:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run(job):
    sys.stdout.flush()
    start = time.time()
    pid = os.fork()
    if pid == 0:
        child(job)
    deadline, timed_out = start + job["timeout"], False
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.time() > deadline:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            timed_out = True
            break
        time.sleep(0.01)
    code = os.waitstatus_to_exitcode(status)
    return {"code": code, "timed_out": timed_out, "seconds": round(time.time() - start, 3)}


def main():
    sys.path.insert(0, str(REPO))
    # what the entry points import, loaded once (imports only: no tensor is computed before a fork)
    import bench, sample, train  # noqa: F401
    from tools import analysis, eval, export  # noqa: F401
    import data.common  # noqa: F401
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        print(json.dumps(run(json.loads(line))), flush=True)


if __name__ == "__main__":
    main()

"""results/gpu_check/run.sh without a GPU: it runs what it can (tiny CPU runs of the same commands and parsers), says
which steps need CUDA, prints one table and exits 0, so its plumbing is ready for the first GPU."""
import os
import subprocess

import pytest
import torch

from conftest import REPO


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the script runs for real (minutes)")
def test_gpu_check_runs_its_plumbing_on_cpu_and_skips_the_cuda_steps(tmp_path):
    env = dict(os.environ, GPU_CHECK_OUT=str(tmp_path))
    proc = subprocess.run(["bash", "results/gpu_check/run.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| check | measured | reference | wall | status |")
    statuses = [row.rstrip(" |").rsplit("| ", 1)[-1] for row in rows[2:]]
    skipped = [s for s in statuses if s.startswith("skipped: needs CUDA")]
    assert len(skipped) >= 4  # tests, Shakespeare, bench and Flex timings each say they need CUDA
    assert sum(s.startswith("plumbing ok") for s in statuses) >= 3  # the same commands and parsers ran on CPU
    assert not any(s.startswith(("FAILED", "TIMEOUT")) for s in statuses)
    assert (tmp_path / "table.md").read_text().strip() in proc.stdout

"""benchmarks/gpu_check.sh on a machine without CUDA: exit 3 at once, and no log or result left
under its results directory (nothing was measured)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: the check would run for minutes")
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_no_cuda_exits_3_and_writes_nothing(tmp_path):
    results = tmp_path / "results"
    env = {**os.environ, "PYTHON": sys.executable, "RESULTS_DIR": str(results), "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 3, done.stdout[-2000:] + done.stderr[-2000:]
    assert "nothing measured, no log written" in done.stdout
    assert not results.exists() or not any(results.iterdir())

"""benchmarks/gpu_check.sh and its per-test time limit, checked where they can be: on a CPU."""

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU exit")
def test_gpu_check_without_cuda_exits_3_at_once_with_its_reason(tmp_path):
    began = time.perf_counter()
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "RESULTS_DIR": str(tmp_path), "PYTHON": sys.executable},
                          timeout=60)  # fmt: skip
    seconds = time.perf_counter() - began
    assert done.returncode == 3, done.stdout + done.stderr
    assert "exit 3: torch sees no CUDA device" in done.stdout and seconds < 30
    assert not list(tmp_path.iterdir())  # nothing measured, nothing written under the results


def test_per_test_timeout_fails_the_slow_test_and_runs_the_next(tmp_path):
    (tmp_path / "test_slow.py").write_text(
        "import time\n\ndef test_hangs():\n    time.sleep(30)\n\ndef test_after():\n    assert True\n"
    )
    began = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "benchmarks.per_test_timeout", "--per-test-timeout", "1",
         "-p", "no:cacheprovider", str(tmp_path / "test_slow.py")],
        capture_output=True, text=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout
    assert "1 failed, 1 passed" in done.stdout and "ran past the 1 s per-test limit" in done.stdout
    assert time.perf_counter() - began < 25

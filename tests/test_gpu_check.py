"""tools/gpu_check.sh, the GPU issue's prepared run, runs on a CPU-only machine too and says
what it skipped."""

import shutil

import pytest
from conftest import run_command


@pytest.mark.slow(seconds=12)
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_check_runs_here_and_names_what_it_skipped():
    proc = run_command(["bash", "tools/gpu_check.sh"])
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert "bf16: " in output and "fp16: " in output  # the capability print-out
    assert "needs a CUDA GPU" in output  # each CUDA test, skipped with its reason
    assert "skipped: the benchmark on CUDA" in output

"""Kept freed memory (pointrend_sem/cpu_memory.py) is the commands' flag --keep-freed-memory:
importing the package and building a SemSegPredictor leave glibc's allocator as it was (a freed
large tensor is handed back, the next one faults in fresh pages); the flag, on CPU only, makes
the next allocation reuse the freed pages without page faults. The removed config key
MODEL.KEEP_FREED_MEMORY stops a command with one line naming the flag.

The page faults are counted in a process of its own, on its main thread: the test process's
heap and arenas depend on the tests run before, and glibc maps large blocks of a thread whose
arena is not the main one whatever ``mallopt`` says."""

import argparse
import json
import resource
import subprocess
import sys

import pytest
from conftest import REPO_ROOT, load_config, one_line_error, run_tool

from pointrend_sem import cpu_memory
from pointrend_sem.errors import one_line_errors

pytestmark = pytest.mark.skipif(
    cpu_memory._glibc() is None, reason="glibc's mallopt is not available here"
)

PAGES = 96 * 2**20 // resource.getpagesize()  # a 96 MiB tensor, above glibc's mmap limit
# Minor page faults of each of 6 passes that allocate a 96 MiB tensor, write it and free it
# (repeated inference in miniature): after a SemSegPredictor was built and run, then with the
# flag (on CUDA, then on CPU), then after release_freed_memory (the benchmark's way back).
FAULTS_PER_PASS = """
import argparse, json, resource
import numpy as np
import torch
from pointrend_sem import cpu_memory
from pointrend_sem.engine import setup
from pointrend_sem.predictor import SemSegPredictor

def faults_per_pass(passes=6):
    faults = []
    for _ in range(passes):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        tensor = torch.empty(96 * 2**18)
        tensor.fill_(1.0)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        del tensor
    return faults

args = argparse.Namespace(config_file="configs/demo_synthetic.yaml", opts=["MODEL.DEVICE", "cpu"])
predictor = SemSegPredictor(setup(args, log=False))
predictor(np.zeros((48, 64, 3), np.uint8))
result = {"predictor_kept": cpu_memory.freed_memory_kept(), "predictor": faults_per_pass()}
flag = argparse.Namespace(keep_freed_memory=True)
result["cuda_kept"] = cpu_memory.apply_memory_argument(flag, "cuda")
result["cpu_kept"] = cpu_memory.apply_memory_argument(flag, "cpu")
result["kept"] = faults_per_pass()
cpu_memory.release_freed_memory()
result["released"] = faults_per_pass()
print(json.dumps(result))
"""


@pytest.mark.slow
def test_predictor_leaves_the_allocator_alone_and_the_flag_keeps_freed_memory():
    proc = subprocess.run(
        [sys.executable, "-c", FAULTS_PER_PASS], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # glibc as it was: the freed tensor went back to the system, each pass maps it afresh
    assert not result["predictor_kept"] and min(result["predictor"]) > PAGES // 4, result
    assert not result["cuda_kept"] and result["cpu_kept"], result
    # glibc may need a pass or two to leave a free block large enough where small allocations
    # took a piece of one; then the passes reuse it
    assert sum(result["kept"][-3:]) < PAGES // 50, result
    assert min(result["released"]) > PAGES // 4, result


def test_flag_is_off_by_default_and_says_so_on_cuda(caplog):
    parser = argparse.ArgumentParser()
    cpu_memory.add_memory_argument(parser)
    assert parser.parse_args([]).keep_freed_memory is False
    args = parser.parse_args([cpu_memory.MEMORY_FLAG])
    before = cpu_memory.freed_memory_kept()
    with caplog.at_level("INFO", logger="pointrend_sem.cpu_memory"):
        assert cpu_memory.apply_memory_argument(args, "cuda:0") == before
    assert [r.getMessage() for r in caplog.records] == [
        "--keep-freed-memory does nothing on cuda:0: it sets glibc's CPU allocator."
    ]


def test_removed_key_names_the_flag(tmp_path):
    with pytest.raises(KeyError) as error:
        load_config("demo_synthetic.yaml", ["MODEL.KEEP_FREED_MEMORY", "False"])
    assert "MODEL.KEEP_FREED_MEMORY" in str(error.value) and "--keep-freed-memory" in str(
        error.value
    )
    with pytest.raises(SystemExit), one_line_errors():
        load_config("demo_synthetic.yaml", ["MODEL.KEEP_FREED_MEMORY", "True"])

    old = tmp_path / "old.yaml"
    old.write_text(
        f'_BASE_: "{REPO_ROOT}/configs/demo_synthetic.yaml"\nMODEL:\n  KEEP_FREED_MEMORY: True\n'
    )
    cmd = ["demo/demo.py", "--config-file", old, "--input", "x.png", "--output", tmp_path]
    line = one_line_error(run_tool(tmp_path, *cmd))
    assert line.startswith("error: Key MODEL.KEEP_FREED_MEMORY was renamed to the command-line ")
    assert "pass --keep-freed-memory" in line

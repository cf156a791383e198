"""MODEL.KEEP_FREED_MEMORY (pointrend_sem/cpu_memory.py): with the setting, a freed large tensor's
pages are reused by the next allocation without page faults; with glibc's defaults, each
allocation maps fresh pages; our commands apply it on CPU only.

The page faults are counted in a process of its own, on its main thread: the test process's
heap and arenas depend on the tests run before, and glibc maps large blocks of a thread whose
arena is not the main one whatever ``mallopt`` says."""

import json
import resource
import subprocess
import sys

import pytest
from conftest import REPO_ROOT, load_config

from pointrend_sem import cpu_memory

pytestmark = pytest.mark.skipif(
    cpu_memory._glibc() is None, reason="glibc's mallopt is not available here"
)

PAGES = 96 * 2**20 // resource.getpagesize()  # a 96 MiB tensor, above glibc's mmap limit
# Minor page faults of each of 8 passes that allocate a 96 MiB tensor, write it and free it
# (repeated inference in miniature), with glibc's defaults, then keeping freed memory.
FAULTS_PER_PASS = """
import json, resource, torch
from pointrend_sem import cpu_memory

def faults_per_pass(passes=8):
    faults = []
    for _ in range(passes):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        tensor = torch.empty(96 * 2**18)
        tensor.fill_(1.0)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        del tensor
    return faults

cpu_memory.release_freed_memory()
glibc = faults_per_pass()
kept = cpu_memory.keep_freed_memory() and cpu_memory.keep_freed_memory()
print(json.dumps({"glibc": glibc, "kept": kept, "kept_faults": faults_per_pass()}))
"""


def test_kept_memory_is_reused_without_page_faults():
    proc = subprocess.run(
        [sys.executable, "-c", FAULTS_PER_PASS], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert min(result["glibc"]) > PAGES // 4, result  # a fresh mapping each pass
    assert result["kept"]
    # glibc may need a pass or two to leave a free block large enough where small allocations
    # took a piece of one; then the passes reuse it
    assert sum(result["kept_faults"][-3:]) < PAGES // 50, result


def test_commands_keep_freed_memory_on_cpu_only():
    try:
        cpu_memory.release_freed_memory()
        cfg = load_config("demo_synthetic.yaml", ["MODEL.KEEP_FREED_MEMORY", False])
        assert not cpu_memory.apply_memory_setting(cfg)
        cfg = load_config("demo_synthetic.yaml", ["MODEL.DEVICE", "cuda"])
        assert not cpu_memory.apply_memory_setting(cfg)
        cfg = load_config("demo_synthetic.yaml", ["MODEL.DEVICE", "cpu"])
        assert cpu_memory.apply_memory_setting(cfg)
    finally:
        cpu_memory.release_freed_memory()

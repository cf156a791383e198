"""Wall-clock time and peak memory of a call, and timing of several models in turn."""

import ctypes
import os
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Tuple

import torch
from tqdm import tqdm

from pointrend_sem.cpu_memory import (
    freed_memory_kept,
    keep_freed_memory,
    release_freed_memory,
)

CLEAR_REFS = "/proc/self/clear_refs"


def synchronize(device: str) -> None:
    """Wait for queued CUDA work, so that wall-clock times cover it."""
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def release_free_heap() -> None:
    """Hand memory that glibc's allocator keeps after ``free`` back to the system
    (``malloc_trim``), so that a pass's allocations show up as resident set growth; a no-op
    without glibc."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peak_rss() -> bool:
    """Reset the kernel's resident set size high-water mark (``ru_maxrss``) to the current size;
    False where ``/proc/self/clear_refs`` cannot be written."""
    try:
        with open(CLEAR_REFS, "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def current_rss_mib() -> float:
    """This process's resident set size now, in MiB (``/proc/self/statm``)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory_method(device: str) -> str:
    """How :func:`measure_call` measures memory on ``device`` in this process."""
    if device.startswith("cuda"):
        return "torch.cuda.max_memory_allocated"
    if os.access(CLEAR_REFS, os.W_OK):
        return "peak RSS increase (ru_maxrss reset through /proc/self/clear_refs)"
    return "peak RSS increase (ru_maxrss, not resettable here: lower bound)"


def start_memory(device: str) -> float:
    """Reset the memory peak before a pass; returns the baseline to subtract, in MiB."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
        return 0.0
    release_free_heap()
    reset_peak_rss()
    return current_rss_mib()


def peak_memory(device: str, baseline: float) -> float:
    """Peak memory (MiB) since :func:`start_memory` returned ``baseline``."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated(device) / 2**20
    return max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - baseline, 0.0)


def measure_call(fn: Callable[[], Any], device: str) -> Tuple[float, float, Any]:
    """Call ``fn`` once.

    Returns:
        (seconds, peak memory in MiB as :func:`memory_method` describes, fn's result).
    """
    baseline = start_memory(device)
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    seconds = time.perf_counter() - start
    return seconds, peak_memory(device, baseline), result


@dataclass
class Contender:
    """A model under test: ``forward()`` runs one pass on the benchmark batch; ``labels(output)``
    turns its result into per-image (H, W) class ids. ``keeps_freed_memory``: it runs with
    glibc keeping freed memory for reuse (``--keep-freed-memory``,
    :mod:`pointrend_sem.cpu_memory`), otherwise with glibc's own large-allocation behaviour."""

    name: str
    forward: Callable[[], Any]
    labels: Callable[[Any], List[torch.Tensor]]
    keeps_freed_memory: bool = False


def time_call(fn: Callable[[], Any], device: str) -> Tuple[float, Any]:
    """Call ``fn`` once, without touching the allocator; returns (seconds, fn's result)."""
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return time.perf_counter() - start, result


def minor_page_faults() -> int:
    """Minor page faults of this process so far (pages mapped on first touch)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def use_memory_setting(keeps_freed_memory: bool) -> None:
    """Switch this process's allocator to a contender's setting: freed memory kept
    (:func:`~pointrend_sem.cpu_memory.keep_freed_memory`), or glibc's large-allocation behaviour
    (:func:`~pointrend_sem.cpu_memory.release_freed_memory`, only once it was kept: until then
    glibc is left untouched)."""
    if keeps_freed_memory:
        keep_freed_memory()
    elif freed_memory_kept():
        release_freed_memory()


def measure_pass(contender: Contender, device: str) -> Tuple[float, float, int, Any]:
    """One timed pass of ``contender`` in its allocator setting: (seconds, peak MiB, minor page
    faults of the timed pass, result).

    On CPU each contender runs twice in its own setting (freed memory kept, or glibc's
    defaults): the first pass starts from a trimmed heap and gives the peak memory
    (:func:`measure_call`); the second, timed, starts from the heap the first left, as every
    pass after the first does in a real run. On CUDA one pass gives both."""
    if device != "cpu":
        seconds, peak, result = measure_call(contender.forward, device)
        return seconds, peak, 0, result
    use_memory_setting(contender.keeps_freed_memory)
    _, peak, _ = measure_call(contender.forward, device)
    faults = minor_page_faults()
    seconds, result = time_call(contender.forward, device)
    return seconds, peak, minor_page_faults() - faults, result


def time_alternating(
    contenders: List[Contender], runs: int, warmup: int, device: str
) -> Dict[str, Dict[str, Any]]:
    """Run the contenders in turn, ``warmup + runs`` rounds, under no_grad.

    Returns:
        per contender name: "seconds", "peak_mib" and "page_faults" (minor, of the timed pass)
        of the timed rounds (lists), and "labels" of the last round.
    """
    records = {
        c.name: {"seconds": [], "peak_mib": [], "page_faults": [], "labels": None}
        for c in contenders
    }
    with torch.no_grad():
        for round_index in tqdm(range(warmup + runs), desc="inference", file=sys.stderr):
            for contender in contenders:
                seconds, peak, faults, output = measure_pass(contender, device)
                record = records[contender.name]
                record["labels"] = contender.labels(output)
                if round_index >= warmup:
                    record["seconds"].append(seconds)
                    record["peak_mib"].append(peak)
                    record["page_faults"].append(faults)
    return records


def latency_fields(prefix: str, seconds: List[float]) -> Dict[str, Any]:
    """Median, min, max (ms) and the individual runs of a list of timings."""
    ms = [1000.0 * s for s in seconds]
    return {
        f"{prefix}latency_median_ms": statistics.median(ms),
        f"{prefix}latency_min_ms": min(ms),
        f"{prefix}latency_max_ms": max(ms),
        f"{prefix}latency_runs_ms": ms,
    }

"""Reuse of freed memory on a CPU (``MODEL.KEEP_FREED_MEMORY``): glibc's allocator told to keep
the memory of freed tensors in the process instead of handing it back to the operating system.

Why: glibc serves every allocation above 32 MiB (and, until its threshold adapts, every one
above 128 KiB) with a fresh ``mmap`` and unmaps it on ``free``. A 1024 x 2048 PointRend pass
allocates gigabytes of such feature maps, so each pass touches about 3 GB of new pages: about
790,000 page faults and 2 s of kernel time per pass on the project's 2-core machine, where
writing fresh pages ran at 2.6 GB/s against 8.6-10 GB/s for pages already in use. With
``mmap`` off for the heap (``M_MMAP_MAX`` 0) and no trimming of its top (``M_TRIM_THRESHOLD``
at its maximum), freed feature maps stay mapped and the next pass reuses them without a fault.

The cost: the process keeps its peak resident memory after a pass instead of shrinking (what a
serving or evaluation process does anyway); with images of varying sizes the heap fragments
more (R-50, 24 random sizes up to 900 x 1200: 2.47 GB resident against glibc's 1.99 GB); and
the setting is process-wide (it also holds for data loader workers forked afterwards). It
reaches the allocations of the main arena, the main thread's, where our commands run the model;
glibc still maps large blocks afresh for a thread attached to another arena. Only glibc (Linux)
has ``mallopt``; elsewhere nothing changes. Intel's PyTorch CPU tuning guide recommends jemalloc
or tcmalloc for the same reason; this needs no preloaded library.
"""

import ctypes
import ctypes.util
import functools
import logging
from typing import Optional

logger = logging.getLogger(__name__)

# mallopt parameters (glibc malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
_INT_MAX = 2**31 - 1

# What a long-running default glibc process settles at for large allocations: its dynamic mmap
# threshold rises to the largest chunk it freed, at most 32 MiB (DEFAULT_MMAP_THRESHOLD_MAX on
# 64-bit), with the trim threshold at twice that; up to 65,536 mmapped chunks.
GLIBC_STEADY_MMAP_THRESHOLD = 32 * 2**20
GLIBC_STEADY_TRIM_THRESHOLD = 2 * GLIBC_STEADY_MMAP_THRESHOLD
GLIBC_DEFAULT_MMAP_MAX = 65536


@functools.lru_cache(maxsize=None)
def _glibc() -> Optional[ctypes.CDLL]:
    """glibc, when this process runs on it (it has ``mallopt`` and ``malloc_trim``)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        libc.mallopt  # noqa: B018  (AttributeError on a libc without it)
        libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


def _set(libc: ctypes.CDLL, parameter: int, value: int) -> bool:
    return bool(libc.mallopt(ctypes.c_int(parameter), ctypes.c_int(value)))


_kept = False


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory in the process for reuse (see the module doc); idempotent,
    logged once. Returns whether the setting is in force (False without glibc)."""
    global _kept
    libc = _glibc()
    if libc is None:
        return False
    if not _kept:
        _kept = _set(libc, _M_MMAP_MAX, 0) and _set(libc, _M_TRIM_THRESHOLD, _INT_MAX)
        if _kept:
            logger.info(
                "MODEL.KEEP_FREED_MEMORY: freed tensor memory stays in the process for reuse "
                "(glibc mmap off, no trimming); set it False to return memory to the system."
            )
    return _kept


def release_freed_memory() -> bool:
    """Undo :func:`keep_freed_memory`: glibc's large-allocation behaviour as a long-running
    default process has it (mmap above 32 MiB, trimming above 64 MiB), and the memory kept so
    far handed back (``malloc_trim``). Returns False without glibc.

    A process that called ``mallopt`` cannot return to glibc's adaptive thresholds; these are
    the values they settle at (the benchmark runs reference models this way)."""
    global _kept
    libc = _glibc()
    if libc is None:
        return False
    _set(libc, _M_MMAP_THRESHOLD, GLIBC_STEADY_MMAP_THRESHOLD)
    _set(libc, _M_TRIM_THRESHOLD, GLIBC_STEADY_TRIM_THRESHOLD)
    _set(libc, _M_MMAP_MAX, GLIBC_DEFAULT_MMAP_MAX)
    libc.malloc_trim(0)
    _kept = False
    return True


def apply_memory_setting(cfg) -> bool:
    """:func:`keep_freed_memory` when ``cfg.MODEL.KEEP_FREED_MEMORY`` is on and the model runs
    on the CPU (``MODEL.DEVICE`` "cpu"); returns whether the setting is in force."""
    if cfg.MODEL.KEEP_FREED_MEMORY and cfg.MODEL.DEVICE == "cpu":
        return keep_freed_memory()
    return _kept

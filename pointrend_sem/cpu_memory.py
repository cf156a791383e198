"""glibc's allocator on a CPU: keeping freed memory for reuse (the commands' flag
``--keep-freed-memory``, off by default) and handing free memory back (:func:`return_freed_memory`).

Nothing here runs on import, and nothing in the library calls ``mallopt``: an allocator setting
is process-wide, so it is the command line's choice (:func:`add_memory_argument` and
:func:`apply_memory_argument`, called by train_net.py, demo/demo.py, tools/benchmark.py,
tools/visualize_points.py and tools/export_model.py), never a model's or a config's.

Why keep freed memory: glibc serves every allocation above 32 MiB (and, until its threshold
adapts, every one above 128 KiB) with a fresh ``mmap`` and unmaps it on ``free``. A 1024 x 2048
PointRend pass allocates gigabytes of such feature maps, so each pass touches about 3 GB of new
pages: about 790,000 page faults and 2 s of kernel time per pass on the project's 2-core
machine. With ``mmap`` off for the heap (``M_MMAP_MAX`` 0) and no trimming of its top
(``M_TRIM_THRESHOLD`` at its maximum), freed feature maps stay mapped and the next pass reuses
them without a fault.

The cost: the process keeps its peak resident memory, and with images of varying sizes the heap
fragments and grows image after image (docs/speed.md, "Memory under load"). The setting
reaches the allocations of the main arena, the main thread's, where our commands run the model;
glibc still maps large blocks afresh for a thread attached to another arena. Only glibc (Linux)
has ``mallopt``; elsewhere nothing changes. Intel's PyTorch CPU tuning guide recommends jemalloc
or tcmalloc for the same reason; this needs no preloaded library.

Even untouched, glibc keeps the free memory of varying-size feature maps inside its arenas
(its dynamic mmap threshold rises to 32 MiB after the first large free, and only the top of a
heap is trimmed), so a process that predicts images of many sizes grows;
:func:`return_freed_memory` (``malloc_trim(0)``) after a prediction hands that memory back
without changing any setting.
"""

import ctypes
import ctypes.util
import functools
import logging
from typing import Optional

logger = logging.getLogger(__name__)

MEMORY_FLAG = "--keep-freed-memory"

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
                f"{MEMORY_FLAG}: freed tensor memory stays in the process for reuse "
                "(glibc mmap off, no trimming)."
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


def freed_memory_kept() -> bool:
    """Whether :func:`keep_freed_memory` is in force in this process."""
    return _kept


def return_freed_memory() -> bool:
    """Hand the free memory that glibc holds back to the system (``malloc_trim(0)``): the top of
    each heap and every whole free page inside its arenas. Nothing else changes (no
    ``mallopt``); live memory stays where it is. Meant to follow a prediction, once its
    intermediate tensors are freed. Does nothing while :func:`keep_freed_memory` is in force
    (the command line chose to keep that memory) and without glibc; returns whether it trimmed.
    """
    libc = _glibc()
    if libc is None or _kept:
        return False
    libc.malloc_trim(0)
    return True


def add_memory_argument(parser) -> None:
    """The command-line flag ``--keep-freed-memory`` (``args.keep_freed_memory``), applied by
    :func:`apply_memory_argument`."""
    parser.add_argument(
        MEMORY_FLAG,
        action="store_true",
        help="on a CPU under glibc, keep the memory of freed tensors in the process for the next "
        "pass instead of returning it to the system (faster repeated 1024 x 2048 passes, more "
        "resident memory; process-wide; pointrend_sem/cpu_memory.py)",
    )


def apply_memory_argument(args, device: str) -> bool:
    """:func:`keep_freed_memory` when ``args.keep_freed_memory`` is set and ``device`` (e.g.
    ``cfg.MODEL.DEVICE``) is the CPU; on another device, or without glibc, one log line says that
    the flag does nothing. Returns whether the setting is in force."""
    if not getattr(args, "keep_freed_memory", False):
        return _kept
    if str(device).split(":")[0] != "cpu":
        logger.info(f"{MEMORY_FLAG} does nothing on {device}: it sets glibc's CPU allocator.")
        return _kept
    if not keep_freed_memory():
        logger.info(f"{MEMORY_FLAG} does nothing here: the C library is not glibc (no mallopt).")
    return _kept

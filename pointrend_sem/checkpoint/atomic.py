"""Checkpoints whose files are complete or absent, whatever moment a process is killed.

fvcore's ``Checkpointer`` writes every file, the checkpoint (``save``) and its ``last_checkpoint``
tag (``tag_last_checkpoint``), through its public ``path_manager`` attribute. Giving it an
:class:`AtomicWritesPathManager` makes both writes atomic without changing how they are written.
"""

import contextlib
import os
from typing import IO, Any, Iterator

from fvcore.common.checkpoint import Checkpointer


@contextlib.contextmanager
def atomic_open(path: str, mode: str) -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing (``mode`` "w" or "wb"). After the block
    ends normally the file is flushed to disk and renamed over ``path`` (an atomic replace on
    POSIX); if it raises, the temporary file is removed and ``path`` is left as it was."""
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class AtomicWritesPathManager:
    """A path manager (iopath's ``PathManager`` interface) that opens local files for writing
    with :func:`atomic_open` and hands every other call (reads, remote paths, ``exists``, ``ls``,
    ``rm``, ...) to the path manager it wraps."""

    def __init__(self, path_manager: Any):
        self.path_manager = path_manager

    def open(self, path: str, mode: str = "r", **kwargs):
        """:func:`atomic_open` for a local ``path`` opened with mode "w" or "wb" (and no other
        option), else the wrapped path manager's ``open``."""
        if mode in ("w", "wb") and "://" not in path and not kwargs:
            return atomic_open(path, mode)
        return self.path_manager.open(path, mode, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.path_manager, name)


def make_writes_atomic(checkpointer: Checkpointer) -> Checkpointer:
    """Make ``checkpointer`` write each checkpoint and its ``last_checkpoint`` tag atomically
    (in place, so that hooks already holding it write atomically too); returns it.

    A kill mid-write leaves the previous checkpoint and tag untouched, never a truncated file
    under a checkpoint's name (a stray ``*.tmp.<pid>`` file beside them at worst).
    """
    if not isinstance(checkpointer.path_manager, AtomicWritesPathManager):
        checkpointer.path_manager = AtomicWritesPathManager(checkpointer.path_manager)
    return checkpointer

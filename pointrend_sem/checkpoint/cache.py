"""The cache of converted published checkpoints: the checkpointer
(:class:`~pointrend_sem.checkpoint.checkpointer.PointRendSemCheckpointer`) converts an
mmsegmentation, sssegmentation or ImageNet checkpoint once, then reads it from here.

The cache: ``$POINTREND_SEM_CACHE`` (default ``~/.cache/pointrend_sem``) ``/converted/
<file name>-<key>.pth``, the key a hash of the source file's absolute path, size and modification
time (and of whether the norms were folded), so that a file changed in place is converted anew.
A URL is downloaded by detectron2's PathManager into its own cache first (``~/.torch/
iopath_cache``), which is the file keyed here. An entry that cannot be read is converted again.
"""

import hashlib
import logging
import os
from typing import Any, Dict, Optional

import torch

from ..convert.published import DESCRIPTIONS
from .atomic import atomic_open

CACHE_ENV = "POINTREND_SEM_CACHE"
# bump when a converter changes what it writes, so that older cache entries are not used
CACHE_VERSION = 1

logger = logging.getLogger(__name__)


def cache_dir() -> str:
    """Folder of the converted checkpoints: ``$POINTREND_SEM_CACHE/converted``, by default
    ``~/.cache/pointrend_sem/converted``."""
    root = os.environ.get(CACHE_ENV) or os.path.join("~", ".cache", "pointrend_sem")
    return os.path.join(os.path.expanduser(root), "converted")


def cache_path(filename: str, fold_point_head_norms: bool) -> str:
    """Where the conversion of the local file ``filename`` is cached (see the module's doc)."""
    stat = os.stat(filename)
    identity = f"{os.path.abspath(filename)}|{stat.st_size}|{stat.st_mtime_ns}|"
    identity += f"{int(fold_point_head_norms)}|{CACHE_VERSION}"
    key = hashlib.sha256(identity.encode()).hexdigest()[:16]
    stem = os.path.splitext(os.path.basename(filename))[0]
    return os.path.join(cache_dir(), f"{stem}-{key}.pth")


def read_cache(path: str) -> Optional[Dict[str, Any]]:
    """A cache entry ``{"model", "source"}``; None when absent or unreadable (then rebuilt)."""
    if not os.path.isfile(path):
        return None
    try:
        entry = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(entry, dict) and isinstance(entry.get("model"), dict):
            if entry.get("source") in DESCRIPTIONS:
                return entry
    except Exception:  # torch raises errors of many kinds for a truncated or foreign file
        pass
    logger.warning(f"The cached conversion {path} cannot be read; converting again.")
    return None


def write_cache(path: str, entry: Dict[str, Any]) -> None:
    """Write ``entry`` to ``path`` atomically (a reader never sees half a file:
    :func:`~pointrend_sem.checkpoint.atomic.atomic_open`); a cache that cannot be written is only
    logged."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with atomic_open(path, "wb") as f:
            torch.save(entry, f)
    except OSError as e:
        logger.warning(f"Cannot cache the converted checkpoint at {path}: {e}")

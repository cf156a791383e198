"""Checkpoint files, one module per job:

* :mod:`.safe_load`: reading a weights file without running code from it;
* :mod:`.checkpointer`: :class:`PointRendSemCheckpointer`, which reads ``MODEL.WEIGHTS``
  (published checkpoints of other code bases converted on load) and judges its fit to the model;
* :mod:`.cache`: the converted checkpoints, kept for the next load;
* :mod:`.atomic`: checkpoints written whole or not at all (:func:`make_writes_atomic`);
* :mod:`.diagnosis`: why a weights or checkpoint file cannot be used, with the fix.
"""

from .atomic import AtomicWritesPathManager, atomic_open, make_writes_atomic
from .cache import CACHE_ENV, cache_dir, cache_path
from .checkpointer import PointRendSemCheckpointer
from .diagnosis import (
    check_weights_file,
    checkpoint_read_problem,
    checkpoint_to_read,
    explain_unreadable_checkpoint,
)
from .safe_load import TRUST_ENV, UntrustedCheckpointError, load_weights_file

__all__ = [
    "AtomicWritesPathManager",
    "atomic_open",
    "make_writes_atomic",
    "CACHE_ENV",
    "cache_dir",
    "cache_path",
    "PointRendSemCheckpointer",
    "check_weights_file",
    "checkpoint_read_problem",
    "checkpoint_to_read",
    "explain_unreadable_checkpoint",
    "TRUST_ENV",
    "UntrustedCheckpointError",
    "load_weights_file",
]

"""Why a weights or checkpoint file cannot be used, said before or while it is loaded:
:func:`check_weights_file` (a local ``MODEL.WEIGHTS`` that does not exist), and
:func:`explain_unreadable_checkpoint` around a load (a truncated file, not a checkpoint, pickled
objects), which names the file, what is wrong with it (:func:`checkpoint_read_problem`) and the
fix."""

import contextlib
import os
from typing import Iterator, Optional, Tuple
from urllib.parse import urlparse
from urllib.request import url2pathname

from ..errors import UserError, UserFileNotFoundError, UserValueError
from .safe_load import TRUST_ENV, UntrustedCheckpointError, load_weights_file


def check_weights_file(weights: str) -> None:
    """Raise when ``MODEL.WEIGHTS`` names a local file (a path, or a ``file://`` URL) that does
    not exist. Other URLs and ``detectron2://`` paths are left to the checkpointer, which
    downloads them (:mod:`pointrend_sem.checkpoint.safe_load`: https only, hash-checked)."""
    local = url2pathname(urlparse(weights).path) if weights.startswith("file://") else weights
    if local and "://" not in local and not os.path.isfile(local):
        raise UserFileNotFoundError(
            f"MODEL.WEIGHTS {weights} does not exist. Obtain it (README, 'Pretrained "
            "backbones'), point MODEL.WEIGHTS at another file, or train from scratch with "
            'MODEL.WEIGHTS "".'
        )


def checkpoint_read_problem(path: str) -> Optional[str]:
    """Why the checkpoint file ``path`` cannot be read as the checkpointer reads it
    (:func:`~pointrend_sem.checkpoint.safe_load.load_weights_file`: no code from the file runs),
    in a few words; None when it can be."""
    try:
        load_weights_file(path, trust=False)
    except UntrustedCheckpointError as e:
        return (
            f"it holds pickled Python objects besides tensors ({e.name}), which could run code; "
            f"set {TRUST_ENV}=1 if you trust it"
        )
    except Exception as e:  # torch and pickle raise errors of many kinds for a bad file
        message = str(e.args[0]) if e.args else ""
        if isinstance(e, EOFError):
            return "the file ends too early (EOFError)"
        first = message.split(". ")[0].strip().splitlines()[0] if message.strip() else ""
        if isinstance(e, KeyError) or not first:
            return f"its content is not a checkpoint's ({type(e).__name__})"
        return f"{first[:200]} ({type(e).__name__})"
    return None


def checkpoint_to_read(checkpointer, weights: str, resume: bool) -> Tuple[str, str]:
    """(file, where it comes from) that ``checkpointer.resume_or_load(weights, resume=resume)``
    reads: the last checkpoint of its folder when resuming from one, else ``weights``."""
    if resume and checkpointer.has_checkpoint():
        tag = os.path.join(checkpointer.save_dir, "last_checkpoint")
        return checkpointer.get_checkpoint_file(), f"the checkpoint named by {tag}"
    return weights, "MODEL.WEIGHTS"


@contextlib.contextmanager
def explain_unreadable_checkpoint(path: str, source: str = "MODEL.WEIGHTS") -> Iterator[None]:
    """Around loading the checkpoint file ``path`` (``source``: the key or file that names it):
    when loading fails and the file itself cannot be read (truncated, not a checkpoint, pickled
    objects), raise a :class:`UserValueError` naming it and the fix; any other error passes
    unchanged. URLs are left alone."""
    try:
        yield
    except Exception as e:
        if isinstance(e, UserError) or not path or "://" in path or not os.path.isfile(path):
            raise
        problem = checkpoint_read_problem(path)
        if problem is None:
            raise
        if source == "MODEL.WEIGHTS":
            fix = (
                "Copy or download it again if it is truncated, or convert a checkpoint of another "
                "code base with tools/convert_weights.py (README, 'Model zoo')."
            )
        else:
            fix = (
                "Start again without --resume, or write an earlier checkpoint's name into the tag."
            )
        raise UserValueError(
            f"Cannot read the checkpoint {path} ({source}): {problem}. {fix}"
        ) from e

"""Reading a weights file without running code from it.

A pickle names functions that unpickling calls: plain ``pickle.load`` (detectron2's reader of
``.pkl``) runs ``os.system`` if the file asks. :func:`load_weights_file` is the one reader of every
file loaded as weights (``MODEL.WEIGHTS``, ``tools/convert_weights.py``, the checks that explain
an unreadable checkpoint):

* a ``.pkl`` that is a plain pickle (detectron2's and Caffe2's model zoo) is read by
  :class:`RestrictedUnpickler`, which builds dicts, lists, tuples, strings, numbers,
  ``collections.OrderedDict`` and numpy arrays, dtypes and scalars through numpy's own
  reconstruction functions, and nothing else (``encoding="latin1"`` as detectron2 reads them:
  Caffe2's files are Python 2 pickles);
* anything else (a file ``torch.save`` wrote, also when named ``.pkl``) is read by
  ``torch.load(weights_only=True)``, with a few more types allowed while it reads
  (:data:`TORCH_SAFE_GLOBALS`): the numpy arrays and the ``meta`` / ``message_hub`` entries that
  mmsegmentation (mmcv / mmengine) writes beside the weights.

Any other global stops the load with an :class:`UntrustedCheckpointError` (one line: the file, the
``module.name`` it asked for, and the opt-in). To load a file you trust that holds other objects,
set ``POINTREND_SEM_TRUST_CHECKPOINTS=1``: such a file is then read with plain ``pickle`` /
``torch.load(weights_only=False)``, with a warning (the files that load safely still load
safely).

Downloads are checked by name (:func:`check_hash_prefix`): a file name with a hash prefix in
torch.hub's convention (``name-<hex>.ext``, ``<hex>`` at least 8 hex digits: the start of the
file's SHA-256, as mmsegmentation names its checkpoints) must match its content.
"""

import codecs
import collections
import hashlib
import logging
import os
import pickle
import re
import zipfile
from typing import Any, Optional

import numpy as np
import torch
from torch.hub import HASH_REGEX

from ..errors import UserValueError

TRUST_ENV = "POINTREND_SEM_TRUST_CHECKPOINTS"
# torch.hub's check_hash takes any length; shorter "hashes" are parts of names ("R-50.pkl")
MIN_HASH_DIGITS = 8

logger = logging.getLogger(__name__)

_core = np._core if hasattr(np, "_core") else np.core
_multiarray, _numeric = _core.multiarray, _core.numeric

# (module, name) -> object for the plain-pickle reader; both spellings of numpy's module, as
# numpy < 2 (and Caffe2, Python 2) wrote numpy.core, numpy >= 2 writes numpy._core
PICKLE_SAFE_GLOBALS = {
    # detectron2 writes its model zoo's dicts as OrderedDict at times; a dict subclass
    ("collections", "OrderedDict"): collections.OrderedDict,
    # an ndarray pickles as _reconstruct(ndarray, (0,), b"b") + BUILD(shape, dtype, data):
    # allocates an empty array, then fills it from bytes; no code named by the file runs
    ("numpy.core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    # protocol 5 writes an ndarray as _frombuffer(bytes, dtype, shape, order): a view of bytes
    ("numpy.core.numeric", "_frombuffer"): _numeric._frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _numeric._frombuffer,
    # dtype(str, align, copy) + BUILD(state): a data type from its code ("f4", "<")
    ("numpy", "dtype"): np.dtype,
    # a numpy scalar: scalar(dtype, bytes)
    ("numpy.core.multiarray", "scalar"): _multiarray.scalar,
    ("numpy._core.multiarray", "scalar"): _multiarray.scalar,
    # Python 3 pickles of protocol <= 2 write bytes as _codecs.encode(str, "latin1"); torch's
    # weights_only reader allows it by default too
    ("_codecs", "encode"): codecs.encode,
}


class _HistoryBuffer:
    """Stands in for mmengine's ``HistoryBuffer`` (the logged losses in the ``message_hub``
    entry of an mmengine checkpoint) while reading: its attributes (numpy arrays, an int, the
    names of its statistics) are stored, nothing of mmengine is imported or run."""


def _history_buffer_method(owner: Any, name: str) -> str:
    """Stands in for ``getattr`` while reading: a ``HistoryBuffer`` pickles its
    ``statistics_methods`` as ``getattr(HistoryBuffer, "mean")``; that (the name) only."""
    if owner is _HistoryBuffer and name in ("min", "max", "current", "mean"):
        return name
    raise pickle.UnpicklingError(f"Unsupported global: GLOBAL builtins.getattr of {name!r}")


# extra globals torch.load(weights_only=True) may build here, for the files of the three sources;
# tensors, OrderedDict, ints, strings, lists and dicts need none (sssegmentation's writer saves a
# dict of those only: epoch, model / optimizer / scheduler state dicts)
TORCH_SAFE_GLOBALS = [
    # numpy arrays / scalars / dtypes in mmcv's and mmengine's meta (as for plain pickles above)
    (_multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
    (_multiarray._reconstruct, "numpy._core.multiarray._reconstruct"),
    (_numeric._frombuffer, "numpy.core.numeric._frombuffer"),
    (_numeric._frombuffer, "numpy._core.numeric._frombuffer"),
    np.ndarray,
    np.dtype,
    (_multiarray.scalar, "numpy.core.multiarray.scalar"),
    (_multiarray.scalar, "numpy._core.multiarray.scalar"),
    # numpy >= 1.25 builds a dtype of its own class (Float32DType, ...) that BUILD then fills
    *{type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDGSUV"},
    # mmengine's runner.save_checkpoint: message_hub.log_scalars holds HistoryBuffers
    (_HistoryBuffer, "mmengine.logging.history_buffer.HistoryBuffer"),
    (_history_buffer_method, "builtins.getattr"),
]


class UntrustedCheckpointError(UserValueError):
    """A weights file asks for a Python object that loading it safely does not build:
    ``path``, and ``name`` (``module.name``) of the object."""

    def __init__(self, message: str, path: str = "", name: str = ""):
        super().__init__(message)
        self.path, self.name = path, name


def trusted() -> bool:
    """Whether ``POINTREND_SEM_TRUST_CHECKPOINTS`` asks to load any pickle (set, and not "",
    "0", "false", "no")."""
    return os.environ.get(TRUST_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _refusal(path: str, name: str) -> UntrustedCheckpointError:
    return UntrustedCheckpointError(
        f"{path} asks to load the Python object {name}, which a weights file does not need and "
        f"could run code, so it was not loaded. If you trust the file, set {TRUST_ENV}=1.",
        path,
        name,
    )


class RestrictedUnpickler(pickle.Unpickler):
    """A ``pickle.Unpickler`` that builds only :data:`PICKLE_SAFE_GLOBALS` (and what needs no
    global: dicts, lists, tuples, str, bytes, int, float, bool, None)."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return PICKLE_SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"Unsupported global: GLOBAL {module}.{name}") from None


# how RestrictedUnpickler and torch's weights_only reader name a global they refuse
_REFUSED_GLOBAL = re.compile(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)")


def _refused_global(error: BaseException) -> Optional[str]:
    """The ``module.name`` a restricted reader refused in ``error``; None for other errors (a
    truncated or foreign file)."""
    if not isinstance(error, pickle.UnpicklingError):
        return None
    message = str(error)
    match = _REFUSED_GLOBAL.search(message)
    if match:
        return match[1]
    if message.startswith("Weights only load failed"):  # another refusal of torch's
        paragraphs = [p.strip() for p in message.split("\n\n") if p.strip()]
        detail = paragraphs[1] if len(paragraphs) > 2 else "an object"
        return detail.replace("WeightsUnpickler error: ", "").splitlines()[0][:200]
    return None


def _load_pickle(path: str, restricted: bool) -> Any:
    with open(path, "rb") as f:
        reader = RestrictedUnpickler if restricted else pickle.Unpickler
        return reader(f, encoding="latin1").load()


def _load_torch(path: str, restricted: bool) -> Any:
    if not restricted:
        return torch.load(path, map_location="cpu", weights_only=False)
    with torch.serialization.safe_globals(TORCH_SAFE_GLOBALS):
        return torch.load(path, map_location="cpu", weights_only=True)


def is_plain_pickle(path: str) -> bool:
    """Whether ``path`` is read as a plain pickle: a ``.pkl`` that is not a zip archive (one
    that is was written by ``torch.save``, whatever its name)."""
    return path.endswith(".pkl") and not zipfile.is_zipfile(path)


def load_weights_file(path: str, trust: Optional[bool] = None) -> Any:
    """The object in the weights file ``path``, read without running code from it (see the
    module's doc): a plain-pickle ``.pkl`` by :class:`RestrictedUnpickler`, anything else by
    ``torch.load(weights_only=True)`` (on CPU) with :data:`TORCH_SAFE_GLOBALS`.

    Args:
        trust: load a file that asks for other objects with plain pickle / ``torch.load``, with
            a warning; default: ``POINTREND_SEM_TRUST_CHECKPOINTS``.

    Raises:
        UntrustedCheckpointError: the file asks for another object and is not trusted.
        Exception: what pickle / torch raise for a file that is not a pickle or is truncated.
    """
    load = _load_pickle if is_plain_pickle(path) else _load_torch
    try:
        return load(path, restricted=True)
    except pickle.UnpicklingError as e:
        name = _refused_global(e)
        if name is None:
            raise
        if not (trusted() if trust is None else trust):
            raise _refusal(path, name) from None
        logger.warning(
            f"{path} asks to load the Python object {name}; loading it anyway, as "
            f"{TRUST_ENV} (or --unsafe-load) says the file is trusted: code in it runs."
        )
        return load(path, restricted=False)


def expected_hash_prefix(name: str) -> Optional[str]:
    """The SHA-256 prefix a file name carries in torch.hub's convention (``name-<hex>.ext``,
    torch.hub's ``HASH_REGEX``), when it has at least 8 hex digits; else None."""
    match = HASH_REGEX.search(os.path.basename(name))
    if match is None or len(match[1]) < MIN_HASH_DIGITS:
        return None
    return match[1]


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_hash_prefix(name: str, path: str, downloaded: bool) -> None:
    """Raise when the file name ``name`` (a URL's) carries a hash prefix that the SHA-256 of the
    local file ``path`` does not start with; a ``downloaded`` file (in a download cache) is then
    deleted, so that the next run downloads it again. A name without one passes.

    Raises:
        UserValueError: naming the file, the expected prefix and the actual one.
    """
    expected = expected_hash_prefix(name)
    if expected is None:
        return
    actual = sha256_of(path)
    if actual.startswith(expected):
        return
    removed = ""
    if downloaded:
        os.remove(path)
        removed = f" The download {path} was deleted; run again to download it anew."
    raise UserValueError(
        f"{name}: its content does not match the hash in its name: SHA-256 should start with "
        f"{expected}, it starts with {actual[:len(expected)]} (a broken or altered file).{removed}"
    )

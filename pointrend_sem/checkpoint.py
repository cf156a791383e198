"""The checkpointer that reads ``MODEL.WEIGHTS``: published checkpoints of mmsegmentation,
sssegmentation and detectron2 load as they are.

:class:`PointRendSemCheckpointer` is detectron2's ``DetectionCheckpointer`` whose ``_load_file``
(the method fvcore has subclasses override for other formats) recognizes what the file holds from
its contents, not its name (:func:`pointrend_sem.convert.published.recognize_checkpoint`):

* this project's and detectron2's checkpoints (``.pkl`` model zoo files, ``.pth`` with
  ``"model"``), and anything unknown, load as detectron2 loads them;
* an mmsegmentation or sssegmentation PointRend checkpoint, or an mmcv / torchvision ImageNet
  ResNet, is converted as ``tools/convert_weights.py`` converts it
  (:func:`~pointrend_sem.convert.published.convert_checkpoint`, checked against the model being
  loaded; sssegmentation's point-head BNs are folded when that model's point head has no norms),
  and the conversion is cached.

The cache: ``$POINTREND_SEM_CACHE`` (default ``~/.cache/pointrend_sem``) ``/converted/
<file name>-<key>.pth``, the key a hash of the source file's absolute path, size and modification
time (and of whether the norms were folded), so that a file changed in place is converted anew.
A URL is downloaded by detectron2's PathManager into its own cache first (``~/.torch/
iopath_cache``), which is the file keyed here. An entry that cannot be read is converted again.
"""

import hashlib
import logging
import os
import zipfile
from typing import Any, Dict, Optional
from urllib.parse import urlparse
from urllib.request import url2pathname

import torch
from detectron2.checkpoint import DetectionCheckpointer

from .convert.placement import ConversionError
from .convert.published import (
    DESCRIPTIONS,
    check_converted,
    convert_checkpoint,
    has_point_head_norms,
    recognize_checkpoint,
)
from .errors import UserValueError

CACHE_ENV = "POINTREND_SEM_CACHE"
# bump when a converter changes what it writes, so that older cache entries are not used
CACHE_VERSION = 1
FILE_URL = "file://"

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


def _read_cache(path: str) -> Optional[Dict[str, Any]]:
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


def _write_cache(path: str, entry: Dict[str, Any]) -> None:
    """Write ``entry`` to ``path`` through a temporary file renamed over it, so that a reader
    never sees half a file; a cache that cannot be written is only logged."""
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        torch.save(entry, tmp)
        os.replace(tmp, path)
    except OSError as e:
        logger.warning(f"Cannot cache the converted checkpoint at {path}: {e}")
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class PointRendSemCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` that also loads published checkpoints of mmsegmentation,
    sssegmentation and ImageNet ResNets (mmcv, torchvision) as they are, converting them on load
    (see the module's doc). Same arguments as ``DetectionCheckpointer``."""

    @classmethod
    def from_checkpointer(cls, other: DetectionCheckpointer) -> "PointRendSemCheckpointer":
        """A checkpointer of this class with the model, folder, ``save_to_disk`` and
        checkpointables (optimizer, scheduler, trainer, ...) of ``other``."""
        return cls(
            other.model, other.save_dir, save_to_disk=other.save_to_disk, **other.checkpointables
        )

    def load(self, path: str, *args, **kwargs) -> Dict[str, Any]:
        """As ``DetectionCheckpointer.load``; a ``file://`` URL names the local file."""
        if path and path.startswith(FILE_URL):
            path = url2pathname(urlparse(path).path)
        return super().load(path, *args, **kwargs)

    def _load_file(self, filename: str) -> Dict[str, Any]:
        """The checkpoint in ``filename`` as detectron2 loads it, or, for a published checkpoint
        of another code base, ``{"model": converted tensors, "__author__": ...}``.

        Raises:
            UserValueError: a recognized checkpoint that does not fit the model (naming the
                first keys at fault).
        """
        fold = not has_point_head_norms(self.model.state_dict())
        cached_at = cache_path(filename, fold)
        entry = _read_cache(cached_at)
        if entry is None:
            loaded = self._read(filename)
            recognized = recognize_checkpoint(loaded)
            if recognized is None:
                return loaded
            source, state = recognized
            entry = {"model": self._convert(filename, source, state, fold), "source": source}
            _write_cache(cached_at, entry)
            how = f"converted, cached at {cached_at}"
        else:
            source = entry["source"]
            self._convert(filename, source, None, fold, converted=entry["model"])
            how = f"converted earlier, read from {cached_at}"
        self.logger.info(f"MODEL.WEIGHTS {filename}: {DESCRIPTIONS[source]}, {how}.")
        return {"model": entry["model"], "__author__": f"pointrend-sem from {source}"}

    def _read(self, filename: str) -> Any:
        """The file as detectron2 reads it, except that a file torch saved (a zip archive) is
        read with ``torch.load`` whatever its name (detectron2 unpickles every ``.pkl``)."""
        if filename.endswith((".pkl", ".pyth")) and zipfile.is_zipfile(filename):
            loaded = self._torch_load(filename)
            return loaded if "model" in loaded else {"model": loaded}
        return super()._load_file(filename)

    def _convert(
        self,
        filename: str,
        source: str,
        state: Optional[Dict[str, torch.Tensor]],
        fold: bool,
        converted: Optional[Dict[str, torch.Tensor]] = None,
    ) -> Dict[str, torch.Tensor]:
        """``state`` converted from ``source`` (or the ``converted`` tensors of the cache),
        checked against this checkpointer's model.

        Raises:
            UserValueError: naming the file and the keys at fault when it does not fit.
        """
        model_state = self.model.state_dict()
        try:
            if converted is None:
                return convert_checkpoint(state, source, model_state, fold_point_head_norms=fold)
            check_converted(converted, source, model_state)
            return converted
        except ConversionError as e:
            problems = "; ".join(e.problems[:5])
            more = f" (and {len(e.problems) - 5} more)" if len(e.problems) > 5 else ""
            raise UserValueError(
                f"MODEL.WEIGHTS {filename} is {DESCRIPTIONS[source]}, but it does not fit the "
                f"model of the config ({e.summary}: {problems}{more}). Use the config of that "
                "model (README, 'Model zoo') or set the config keys it differs in."
            ) from None

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
  and the conversion is cached (:mod:`pointrend_sem.checkpoint.cache`).

Every file is read by :func:`pointrend_sem.checkpoint.safe_load.load_weights_file`, which runs no
code from it (detectron2 reads a ``.pkl`` with plain ``pickle.load``); the result is what
detectron2's ``_load_file`` returns for it. A URL's file whose name carries a SHA-256 prefix
(``name-<hex>.pth``) is checked against it; ``http://`` URLs are refused.

Whether the checkpoint fits the model is judged in one place, the checkpointer's
``_load_model`` (fvcore's override point), from the keys detectron2 could not load: entries of the
model's ``state_dict`` that the checkpoint holds with another shape, or lacks (BatchNorm's
``num_batches_tracked`` and detectron2's ``pixel_mean`` / ``pixel_std`` apart, which need no
checkpoint). With ``strict_fit=True`` (evaluation and prediction) the first one stops the load with
a :class:`~pointrend_sem.errors.UserValueError`: the model would run with random values there.
Without it (training, fine-tuning) they start from scratch, named in one info line. Keys of the
checkpoint that the model lacks are only warned about, as detectron2 does.
"""

import logging
import zipfile
from typing import Any, Dict, List, Optional, Sequence, Tuple
from urllib.parse import parse_qs, urlparse
from urllib.request import url2pathname

import torch
from detectron2.checkpoint import DetectionCheckpointer
from fvcore.common.checkpoint import _filter_reused_missing_keys, _IncompatibleKeys
from torch import nn

from ..convert.placement import BN_COUNTER, ConversionError
from ..convert.published import (
    DESCRIPTIONS,
    check_converted,
    convert_checkpoint,
    has_point_head_norms,
    recognize_checkpoint,
)
from ..errors import UserValueError
from .cache import cache_path, read_cache, write_cache
from .safe_load import check_hash_prefix, is_plain_pickle, load_weights_file

logger = logging.getLogger(__name__)


def _class_counts(incorrect_shapes: Sequence[Tuple[str, Tuple, Tuple]]) -> Optional[Tuple]:
    """(checkpoint's, model's) number of classes when the class dimension (the output, dim 0) of
    a classifier (a module named ``predictor``: the coarse head's, the point head's) differs in
    ``incorrect_shapes`` ((key, shape in the checkpoint, shape in the model) each); else None."""
    for key, shape_checkpoint, shape_model in incorrect_shapes:
        module = key.rsplit(".", 1)[0]
        if module.rsplit(".", 1)[-1] == "predictor" and shape_checkpoint[:1] != shape_model[:1]:
            return shape_checkpoint[0], shape_model[0]
    return None


class PointRendSemCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` that also loads published checkpoints of mmsegmentation,
    sssegmentation and ImageNet ResNets (mmcv, torchvision) as they are, converting them on load
    (see the module's doc). Same arguments as ``DetectionCheckpointer``, and:

    Args:
        strict_fit: for evaluation and prediction: a checkpoint that does not fit the model (an
            entry of another shape, or missing) stops the load with a ``UserValueError`` naming
            the entry, the shapes, the file and the fix. False (training, fine-tuning): such
            entries start from scratch, named in one info line. ``load("")`` loads nothing
            either way (random initialization).
    """

    def __init__(self, model: nn.Module, *args, strict_fit: bool = False, **kwargs):
        super().__init__(model, *args, **kwargs)
        self.strict_fit = strict_fit
        self._loading: str = ""

    def load(self, path: str, *args, **kwargs) -> Dict[str, Any]:
        """As ``DetectionCheckpointer.load``; a ``file://`` URL names the local file. A URL's
        file whose name carries a hash prefix (``name-<sha256 prefix>.pth``) must match it
        (:func:`~pointrend_sem.checkpoint.safe_load.check_hash_prefix`; a download that does not is
        deleted); an ``http://`` URL is refused.

        Raises:
            UserValueError: with ``strict_fit``, a checkpoint that does not fit the model
                (:meth:`_load_model`); a file that does not match its hash; an ``http://`` URL;
                a file that asks for Python objects besides weights
                (:func:`~pointrend_sem.checkpoint.safe_load.load_weights_file`).
        """
        if path and "://" in path:
            path = self._checked_url(path)
        self._loading = path
        try:
            return super().load(path, *args, **kwargs)
        finally:
            self._loading = ""

    def _checked_url(self, url: str) -> str:
        """The local file of ``url`` (downloaded into detectron2's cache unless ``file://``),
        checked against the hash prefix of its name; the query (``?matching_heuristics=True``)
        kept for detectron2."""
        parsed = urlparse(url)
        if parsed.scheme == "http":
            raise UserValueError(
                f"MODEL.WEIGHTS {url}: plain http:// downloads can be altered on the way; "
                "use the https:// URL."
            )
        query = f"?{parsed.query}" if parsed.query else ""
        if parsed.scheme == "file":
            local = url2pathname(parsed.path)
            check_hash_prefix(parsed.path, local, downloaded=False)
            return local + query
        local = self.path_manager.get_local_path(parsed._replace(query="").geturl())
        check_hash_prefix(parsed.path, local, downloaded=True)
        return local + query

    def _load_model(self, checkpoint: Dict[str, Any]) -> _IncompatibleKeys:
        """As ``DetectionCheckpointer._load_model``; then the model's entries left as they were
        (another shape in the checkpoint, or absent from it) stop the load with ``strict_fit``,
        else are logged as starting from scratch. Returns detectron2's incompatible keys, which
        it then logs as warnings (unexpected keys of the checkpoint included).

        Raises:
            UserValueError: with ``strict_fit``, naming the first entry that did not load.
        """
        incompatible = super()._load_model(checkpoint)
        other_shape = incompatible.incorrect_shapes
        skipped = {key for key, _, _ in other_shape}
        # a skipped entry is missing to load_state_dict too; a parameter shared under several
        # names is missing under one only (fvcore's filter, as its warning applies it; it returns
        # a set's order, the model's order is kept here)
        not_shared = set(_filter_reused_missing_keys(self.model, incompatible.missing_keys))
        missing = [
            key
            for key in incompatible.missing_keys
            if key in not_shared and key not in skipped and not key.endswith(BN_COUNTER)
        ]
        if not (other_shape or missing):
            return incompatible
        if self.strict_fit:
            raise self._fit_error(other_shape, missing)
        names = [key for key, _, _ in other_shape] + missing
        first = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        logger.info(
            f"{len(names)} parameters and buffers of the model start from scratch, not from "
            f"{self._loading or 'the checkpoint'} ({len(other_shape)} of another shape there, "
            f"{len(missing)} absent): {first}"
        )
        return incompatible

    def _fit_error(
        self, other_shape: Sequence[Tuple[str, Tuple, Tuple]], missing: List[str]
    ) -> UserValueError:
        """The error of a checkpoint that does not fit the model: the first entry of another
        shape (both shapes, and the fix: ``MODEL.SEM_SEG_HEAD.NUM_CLASSES`` when a classifier's
        class dimension differs, else the matching config), else the first missing one."""
        path = self._loading or "the checkpoint"
        if other_shape:
            key, shape_checkpoint, shape_model = other_shape[0]
            more = f" ({len(other_shape) - 1} more differ in shape)" if len(other_shape) > 1 else ""
            classes = _class_counts(other_shape)
            if classes:
                fix = (
                    f"It predicts {classes[0]} classes and the config {classes[1]}: set "
                    f"MODEL.SEM_SEG_HEAD.NUM_CLASSES {classes[0]}, or use the config it was "
                    "trained with."
                )
            else:
                fix = "Use the config that matches the checkpoint (the one it was trained with)."
            return UserValueError(
                f"The checkpoint {path} does not fit the model of the config: its {key} is "
                f"{shape_checkpoint}, the model's {shape_model}{more}. {fix}"
            )
        return UserValueError(
            f"The checkpoint {path} lacks {len(missing)} of the model's parameters and buffers "
            f"(the first: {missing[0]}), which would stay random. To evaluate or predict, give "
            "the checkpoint of a whole trained model of this config (a backbone-only one, like "
            "ImageNet weights, starts a training), or use the config that matches the checkpoint."
        )

    def _load_file(self, filename: str) -> Dict[str, Any]:
        """The checkpoint in ``filename`` as detectron2 loads it, or, for a published checkpoint
        of another code base, ``{"model": converted tensors, "__author__": ...}``.

        Raises:
            UserValueError: a recognized checkpoint that does not fit the model (naming the
                first keys at fault).
        """
        fold = not has_point_head_norms(self.model.state_dict())
        cached_at = cache_path(filename, fold)
        entry = read_cache(cached_at)
        if entry is None:
            loaded = self._read(filename)
            recognized = recognize_checkpoint(loaded)
            if recognized is None:
                return loaded
            source, state = recognized
            entry = {"model": self._convert(filename, source, state, fold), "source": source}
            write_cache(cached_at, entry)
            how = f"converted, cached at {cached_at}"
        else:
            source = entry["source"]
            self._convert(filename, source, None, fold, converted=entry["model"])
            how = f"converted earlier, read from {cached_at}"
        self.logger.info(f"MODEL.WEIGHTS {filename}: {DESCRIPTIONS[source]}, {how}.")
        return {"model": entry["model"], "__author__": f"pointrend-sem from {source}"}

    def _read(self, filename: str) -> Dict[str, Any]:
        """The file as detectron2 reads it, read by
        :func:`~pointrend_sem.checkpoint.safe_load.load_weights_file` (no code from the file runs;
        detectron2 unpickles every ``.pkl`` with plain pickle), and a file torch saved (a zip
        archive) read as a torch file whatever its name."""
        loaded = load_weights_file(filename)
        if is_plain_pickle(filename):
            return self._model_zoo_layout(loaded)
        if filename.endswith(".pyth") and not zipfile.is_zipfile(filename):
            # pycls (detectron2: "no one else seems to use the .pyth extension")
            state = {k: v for k, v in loaded["model_state"].items() if not k.endswith(BN_COUNTER)}
            return {"model": state, "__author__": "pycls", "matching_heuristics": True}
        if not isinstance(loaded, dict) or "model" not in loaded:
            loaded = {"model": loaded}
        parsed = self._parsed_url_during_load
        queries = parse_qs(parsed.query) if parsed is not None else {}
        if queries.pop("matching_heuristics", "False") == ["True"]:
            loaded["matching_heuristics"] = True
        if queries:
            raise ValueError(f"Unsupported query remaining: {queries}, in {parsed.geturl()}")
        return loaded

    def _model_zoo_layout(self, data: Dict[str, Any]) -> Dict[str, Any]:
        """A plain-pickle ``.pkl`` as detectron2's ``_load_file`` returns it: detectron2's model
        zoo format (``"model"`` and ``"__author__"``) as it is, else Caffe2's blobs (without
        ``*_momentum``) to be matched by name."""
        if "model" in data and "__author__" in data:
            self.logger.info(f"Reading a file from '{data['__author__']}'")
            return data
        data = data.get("blobs", data)  # Detection models have "blobs", ImageNet models don't
        data = {k: v for k, v in data.items() if not k.endswith("_momentum")}
        return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}

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

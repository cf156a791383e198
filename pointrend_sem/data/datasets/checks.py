"""Checks run before training or evaluation starts, so that a missing or empty dataset fails in
one clear line instead of deep inside a data loader worker."""

import difflib
import os
from typing import Optional

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.file_io import PathManager

from ...errors import UserFileNotFoundError, UserKeyError, UserValueError
from .paths import datasets_root

# Metadata keys that hold a dataset's folders: detectron2's sem_seg datasets and this
# package's use image_root / sem_seg_root, detectron2's Cityscapes image_dir / gt_dir.
ROOT_KEYS = ("image_root", "sem_seg_root", "image_dir", "gt_dir")


class UnknownDatasetError(UserKeyError):
    """A dataset name that is not registered (a KeyError, as ``DatasetCatalog.get`` raises)."""


def _env_value() -> str:
    value = os.environ.get("DETECTRON2_DATASETS")
    if value is None:
        return "now unset, so 'datasets' in the current folder"
    return f"now {value!r}"


def _is_under(path: str, root: str) -> bool:
    path, root = os.path.abspath(path), os.path.abspath(root)
    return os.path.commonpath([path, root]) == root


def unknown_dataset_message(name: str) -> str:
    """A line saying ``name`` is not registered, with the most similar registered names."""
    registered = DatasetCatalog.list()
    close = difflib.get_close_matches(name, registered, n=5, cutoff=0.6)
    if close:
        hint = f"Did you mean {', '.join(close)}?"
    else:
        hint = f"No registered name is similar ({len(registered)} registered)."
    return (
        f"Dataset {name!r} is not registered. {hint} Register your own folders with "
        "register_sem_seg_folder() or a --datasets-file (pointrend_sem.data.datasets.custom)."
    )


def missing_path_message(name: str, path: str, prepare_command: Optional[str] = None) -> str:
    """A line saying that ``path`` of dataset ``name`` does not exist, and how to fix it."""
    prepare = f", and run `{prepare_command}` (see datasets/README.md)" if prepare_command else ""
    if _is_under(path, datasets_root()):
        fix = f"Set DETECTRON2_DATASETS ({_env_value()}) to the folder holding the datasets"
    else:
        fix = (
            "Fix the folder the dataset is registered with (relative folders are taken under "
            f"DETECTRON2_DATASETS, {_env_value()})"
        )
    return f"Dataset {name}: {os.path.abspath(path)} does not exist. {fix}{prepare}."


def check_dataset_ready(dataset_name: str, num_classes: Optional[int] = None) -> int:
    """Check that a registered dataset can be used; return its number of records.

    Checks, in order: the name is registered; every folder in its metadata (any of
    ``image_root``, ``sem_seg_root``, ``image_dir``, ``gt_dir``) exists; its loader returns
    at least one record; with ``num_classes``, its ``stuff_classes`` (if set) has that many
    names. Call it for each of ``DATASETS.TRAIN`` and ``DATASETS.TEST`` before building
    the trainer. The loader is run once here, so its own errors surface here too.

    Raises:
        UnknownDatasetError (a KeyError): not registered; lists similar registered names.
        FileNotFoundError: a folder is missing; names it, ``$DETECTRON2_DATASETS`` and the
            metadata's ``prepare_command`` if set.
        ValueError: the loader found nothing, or the class count differs from ``num_classes``.
    """
    if dataset_name not in DatasetCatalog.list():
        raise UnknownDatasetError(unknown_dataset_message(dataset_name))
    metadata = MetadataCatalog.get(dataset_name)
    roots = [metadata.get(key) for key in ROOT_KEYS if metadata.get(key)]
    for root in roots:
        if not PathManager.exists(root):
            prepare = metadata.get("prepare_command", None)
            raise UserFileNotFoundError(missing_path_message(dataset_name, root, prepare))
    where = os.path.abspath(roots[0]) if roots else "(no folder in its metadata)"
    try:
        records = DatasetCatalog.get(dataset_name)
    except AssertionError as e:  # detectron2's loaders assert that they found files
        raise UserValueError(f"Dataset {dataset_name} cannot be loaded from {where}: {e}") from e
    if not records:
        raise UserValueError(
            f"Dataset {dataset_name} is empty: its loader found no images in {where}. Check "
            "that the folder holds the split's images, with the expected file extension."
        )
    _check_num_classes(dataset_name, metadata.get("stuff_classes", None), num_classes)
    return len(records)


def _check_num_classes(name: str, stuff_classes, num_classes: Optional[int]) -> None:
    if num_classes is None or stuff_classes is None or len(stuff_classes) == num_classes:
        return
    if num_classes == 1 and len(stuff_classes) == 2:  # binary: one foreground logit
        return
    raise UserValueError(
        f"Dataset {name} has {len(stuff_classes)} classes (metadata stuff_classes) but the "
        f"model predicts {num_classes} (MODEL.SEM_SEG_HEAD.NUM_CLASSES); make them equal."
    )

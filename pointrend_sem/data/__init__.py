"""Data: augmentations, the semantic segmentation mapper, dataset registrations."""

from . import datasets  # noqa: F401  (registers datasets)
from .augmentations import (
    RESIZE_BACKENDS,
    KeepRatioResize,
    OpenCVResizeTransform,
    PhotometricDistortion,
    RandomScaledResize,
    build_test_augmentations,
    build_test_resize,
    build_train_augmentations,
    keep_ratio_size,
)
from .mapper import SemSegDatasetMapper, read_label

__all__ = [
    "RESIZE_BACKENDS",
    "KeepRatioResize",
    "OpenCVResizeTransform",
    "PhotometricDistortion",
    "RandomScaledResize",
    "build_test_augmentations",
    "build_test_resize",
    "build_train_augmentations",
    "keep_ratio_size",
    "SemSegDatasetMapper",
    "read_label",
]

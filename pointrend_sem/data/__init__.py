"""Data: augmentations, the semantic segmentation mapper, dataset registrations."""

from . import datasets  # noqa: F401  (registers datasets)
from .augmentations import (
    PhotometricDistortion,
    RandomScaledResize,
    build_test_augmentations,
    build_train_augmentations,
)
from .mapper import SemSegDatasetMapper, read_label

__all__ = [
    "PhotometricDistortion",
    "RandomScaledResize",
    "build_test_augmentations",
    "build_train_augmentations",
    "SemSegDatasetMapper",
    "read_label",
]

"""Evaluators."""

from .cityscapes import (
    CityscapesOfficialSemSegEvaluator,
    CityscapesSubmissionWriter,
    build_cityscapes_evaluators,
    is_cityscapes_test_split,
    train_ids_to_label_ids,
)
from .sem_seg import KeyedSemSegEvaluator

__all__ = [
    "CityscapesOfficialSemSegEvaluator",
    "CityscapesSubmissionWriter",
    "build_cityscapes_evaluators",
    "is_cityscapes_test_split",
    "KeyedSemSegEvaluator",
    "train_ids_to_label_ids",
]

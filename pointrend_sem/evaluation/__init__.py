"""Evaluators, and the per-class boundary IoU they report."""

from .boundary_iou import (
    boundary_intersection_union,
    boundary_iou_from_counts,
    confusion_matrix_with_bands,
)
from .cityscapes import (
    CityscapesOfficialSemSegEvaluator,
    CityscapesSubmissionWriter,
    build_cityscapes_evaluators,
    is_cityscapes_test_split,
    train_ids_to_label_ids,
)
from .sem_seg import KeyedSemSegEvaluator

__all__ = [
    "boundary_intersection_union",
    "boundary_iou_from_counts",
    "CityscapesOfficialSemSegEvaluator",
    "CityscapesSubmissionWriter",
    "build_cityscapes_evaluators",
    "confusion_matrix_with_bands",
    "is_cityscapes_test_split",
    "KeyedSemSegEvaluator",
    "train_ids_to_label_ids",
]

"""Evaluators."""

from .cityscapes import CityscapesOfficialSemSegEvaluator, train_ids_to_label_ids
from .sem_seg import KeyedSemSegEvaluator

__all__ = ["CityscapesOfficialSemSegEvaluator", "KeyedSemSegEvaluator", "train_ids_to_label_ids"]

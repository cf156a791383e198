"""Dataset registrations; importing this module registers them (VOC, synthetic shapes) or adds
metadata to detectron2's own registrations (ADE20K, Cityscapes)."""

from . import ade20k, cityscapes, synthetic, voc  # noqa: F401
from .checks import check_dataset_ready
from .custom import register_from_file, register_sem_seg_folder
from .paths import datasets_root

__all__ = ["check_dataset_ready", "datasets_root", "register_from_file", "register_sem_seg_folder"]

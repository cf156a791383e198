"""Dataset mapper for semantic segmentation: image and label read, checked, transformed together."""

import copy
from typing import Dict, List, Optional

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from PIL import Image

from ..errors import UserValueError
from ..modeling.binary import num_output_channels
from .augmentations import build_test_augmentations, build_train_augmentations

SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
EXIF_ORIENTATION = 0x0112  # the EXIF tag detectron2's read_image applies


def read_label(file_name: str) -> np.ndarray:
    """Read a label map as class indices, (H, W) uint8/int.

    Palette ("P" mode) PNGs give their palette *indices*, never colours. A file with colour
    channels is rejected: labels must hold class indices, not colours.
    """
    try:
        with Image.open(file_name) as label:
            label.load()
            if label.mode in ("RGB", "RGBA"):
                raise UserValueError(
                    f"Label {file_name} is an {label.mode} image; labels must be single-channel "
                    "class indices (mode L, P or I). Convert colour-coded labels to class ids."
                )
            return np.asarray(label)
    except (OSError, SyntaxError) as e:
        raise UserValueError(f"Cannot read label {file_name}: {e}") from e


def _exif_rotated(image: Image.Image) -> bool:
    """Whether detectron2's ``read_image`` would rotate or mirror ``image`` (EXIF orientation
    2..8); True when the EXIF block cannot be read, so that detectron2's reader decides."""
    try:
        return image.getexif().get(EXIF_ORIENTATION) in range(2, 9)
    except Exception:  # detectron2 ignores an unreadable EXIF block; it reads such files
        return True


class SemSegDatasetMapper:
    """Map a dataset dict with "file_name" (and "sem_seg_file_name" when training) into model
    inputs: "image" (3, H, W) uint8 tensor in INPUT.FORMAT, "sem_seg" (H, W) long tensor, and
    "height"/"width" of the original image.

    Geometric augmentations move image and label together (labels with nearest
    interpolation); colour augmentations change the image only. Padding to a batch happens in
    the model, labels padded with the ignore value.
    """

    @configurable
    def __init__(
        self,
        is_train: bool,
        *,
        augmentations: List[T.Augmentation],
        image_format: str,
        num_classes: Optional[int] = None,
        ignore_label: int = 255,
    ):
        """
        Args:
            is_train: read and return labels.
            augmentations: applied in order to image and label.
            image_format: PIL mode or "BGR" for images.
            num_classes: if given, label values outside [0, num_classes) other than
                ``ignore_label`` raise an error naming the file.
            ignore_label: label value ignored by losses and metrics.
        """
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.num_classes = num_classes
        self.ignore_label = ignore_label

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        augs = build_train_augmentations(cfg) if is_train else build_test_augmentations(cfg)
        return {
            "is_train": is_train,
            "augmentations": augs,
            "image_format": cfg.INPUT.FORMAT,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "ignore_label": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
        }

    def _read_image(self, file_name: str) -> np.ndarray:
        """(H, W, 3) uint8 image in ``image_format``. Grayscale and RGBA images are converted;
        16-bit images are scaled to 8 bits (value / 257) instead of being clipped.

        An RGB file without an EXIF rotation (the usual dataset image) is decoded once and taken
        as it is; detectron2's ``read_image``, which gives the same array, reads the others."""
        try:
            with Image.open(file_name) as image:
                if image.mode in SIXTEEN_BIT_MODES:
                    values = np.asarray(image).astype(np.float32)
                    gray = np.clip(np.round(values / 257.0), 0, 255).astype(np.uint8)
                    return np.repeat(gray[:, :, None], 3, axis=2)
                if (
                    image.mode == "RGB"
                    and self.image_format in ("RGB", "BGR")
                    and not _exif_rotated(image)
                ):
                    rgb = np.asarray(image)
                    return rgb[:, :, ::-1] if self.image_format == "BGR" else rgb
            return utils.read_image(file_name, format=self.image_format)
        except (OSError, SyntaxError, ValueError) as e:
            raise UserValueError(f"Cannot read image {file_name}: {e}") from e

    def _check_label(self, label: np.ndarray, file_name: str) -> None:
        # a one-class (binary) model has labels 0 = background, 1 = foreground
        num_labels = None if self.num_classes is None else num_output_channels(self.num_classes)
        if num_labels is None or label.max(initial=0) < num_labels:
            return
        # two comparisons over the map; np.unique (a sort) only for the error message
        outside = (label >= num_labels) & (label != self.ignore_label)
        if outside.any():
            bad = np.unique(label[outside])
            raise UserValueError(
                f"Label {file_name} has values {bad.tolist()} outside [0, {num_labels}) "
                f"that are not the ignore value {self.ignore_label}; fix the label files or "
                "MODEL.SEM_SEG_HEAD.NUM_CLASSES / IGNORE_VALUE."
            )

    def __call__(self, dataset_dict: Dict) -> Dict:
        dataset_dict = copy.deepcopy(dataset_dict)
        image = self._read_image(dataset_dict["file_name"])
        utils.check_image_size(dataset_dict, image)
        label_file = dataset_dict.pop("sem_seg_file_name", None)
        label = None
        if self.is_train and label_file is not None:
            label = read_label(label_file)
            if label.shape != image.shape[:2]:
                raise UserValueError(
                    f"Image {dataset_dict['file_name']} is {image.shape[1]}x{image.shape[0]} but "
                    f"its label {label_file} is {label.shape[1]}x{label.shape[0]} (WxH); they "
                    "must have the same size."
                )
            self._check_label(label, label_file)

        aug_input = T.AugInput(image, sem_seg=label)
        self.augmentations(aug_input)
        image = aug_input.image
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if aug_input.sem_seg is not None:
            dataset_dict["sem_seg"] = torch.as_tensor(aug_input.sem_seg.astype(np.int64))
        return dataset_dict

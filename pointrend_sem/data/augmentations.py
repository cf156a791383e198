"""Augmentations of the published recipes that detectron2 lacks, and the train/test lists."""

from typing import List, Tuple

import cv2
import numpy as np
from detectron2.data import transforms as T


class RandomScaledResize(T.Augmentation):
    """Resize keeping the aspect ratio to a randomly scaled target (mmsegmentation's
    ``RandomResize(scale, ratio_range, keep_ratio=True)``).

    A ratio r ~ U(ratio_range) gives the factor
    ``min(r * max(scale) / long_side, r * min(scale) / short_side)``, independent of the
    image's orientation.
    """

    def __init__(self, scale: Tuple[int, int], ratio_range: Tuple[float, float]):
        """
        Args:
            scale: (long, short) target edges at ratio 1, e.g. (2048, 1024) for Cityscapes.
            ratio_range: (low, high) of the uniform ratio, e.g. (0.5, 2.0).
        """
        super().__init__()
        self.long_edge, self.short_edge = max(scale), min(scale)
        self.ratio_range = ratio_range

    def get_transform(self, image: np.ndarray) -> T.Transform:
        h, w = image.shape[:2]
        ratio = np.random.uniform(*self.ratio_range)
        factor = min(
            int(self.long_edge * ratio) / max(h, w), int(self.short_edge * ratio) / min(h, w)
        )
        new_h, new_w = int(h * factor + 0.5), int(w * factor + 0.5)
        return T.ResizeTransform(h, w, new_h, new_w)


class PhotometricDistortion(T.Augmentation):
    """mmsegmentation's ``PhotoMetricDistortion``, on the image only (labels are untouched).

    In order, each with probability 0.5: brightness (+delta), contrast (x alpha) either here or
    last, saturation (x alpha in HSV), hue (+delta in OpenCV's 0..180 hue), the image being
    clipped to uint8 after each step.
    """

    def __init__(
        self,
        brightness_delta: int = 32,
        contrast_range: Tuple[float, float] = (0.5, 1.5),
        saturation_range: Tuple[float, float] = (0.5, 1.5),
        hue_delta: int = 18,
        image_format: str = "RGB",
    ):
        super().__init__()
        if image_format not in ("RGB", "BGR"):
            raise ValueError(
                f"PhotometricDistortion needs INPUT.FORMAT 'RGB' or 'BGR', got {image_format!r}."
            )
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> T.Transform:
        rand = np.random.uniform
        brightness = rand(-self.brightness_delta, self.brightness_delta) if rand() < 0.5 else 0
        contrast = rand(*self.contrast_range) if rand() < 0.5 else 1.0
        contrast_first = rand() < 0.5
        saturation = rand(*self.saturation_range) if rand() < 0.5 else 1.0
        hue = np.random.randint(-self.hue_delta, self.hue_delta) if rand() < 0.5 else 0

        def apply(img: np.ndarray) -> np.ndarray:
            img = _clip(img, 1.0, brightness)
            if contrast_first:
                img = _clip(img, contrast, 0)
            if saturation != 1.0 or hue != 0:
                to_hsv, from_hsv = (
                    (cv2.COLOR_RGB2HSV, cv2.COLOR_HSV2RGB)
                    if self.image_format == "RGB"
                    else (cv2.COLOR_BGR2HSV, cv2.COLOR_HSV2BGR)
                )
                hsv = cv2.cvtColor(img, to_hsv)
                hsv[..., 1] = _clip(hsv[..., 1], saturation, 0)
                hsv[..., 0] = (hsv[..., 0].astype(int) + hue) % 180
                img = cv2.cvtColor(hsv, from_hsv)
            if not contrast_first:
                img = _clip(img, contrast, 0)
            return img

        return T.ColorTransform(apply)


def _clip(img: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    if alpha == 1.0 and beta == 0:
        return img
    return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def build_train_augmentations(cfg) -> List[T.Augmentation]:
    """Resize, crop (with max single-category area), flip, photometric distortion."""
    inp = cfg.INPUT
    augs: List[T.Augmentation] = []
    if inp.RANDOM_RESIZE.ENABLED:
        augs.append(RandomScaledResize(inp.RANDOM_RESIZE.SCALE, inp.RANDOM_RESIZE.RATIO_RANGE))
    else:
        augs.append(
            T.ResizeShortestEdge(
                inp.MIN_SIZE_TRAIN, inp.MAX_SIZE_TRAIN, inp.MIN_SIZE_TRAIN_SAMPLING
            )
        )
    if inp.CROP.ENABLED:
        augs.append(
            T.RandomCrop_CategoryAreaConstraint(
                inp.CROP.TYPE,
                inp.CROP.SIZE,
                inp.CROP.SINGLE_CATEGORY_MAX_AREA,
                cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            )
        )
    if inp.RANDOM_FLIP != "none":
        augs.append(
            T.RandomFlip(
                horizontal=inp.RANDOM_FLIP == "horizontal",
                vertical=inp.RANDOM_FLIP == "vertical",
            )
        )
    if inp.PHOTOMETRIC_DISTORTION.ENABLED:
        pd = inp.PHOTOMETRIC_DISTORTION
        augs.append(
            PhotometricDistortion(
                pd.BRIGHTNESS_DELTA,
                tuple(pd.CONTRAST_RANGE),
                tuple(pd.SATURATION_RANGE),
                pd.HUE_DELTA,
                inp.FORMAT,
            )
        )
    return augs


def build_test_augmentations(cfg) -> List[T.Augmentation]:
    """Whole-image test at the dataset's base size: short side MIN_SIZE_TEST, long side at most
    MAX_SIZE_TEST (the same rule as mmsegmentation's keep-ratio ``Resize``); no resize when
    MIN_SIZE_TEST is 0."""
    if cfg.INPUT.MIN_SIZE_TEST == 0:
        return []
    return [T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice")]

"""Augmentations of the published recipes that detectron2 lacks, and the train/test lists.

Two resize backends (``INPUT.RESIZE_BACKEND``):

* "detectron2": detectron2's ``ResizeShortestEdge`` / ``ResizeTransform`` (PIL bilinear, which
  antialiases when it shrinks; labels PIL nearest);
* "opencv": :class:`OpenCVResizeTransform`, ``cv2.INTER_LINEAR`` without antialiasing (labels
  ``cv2.INTER_NEAREST``) and mmcv's rounding of the new size, as mmsegmentation's and
  sssegmentation's pipelines resize (``mmcv.imrescale`` / ``cv2.resize``).
"""

from typing import List, Tuple

import cv2
import numpy as np
from detectron2.data import transforms as T

RESIZE_BACKENDS = ("detectron2", "opencv")
# label dtypes that cv2.resize takes
_OPENCV_DTYPES = tuple(
    np.dtype(t) for t in ("uint8", "int8", "uint16", "int16", "int32", "float32", "float64")
)
# the value map of uint8 images that changes nothing (PhotometricDistortion's steps)
IDENTITY_TABLE = np.arange(256, dtype=np.uint8)


def _check_backend(backend: str) -> None:
    if backend not in RESIZE_BACKENDS:
        raise ValueError(f"INPUT.RESIZE_BACKEND must be one of {RESIZE_BACKENDS}, got {backend!r}.")


class OpenCVResizeTransform(T.Transform):
    """Resize (h, w) -> (new_h, new_w) as OpenCV does (mmcv's ``imresize``): images bilinear
    (``cv2.INTER_LINEAR``, half-pixel centres, no antialiasing when shrinking), labels nearest
    (``cv2.INTER_NEAREST``: target column x takes source column ``floor(x * (1 / (new_w / w)))``,
    OpenCV's own float arithmetic, which ignores pixel centres).
    """

    def __init__(self, h: int, w: int, new_h: int, new_w: int):
        super().__init__()
        self._set_attributes(locals())

    def _check(self, array: np.ndarray) -> None:
        if array.shape[:2] != (self.h, self.w):
            raise ValueError(
                f"OpenCVResizeTransform expects a {self.h}x{self.w} (HxW) array, got "
                f"{array.shape[0]}x{array.shape[1]}."
            )

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        """(h, w) or (h, w, C) array of a dtype OpenCV resizes (uint8, uint16, int16, float32,
        float64) -> (new_h, new_w[, C]) of the same dtype."""
        self._check(img)
        if (self.new_h, self.new_w) == (self.h, self.w):
            return img
        out = cv2.resize(img, (self.new_w, self.new_h), interpolation=cv2.INTER_LINEAR)
        return out[:, :, None] if img.ndim == 3 and out.ndim == 2 else out

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        """(h, w) labels of any dtype -> (new_h, new_w), ``cv2.INTER_NEAREST``'s pixel choice:
        ``cv2.resize`` itself for the dtypes OpenCV takes (uint8 labels: 8x faster than the
        indexing), the same indices in NumPy for the others (int64, bool, ...)."""
        self._check(segmentation)
        if segmentation.dtype in _OPENCV_DTYPES and segmentation.ndim == 2:
            size = (self.new_w, self.new_h)
            return cv2.resize(segmentation, size, interpolation=cv2.INTER_NEAREST)
        rows = _nearest_indices(self.h, self.new_h)
        cols = _nearest_indices(self.w, self.new_w)
        return segmentation[rows[:, None], cols[None, :]]

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        """(N, 2) float (x, y) coordinates in pixels, scaled by the size ratio."""
        coords[:, 0] = coords[:, 0] * (self.new_w * 1.0 / self.w)
        coords[:, 1] = coords[:, 1] * (self.new_h * 1.0 / self.h)
        return coords

    def inverse(self) -> T.Transform:
        return OpenCVResizeTransform(self.new_h, self.new_w, self.h, self.w)


def _nearest_indices(size: int, new_size: int) -> np.ndarray:
    """Source indices (new_size,) of OpenCV's nearest resize from ``size`` to ``new_size``."""
    step = 1.0 / (new_size / size)  # OpenCV's resizeNN: ifx = 1. / (dsize / ssize)
    return np.minimum(np.floor(np.arange(new_size) * step).astype(np.int64), size - 1)


def resize_transform(h: int, w: int, new_h: int, new_w: int, backend: str) -> T.Transform:
    """The transform resizing (h, w) to (new_h, new_w) with ``backend`` ("detectron2": PIL,
    "opencv": OpenCV)."""
    _check_backend(backend)
    if backend == "opencv":
        return OpenCVResizeTransform(h, w, new_h, new_w)
    return T.ResizeTransform(h, w, new_h, new_w)


def keep_ratio_size(h: int, w: int, long_edge: float, short_edge: float) -> Tuple[int, int]:
    """(new_h, new_w) of mmcv's ``rescale_size`` (mmsegmentation's ``Resize(scale,
    keep_ratio=True)``, sssegmentation's ``Resize``): the largest size inside
    long_edge x short_edge, factor ``min(long_edge / max(h, w), short_edge / min(h, w))``, each
    side ``int(side * factor + 0.5)``."""
    factor = min(long_edge / max(h, w), short_edge / min(h, w))
    return int(h * factor + 0.5), int(w * factor + 0.5)


class KeepRatioResize(T.Augmentation):
    """Resize keeping the aspect ratio into ``long_edge`` x ``short_edge`` (either
    orientation) with mmcv's rounding (:func:`keep_ratio_size`): mmsegmentation's test-time
    ``Resize(scale=(long_edge, short_edge), keep_ratio=True)``."""

    def __init__(self, long_edge: int, short_edge: int, backend: str = "opencv"):
        """
        Args:
            long_edge, short_edge: e.g. 2048, 512 for ADE20K.
            backend: "opencv" (as mmsegmentation) or "detectron2" (PIL).
        """
        super().__init__()
        _check_backend(backend)
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> T.Transform:
        h, w = image.shape[:2]
        new_h, new_w = keep_ratio_size(h, w, self.long_edge, self.short_edge)
        return resize_transform(h, w, new_h, new_w, self.backend)


class RandomScaledResize(T.Augmentation):
    """Resize keeping the aspect ratio to a randomly scaled target (mmsegmentation's
    ``RandomResize(scale, ratio_range, keep_ratio=True)``, sssegmentation's
    ``Resize(output_size, keep_ratio=True, scale_range)``).

    A ratio r ~ U(ratio_range) gives the target ``int(r * max(scale))`` x ``int(r * min(scale))``
    and the size of :func:`keep_ratio_size` inside it, independent of the image's orientation.
    """

    def __init__(
        self,
        scale: Tuple[int, int],
        ratio_range: Tuple[float, float],
        backend: str = "detectron2",
    ):
        """
        Args:
            scale: (long, short) target edges at ratio 1, e.g. (2048, 1024) for Cityscapes.
            ratio_range: (low, high) of the uniform ratio, e.g. (0.5, 2.0).
            backend: "detectron2" (PIL) or "opencv" (as mmsegmentation, sssegmentation).
        """
        super().__init__()
        _check_backend(backend)
        self.long_edge, self.short_edge = max(scale), min(scale)
        self.ratio_range = ratio_range
        self.backend = backend

    def get_transform(self, image: np.ndarray) -> T.Transform:
        h, w = image.shape[:2]
        ratio = np.random.uniform(*self.ratio_range)
        new_h, new_w = keep_ratio_size(
            h, w, int(self.long_edge * ratio), int(self.short_edge * ratio)
        )
        return resize_transform(h, w, new_h, new_w, self.backend)


def build_test_resize(min_size: int, max_size: int, backend: str) -> T.Augmentation:
    """The keep-ratio test resize to short side ``min_size``, long side at most ``max_size``:
    detectron2's ``ResizeShortestEdge`` (its rounding, PIL) for backend "detectron2",
    :class:`KeepRatioResize` (mmcv's rounding, OpenCV) for "opencv"."""
    _check_backend(backend)
    if backend == "opencv":
        return KeepRatioResize(max_size, min_size, backend)
    return T.ResizeShortestEdge(min_size, max_size, "choice")


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

        # Each step maps uint8 values to uint8 values, so it is a 256-entry table, built with the
        # per-pixel arithmetic (same results) and applied with cv2.LUT; steps in a row compose.
        contrast_table = _scale_shift_table(contrast, 0)
        first = _scale_shift_table(1.0, brightness)
        if contrast_first:
            first, last = contrast_table[first], IDENTITY_TABLE
        else:
            last = contrast_table
        hsv_table = None
        if saturation != 1.0 or hue != 0:
            hue_table = ((IDENTITY_TABLE.astype(int) + hue) % 180).astype(np.uint8)
            channels = [hue_table, _scale_shift_table(saturation, 0), IDENTITY_TABLE]
            hsv_table = np.stack(channels, axis=-1)[:, None, :]  # (256, 1, 3): one per channel
        to_hsv, from_hsv = (
            (cv2.COLOR_RGB2HSV, cv2.COLOR_HSV2RGB)
            if self.image_format == "RGB"
            else (cv2.COLOR_BGR2HSV, cv2.COLOR_HSV2BGR)
        )

        def apply(img: np.ndarray) -> np.ndarray:
            img = _apply_table(img, first)
            if hsv_table is not None:
                hsv = cv2.LUT(cv2.cvtColor(img, to_hsv), hsv_table)
                img = cv2.cvtColor(hsv, from_hsv)
            return _apply_table(img, last)

        return T.ColorTransform(apply)


def _scale_shift_table(alpha: float, beta: float) -> np.ndarray:
    """(256,) uint8: value v -> ``uint8(clip(float32(v) * alpha + beta, 0, 255))``, the
    arithmetic of mmsegmentation's ``PhotoMetricDistortion.convert``."""
    if alpha == 1.0 and beta == 0:
        return IDENTITY_TABLE
    return np.clip(IDENTITY_TABLE.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def _apply_table(img: np.ndarray, table: np.ndarray) -> np.ndarray:
    """The (H, W, C) uint8 image with every value v replaced by ``table[v]``."""
    if table is IDENTITY_TABLE or np.array_equal(table, IDENTITY_TABLE):
        return img
    return cv2.LUT(img, table)


class RandomCrop_CategoryAreaConstraint(T.RandomCrop_CategoryAreaConstraint):
    """detectron2's augmentation of this name (mmsegmentation's ``RandomCrop(cat_max_ratio)``):
    up to 10 random crops, until one holds two or more categories none of which covers
    ``single_category_max_area`` of the crop's pixels (``ignored_category`` not counted); else the
    last. Same draws, test and crop as detectron2's; uint8 labels are counted with ``np.bincount``
    (about 1 ms per try at 512x1024) instead of ``np.unique``'s sort (5-20 ms)."""

    def get_transform(self, image: np.ndarray, sem_seg: np.ndarray) -> T.Transform:
        if self.single_category_max_area >= 1.0 or sem_seg.dtype != np.uint8:
            return super().get_transform(image, sem_seg)
        h, w = sem_seg.shape
        for _ in range(10):
            crop_h, crop_w = self.crop_aug.get_crop_size((h, w))
            y0 = np.random.randint(h - crop_h + 1)
            x0 = np.random.randint(w - crop_w + 1)
            crop = sem_seg[y0 : y0 + crop_h, x0 : x0 + crop_w]
            counts = np.bincount(crop.ravel(), minlength=256)
            if self.ignored_category is not None and 0 <= self.ignored_category < 256:
                counts[self.ignored_category] = 0
            cnt = counts[counts > 0]
            if len(cnt) > 1 and np.max(cnt) < np.sum(cnt) * self.single_category_max_area:
                break
        return T.CropTransform(x0, y0, crop_w, crop_h)


def build_train_augmentations(cfg) -> List[T.Augmentation]:
    """Resize, crop (with max single-category area), flip, photometric distortion."""
    inp = cfg.INPUT
    augs: List[T.Augmentation] = []
    if inp.RANDOM_RESIZE.ENABLED:
        augs.append(
            RandomScaledResize(
                inp.RANDOM_RESIZE.SCALE, inp.RANDOM_RESIZE.RATIO_RANGE, inp.RESIZE_BACKEND
            )
        )
    else:
        augs.append(
            T.ResizeShortestEdge(
                inp.MIN_SIZE_TRAIN, inp.MAX_SIZE_TRAIN, inp.MIN_SIZE_TRAIN_SAMPLING
            )
        )
    if inp.CROP.ENABLED:
        augs.append(
            RandomCrop_CategoryAreaConstraint(
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
    MAX_SIZE_TEST (mmsegmentation's keep-ratio ``Resize(scale=(MAX_SIZE_TEST, MIN_SIZE_TEST))``)
    with the resize of ``INPUT.RESIZE_BACKEND`` (:func:`build_test_resize`); no resize when
    MIN_SIZE_TEST is 0."""
    if cfg.INPUT.MIN_SIZE_TEST == 0:
        return []
    return [
        build_test_resize(
            cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, cfg.INPUT.RESIZE_BACKEND
        )
    ]

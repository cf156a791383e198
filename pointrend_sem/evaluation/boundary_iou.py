"""Boundary IoU of semantic segmentation, per class (Cheng et al., "Boundary IoU: Improving
Object-Centric Image Segmentation Evaluation", CVPR 2021).

Shape shorthand in this module: H, W: image height and width; C: number of classes.

For a class c, the binary masks are ``G = (gt == c)`` and ``P = (pred == c)``. The boundary band
of a mask ``M`` is the set of its pixels within distance d of its contour, ``M - erode(M)`` with
d iterations of a 3x3 erosion (chessboard distance, as the reference ``mask_to_boundary``), where
``d = max(1, round(dilation_ratio * sqrt(H**2 + W**2)))``. The class's boundary IoU over a dataset
is ``sum |B(G) & B(P)| / sum |B(G) | B(P)|``, sums over images, pixels whose ground truth is
``ignore_label`` left out of both bands. A class whose union is empty over the whole dataset
(absent from every ground truth and every prediction) has no boundary IoU.

**The image border.** As in the reference implementation (``mask_to_boundary`` of the
boundary-iou-api, which pads the mask with zeros before eroding and keeps the band inside the
image), a mask truncated by the image border is also bounded there: every class gets a band of
width d along the image frame wherever it touches it. This is the default, so the numbers are
Cheng et al.'s (a 2|5 split predicted 6 px off on a 200x200 image, d = 6, scores about 50 / 49).
In semantic segmentation the frame is mostly easy interior (road, sky: 13% of a 1024x2048 image
at d = 46), which lifts every class; ``image_border_is_contour=False`` scores only the bands
between labels (the erosion looks at pixels inside the image only, as with a replicated border;
the same 2|5 scene then scores 0 / 0, its real bands being disjoint).

**Ignore pixels.** ``gt == ignore_label`` is outside every class's ground-truth mask, so it bounds
the class masks like any other label does (the binary masks of the definition); the pixels
themselves are then removed from the ground-truth and the predicted bands, as unlabeled pixels
are from IoU.

**How it is computed.** A pixel of label c lies in the band of class c iff the (2d+1)x(2d+1)
square around it, clipped to the image (d iterations of a 3x3 erosion are one erosion with that
square), holds a pixel of another label. On the straight chessboard path towards that pixel, the
pixel before the first one of another label is an *edge* pixel (of label c, with an 8-neighbour
of another label) at most d - 1 away; conversely an edge pixel within d - 1 puts a pixel of
another label within d. So the bands of all classes at once are the edge pixels (where a 3x3
erosion and dilation of the label map differ) dilated by a (2d-1)x(2d-1) square: one large
binary dilation per map, whatever the number of classes. One ``np.bincount`` of the key
(pred, gt, in gt band, in pred band) over all pixels then gives both the confusion matrix and the
per-class band counts: no pass per class, nothing to pay for the classes absent from an image.
On a 1024x2048 map with 19 classes (d = 46) this histogram costs about twice detectron2's
confusion-matrix update alone, a tenth of one ``cv2.erode`` (3x3, d iterations) or
``cv2.distanceTransform`` per present class.
"""

from typing import Tuple

import cv2
import numpy as np

DILATION_RATIO = 0.02


def boundary_width(height: int, width: int, dilation_ratio: float = DILATION_RATIO) -> int:
    """The band width d = ``max(1, round(dilation_ratio * image diagonal))`` of an ``(H, W)``
    image, in pixels (Python's ``round``, as the reference)."""
    return max(1, int(round(dilation_ratio * float(np.hypot(height, width)))))


def _smallest_label_dtype(num_labels: int) -> np.dtype:
    """uint8 or uint16 (what OpenCV's morphology takes) for labels in ``[0, num_labels)``."""
    for dtype in (np.uint8, np.uint16):
        if num_labels - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(f"boundary IoU supports up to 65536 labels, got {num_labels}")


def _as_unsigned(labels: np.ndarray) -> np.ndarray:
    """A view of an integer array in which negative values are huge: one comparison then checks
    ``0 <= labels < n``."""
    if labels.dtype.kind not in "iu":
        raise TypeError(f"expected an integer label map, got dtype {labels.dtype}")
    return labels.view(f"u{labels.dtype.itemsize}") if labels.dtype.kind == "i" else labels


def label_boundary_band(
    labels: np.ndarray, band_width: int, *, image_border_is_contour: bool = True
) -> np.ndarray:
    """Where each pixel is in the boundary band of its own label's mask.

    Args:
        labels: (H, W) label map of a non-negative integer dtype, values < 65536.
        band_width: d >= 1, in pixels (chessboard distance, as d iterations of a 3x3 erosion).
        image_border_is_contour: also put the pixels within d of the image border in the band,
            as the reference ``mask_to_boundary`` does (see the module docstring).

    Returns:
        (H, W) bool: ``band[y, x]`` is whether the binary mask of ``c = labels[y, x]`` has a pixel
        outside it within d of (y, x), i.e. ``(labels == c) - erode(labels == c)``, for all
        classes at once.
    """
    if labels.ndim != 2:
        raise ValueError(f"expected an (H, W) label map, got shape {labels.shape}")
    if band_width < 1:
        raise ValueError(f"the band width must be >= 1 pixel, got {band_width}")
    if labels.dtype not in (np.uint8, np.uint16):
        if labels.size and _as_unsigned(labels).max() > np.iinfo(np.uint16).max:
            raise ValueError("label_boundary_band takes labels in [0, 65536)")
        labels = labels.astype(_smallest_label_dtype(int(labels.max(initial=0)) + 1))
    # BORDER_REPLICATE: the windows are clipped to the image, whose border is no contour.
    neighbourhood = np.ones((3, 3), np.uint8)
    edge = cv2.erode(labels, neighbourhood, borderType=cv2.BORDER_REPLICATE) != cv2.dilate(
        labels, neighbourhood, borderType=cv2.BORDER_REPLICATE
    )
    square = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * band_width - 1,) * 2)
    band = cv2.dilate(edge.view(np.uint8), square, borderType=cv2.BORDER_REPLICATE).view(bool)
    if image_border_is_contour:
        band[:band_width] = band[-band_width:] = True
        band[:, :band_width] = band[:, -band_width:] = True
    return band


def _smallest_key_dtype(num_keys: int) -> np.dtype:
    """The smallest of uint16, uint32, intp that holds keys in ``[0, num_keys)``."""
    for dtype in (np.uint16, np.uint32):
        if num_keys - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.intp)


def confusion_matrix_with_bands(
    gt: np.ndarray,
    pred: np.ndarray,
    num_classes: int,
    ignore_label: int,
    *,
    dilation_ratio: float = DILATION_RATIO,
    image_border_is_contour: bool = True,
) -> np.ndarray:
    """The confusion matrix of one image, split by boundary-band membership.

    Args:
        gt: (H, W) integer ground truth, values in ``[0, C)`` or ``ignore_label``.
        pred: (H, W) integer prediction, values in ``[0, C)``.
        num_classes: C.
        ignore_label: the ground truth's label of unlabeled pixels (any integer, may be >= C).
        dilation_ratio: the band width d as a fraction of the image diagonal (the reference's
            0.02).
        image_border_is_contour: see :func:`label_boundary_band`.

    Returns:
        (C + 1, C + 1, 2, 2) int64 ``counts[p, g, in_gt_band, in_pred_band]``: the number of
        pixels predicted ``p`` whose ground truth is ``g`` (``C`` for ``ignore_label``), split by
        whether they lie in the band of the ground truth's class ``g`` and in the band of the
        predicted class ``p``. ``counts.sum(axis=(2, 3))`` is the ``[pred, gt]`` confusion matrix
        of detectron2's ``SemSegEvaluator``; :func:`boundary_counts` gives the boundary IoU's
        intersections and unions. One histogram of all pixels gives both.

    Raises:
        ValueError: on maps of different shapes or labels out of range.
    """
    if gt.shape != pred.shape or gt.ndim != 2:
        raise ValueError(f"gt and pred must be (H, W) maps of one shape: {gt.shape}, {pred.shape}")
    valid = gt != ignore_label
    if np.any(valid & (_as_unsigned(gt) >= num_classes)) or (
        pred.size and _as_unsigned(pred).max() >= num_classes
    ):
        raise ValueError(
            f"labels outside [0, {num_classes}) (ignore_label={ignore_label}): gt has "
            f"{np.unique(gt[valid]).tolist()}, pred has {np.unique(pred).tolist()}"
        )
    # The ignored pixels get their own label C, which bounds the class masks like any other.
    label_dtype = _smallest_label_dtype(num_classes + 1)
    gt_labels = gt.astype(label_dtype)
    gt_labels[~valid] = num_classes
    pred_labels = pred.astype(label_dtype)

    band_width = boundary_width(*gt.shape, dilation_ratio)
    options = dict(image_border_is_contour=image_border_is_contour)
    gt_band = label_boundary_band(gt_labels, band_width, **options)
    pred_band = label_boundary_band(pred_labels, band_width, **options)

    # key = ((p * (C + 1) + g) * 2 + in_gt_band) * 2 + in_pred_band, built in place
    num_bins = (num_classes + 1) ** 2 * 4
    key = pred_labels.astype(_smallest_key_dtype(num_bins))
    key *= num_classes + 1
    key += gt_labels
    key <<= 1
    key |= gt_band
    key <<= 1
    key |= pred_band
    counts = np.bincount(key.ravel(), minlength=num_bins)
    return counts.astype(np.int64).reshape(num_classes + 1, num_classes + 1, 2, 2)


def boundary_counts(counts: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Per-class boundary intersection and union from :func:`confusion_matrix_with_bands`.

    Args:
        counts: (C + 1, C + 1, 2, 2) ``[pred, gt, in_gt_band, in_pred_band]`` pixel counts, of
            one image or summed over images.

    Returns:
        ``(intersection, union)``, each (C,) int64: ``|B(gt == c) & B(pred == c)|`` and
        ``|B(gt == c) | B(pred == c)|``, over the pixels whose ground truth is not ignored.
    """
    num_classes = counts.shape[0] - 1
    classes = np.arange(num_classes)
    intersection = counts[classes, classes, 1, 1]
    gt_band = counts[:, :num_classes, 1, :].sum(axis=(0, 2))
    pred_band = counts[:num_classes, :num_classes, :, 1].sum(axis=(1, 2))
    return intersection, gt_band + pred_band - intersection


def boundary_intersection_union(*args, **kwargs) -> Tuple[np.ndarray, np.ndarray]:
    """Per-class boundary intersection and union of one image: ``(intersection, union)``, each
    (C,) int64, from (H, W) ``gt`` and ``pred``; the arguments are those of
    :func:`confusion_matrix_with_bands`. Add them up over images and divide at the end
    (:func:`boundary_iou_from_counts`)."""
    return boundary_counts(confusion_matrix_with_bands(*args, **kwargs))


def boundary_iou_from_counts(intersection: np.ndarray, union: np.ndarray) -> np.ndarray:
    """(C,) boundary IoU in percent from (C,) summed intersections and unions; NaN where the
    union is 0 (the class is in no ground truth and no prediction: not to be reported)."""
    iou = np.full(len(union), np.nan)
    present = union > 0
    iou[present] = 100.0 * intersection[present] / union[present]
    return iou

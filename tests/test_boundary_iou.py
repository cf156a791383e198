"""Per-class boundary IoU (pointrend_sem/evaluation/boundary_iou.py) and the evaluator that
reports it, on hand-made scenes whose band pixels are counted by formula (rectangles, discs), and
on random maps against a per-class implementation of the reference's binary erosion."""

import math
from typing import Tuple

import cv2
import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from pointrend_sem.evaluation import boundary_iou, sem_seg
from pointrend_sem.evaluation.boundary_iou import (
    boundary_intersection_union,
    boundary_iou_from_counts,
    boundary_width,
    confusion_matrix_with_bands,
)
from pointrend_sem.evaluation.sem_seg import KeyedSemSegEvaluator

IGNORE = 255
NUM_CLASSES = 6
CLASSES = [f"c{i}" for i in range(NUM_CLASSES)]
LEFT, RIGHT = 2, 5  # the half-plane scene's classes
SHIFT = 6  # px the prediction's border is moved to the right
Rect = Tuple[int, int, int, int]  # rows [y0, y1) x columns [x0, x1)


# ---- counting by formula ---------------------------------------------------------------------


def area(r: Rect) -> int:
    return max(0, r[1] - r[0]) * max(0, r[3] - r[2])


def meet(a: Rect, b: Rect) -> Rect:
    return (max(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), min(a[3], b[3]))


def eroded(region: Rect, h: int, w: int, d: int, border_is_contour: bool) -> Rect:
    """A rectangular mask eroded d times with a 3x3 square: every side moves in by d, except
    the sides on the image border when the border is no contour."""
    y0, y1, x0, x1 = region
    move = lambda inner: d if inner or border_is_contour else 0  # noqa: E731
    return (y0 + move(y0 > 0), y1 - move(y1 < h), x0 + move(x0 > 0), x1 - move(x1 < w))


def rectangle_counts(gt: Rect, pred: Rect, h, w, d, border_is_contour=True, valid=None):
    """(intersection, union) of the bands ``region - eroded(region)`` of a rectangular ground
    truth and prediction, counted inside ``valid`` (a rectangle; default the image)."""
    valid = valid or (0, h, 0, w)
    gt_in, pred_in = (eroded(r, h, w, d, border_is_contour) for r in (gt, pred))
    gt_band = area(meet(gt, valid)) - area(meet(gt_in, valid))
    pred_band = area(meet(pred, valid)) - area(meet(pred_in, valid))
    both = meet(meet(gt, pred), valid)
    interior_of_either = (
        area(meet(gt_in, both)) + area(meet(pred_in, both)) - area(meet(meet(gt_in, pred_in), both))
    )
    intersection = area(both) - interior_of_either
    return intersection, gt_band + pred_band - intersection


def half_planes(h: int, w: int, split: int) -> np.ndarray:
    """(h, w) int64 map: LEFT in columns [0, split), RIGHT in [split, w)."""
    labels = np.full((h, w), LEFT, dtype=np.int64)
    labels[:, split:] = RIGHT
    return labels


def half_plane_expectation(h, w, split, d, border_is_contour=True, valid=None):
    """{class: (intersection, union)} of the scene ``half_planes(split)`` predicted as
    ``half_planes(split + SHIFT)``, by formula."""
    regions = {
        LEFT: ((0, h, 0, split), (0, h, 0, split + SHIFT)),
        RIGHT: ((0, h, split, w), (0, h, split + SHIFT, w)),
    }
    return {
        c: rectangle_counts(gt, pred, h, w, d, border_is_contour, valid)
        for c, (gt, pred) in regions.items()
    }


def reference_counts(gt, pred, num_classes, border_is_contour):
    """Per-class binary masks eroded as the reference ``mask_to_boundary`` does (one class at a
    time, 3x3 kernel, d iterations; zero padding when the border is a contour)."""
    d = max(1, int(round(0.02 * math.sqrt(gt.shape[0] ** 2 + gt.shape[1] ** 2))))
    valid = gt != IGNORE
    intersection, union = np.zeros(num_classes, int), np.zeros(num_classes, int)
    for c in range(num_classes):
        bands = []
        for labels in (gt, pred):
            mask = (labels == c).astype(np.uint8)
            padded = cv2.copyMakeBorder(mask, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
            if border_is_contour:
                inner = cv2.erode(padded, np.ones((3, 3), np.uint8), iterations=d)[1:-1, 1:-1]
            else:
                inner = cv2.erode(mask, np.ones((3, 3), np.uint8), iterations=d)
            bands.append((mask > inner) & valid)
        intersection[c] = np.count_nonzero(bands[0] & bands[1])
        union[c] = np.count_nonzero(bands[0] | bands[1])
    return intersection, union


# ---- the module --------------------------------------------------------------------------------


def test_band_width_is_two_percent_of_the_diagonal():
    assert boundary_width(300, 401) == 10  # diagonal 500.8
    assert boundary_width(200, 200) == 6  # 282.8 * 0.02 = 5.66
    assert boundary_width(20, 20) == 1  # 0.57 rounds to 1
    assert boundary_width(3, 3) == 1  # 0.08: at least 1


@pytest.mark.parametrize("border_is_contour", [False, True])
def test_half_planes_shifted_by_6_px(border_is_contour):
    h, w, split = 300, 401, 200
    d = 10
    gt, pred = half_planes(h, w, split), half_planes(h, w, split + SHIFT)
    intersection, union = boundary_intersection_union(
        gt, pred, NUM_CLASSES, IGNORE, image_border_is_contour=border_is_contour
    )
    expected = half_plane_expectation(h, w, split, d, border_is_contour)
    for c in range(NUM_CLASSES):
        assert (intersection[c], union[c]) == expected.get(c, (0, 0)), c
    assert np.flatnonzero(union).tolist() == [LEFT, RIGHT]  # classes 0 and 3 are in no map
    if not border_is_contour:
        # only the split's bands: columns [split - d, split) vs [split + 6 - d, split + 6)
        assert expected[LEFT] == expected[RIGHT] == ((d - SHIFT) * h, (d + SHIFT) * h)
        iou = boundary_iou_from_counts(intersection, union)
        assert iou[[LEFT, RIGHT]] == pytest.approx([25.0, 25.0])


@pytest.mark.parametrize("border_is_contour", [False, True])
def test_half_planes_200_px_where_the_bands_of_the_split_do_not_overlap(border_is_contour):
    """d = 6 = the shift: the split's bands are disjoint. With the image border as a contour
    (the reference's definition) the frame alone brings each class to about 50."""
    gt, pred = half_planes(200, 200, 100), half_planes(200, 200, 100 + SHIFT)
    counts = boundary_intersection_union(
        gt, pred, NUM_CLASSES, IGNORE, image_border_is_contour=border_is_contour
    )
    iou = boundary_iou_from_counts(*counts)[[LEFT, RIGHT]]
    expected = half_plane_expectation(200, 200, 100, 6, border_is_contour)
    assert iou == pytest.approx([100.0 * i / u for i, u in (expected[LEFT], expected[RIGHT])])
    if border_is_contour:
        assert expected[LEFT] == (2328, 4656) and expected[RIGHT] == (2256, 4584)
        assert iou == pytest.approx([50.0, 49.21], abs=0.01)
    else:
        assert iou.tolist() == [0.0, 0.0]


def disc(h: int, w: int, radius: int, label: int) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    labels = np.zeros((h, w), dtype=np.int64)
    labels[(yy - h // 2) ** 2 + (xx - w // 2) ** 2 <= radius**2] = label
    return labels


def test_small_disc_is_all_boundary():
    h = w = 200  # d = 6
    radius, label = 4, 3
    gt = disc(h, w, radius, label)
    disc_area = sum(2 * math.isqrt(radius**2 - dy**2) + 1 for dy in range(-radius, radius + 1))
    assert disc_area == 49
    intersection, union = boundary_intersection_union(gt, gt, NUM_CLASSES, IGNORE)
    assert intersection[label] == union[label] == disc_area  # the whole disc is boundary
    assert boundary_iou_from_counts(intersection, union)[[0, label]].tolist() == [100.0, 100.0]

    missed = np.zeros_like(gt)
    intersection, union = boundary_intersection_union(gt, missed, NUM_CLASSES, IGNORE)
    assert (intersection[label], union[label]) == (0, disc_area)
    assert boundary_iou_from_counts(intersection, union)[label] == 0.0


def test_ignored_pixels_are_in_no_band():
    h, w, split, d = 300, 401, 200, 10
    ignored_rows = 30  # the bottom rows: gt ignore_label, the prediction anything there
    gt = half_planes(h, w, split)
    gt[h - ignored_rows :] = IGNORE
    pred = half_planes(h, w, split + SHIFT)
    rng = np.random.default_rng(0)
    # noise farther than d from every labeled pixel: it only makes bands of ignored pixels
    noisy = pred.copy()
    noisy[h - ignored_rows + d :] = rng.integers(0, NUM_CLASSES, (ignored_rows - d, w))

    valid = (0, h - ignored_rows, 0, w)
    gt_regions = {LEFT: (0, h - ignored_rows, 0, split), RIGHT: (0, h - ignored_rows, split, w)}
    pred_regions = {LEFT: (0, h, 0, split + SHIFT), RIGHT: (0, h, split + SHIFT, w)}
    for prediction in (pred, noisy):
        intersection, union = boundary_intersection_union(gt, prediction, NUM_CLASSES, IGNORE)
        for c in (LEFT, RIGHT):
            # the ignored rows bound the ground-truth masks: a band along them
            expected = rectangle_counts(gt_regions[c], pred_regions[c], h, w, d, valid=valid)
            assert (intersection[c], union[c]) == expected
        assert np.flatnonzero(union).tolist() == [LEFT, RIGHT]


def test_confusion_matrix_with_bands_sums_to_detectron2s_confusion_matrix():
    rng = np.random.default_rng(1)
    gt = rng.integers(0, NUM_CLASSES, (37, 53))
    gt[rng.random(gt.shape) < 0.1] = IGNORE
    pred = rng.integers(0, NUM_CLASSES, gt.shape)
    counts = confusion_matrix_with_bands(gt, pred, NUM_CLASSES, IGNORE)
    assert counts.shape == (NUM_CLASSES + 1, NUM_CLASSES + 1, 2, 2)
    as_detectron2 = np.where(gt == IGNORE, NUM_CLASSES, gt)
    confusion = np.bincount(
        (NUM_CLASSES + 1) * pred.ravel() + as_detectron2.ravel(), minlength=(NUM_CLASSES + 1) ** 2
    ).reshape(NUM_CLASSES + 1, NUM_CLASSES + 1)
    assert np.array_equal(counts.sum(axis=(2, 3)), confusion)


@pytest.mark.parametrize("border_is_contour", [False, True])
def test_random_maps_match_the_per_class_reference_erosion(border_is_contour):
    rng = np.random.default_rng(2)
    for _ in range(40):
        h, w = rng.integers(1, 120, size=2)
        num_classes = int(rng.integers(1, 7))
        blocks = rng.integers(0, num_classes, (max(1, h // 9), max(1, w // 9)), dtype=np.uint8)
        gt = cv2.resize(blocks, (int(w), int(h)), interpolation=cv2.INTER_NEAREST).astype(int)
        pred = np.roll(gt, int(rng.integers(-4, 5)), axis=int(rng.integers(0, 2)))
        flips = rng.random(gt.shape) < 0.03
        pred[flips] = rng.integers(0, num_classes, int(flips.sum()))
        gt[rng.random(gt.shape) < 0.02] = IGNORE
        counts = boundary_intersection_union(
            gt, pred, num_classes, IGNORE, image_border_is_contour=border_is_contour
        )
        expected = reference_counts(gt, pred, num_classes, border_is_contour)
        assert np.array_equal(counts[0], expected[0]) and np.array_equal(counts[1], expected[1])


def test_more_than_255_classes():
    gt = np.full((40, 60), 300)
    gt[:, 30:] = 299
    counts = boundary_intersection_union(gt, gt, 301, IGNORE, image_border_is_contour=False)
    assert counts[0][[299, 300]].tolist() == counts[1][[299, 300]].tolist() == [40, 40]


def test_labels_out_of_range_are_refused():
    gt = np.zeros((8, 8), dtype=np.int64)
    with pytest.raises(ValueError, match="outside"):
        boundary_intersection_union(gt, gt + NUM_CLASSES, NUM_CLASSES, IGNORE)
    with pytest.raises(ValueError, match="outside"):
        boundary_intersection_union(gt - 1, gt, NUM_CLASSES, IGNORE)


# ---- the evaluator ---------------------------------------------------------------------------


@pytest.fixture
def dataset(tmp_path):
    """A registered dataset of two ground truths: the 300x401 half planes, and the 200x200 ones;
    yields its name and the two (H, W) maps."""
    name = "pointrend_sem_test_boundary_iou"
    maps = [half_planes(300, 401, 200), half_planes(200, 200, 100)]
    records = []
    for i, labels in enumerate(maps):
        path = tmp_path / f"gt{i}.png"
        Image.fromarray(labels.astype(np.uint8)).save(path)
        records.append({"file_name": f"image{i}.jpg", "sem_seg_file_name": str(path)})
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(stuff_classes=CLASSES, ignore_label=IGNORE)
    yield name, maps
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def scores(labels: np.ndarray) -> torch.Tensor:
    """(C, H, W) float scores whose argmax is the (H, W) ``labels``."""
    one_hot = torch.nn.functional.one_hot(torch.from_numpy(labels), NUM_CLASSES)
    return one_hot.permute(2, 0, 1).float()


def evaluate(evaluator, predictions, key="sem_seg", indices=None):
    evaluator.reset()
    for i, pred in zip(indices or range(len(predictions)), predictions):
        evaluator.process([{"file_name": f"image{i}.jpg"}], [{key: scores(pred)}])
    return evaluator.evaluate()


def test_evaluator_reports_the_per_class_boundary_iou(dataset, tmp_path):
    name, maps = dataset
    predictions = [half_planes(300, 401, 200 + SHIFT), half_planes(200, 200, 100)]
    predictions[1][:20, :20] = 3  # a class in no ground truth
    evaluator = KeyedSemSegEvaluator(
        name, output_dir=str(tmp_path / "out"), image_border_is_contour=False
    )
    metrics = evaluate(evaluator, predictions)["sem_seg"]

    boundary_keys = sorted(k for k in metrics if "B-Iou" in k or k.startswith("BoundaryIoU"))
    assert boundary_keys == ["BoundaryIoU-c2", "BoundaryIoU-c3", "BoundaryIoU-c5"]
    # summed over the images: 300x401 (d = 10, shifted) + 200x200 (d = 6, the c3 square is
    # inside the c2 half: c2's band gains the square's ring, d + 1 px wide)
    first = half_plane_expectation(300, 401, 200, 10, border_is_contour=False)
    ring = area((0, 20 + 6, 0, 20 + 6)) - area((0, 20, 0, 20))
    left = (first[LEFT][0] + 200 * 6, first[LEFT][1] + 200 * 6 + ring)
    right = (first[RIGHT][0] + 200 * 6, first[RIGHT][1] + 200 * 6)
    assert metrics["BoundaryIoU-c2"] == pytest.approx(100 * left[0] / left[1])
    assert metrics["BoundaryIoU-c5"] == pytest.approx(100 * right[0] / right[1])
    assert metrics["BoundaryIoU-c3"] == 0.0  # predicted only: counts, as 0
    assert metrics["mBoundaryIoU"] == pytest.approx(
        np.mean([metrics[f"BoundaryIoU-c{c}"] for c in (2, 3, 5)])
    )
    assert {"mIoU", "fwIoU", "mACC", "pACC", "IoU-c2"} <= set(metrics)
    saved = torch.load(tmp_path / "out" / "sem_seg_evaluation.pth", weights_only=False)
    assert list(saved) == list(metrics)
    assert [saved[k] for k in boundary_keys] == [metrics[k] for k in boundary_keys]


def test_sums_of_intersections_and_unions_not_mean_of_ratios(dataset):
    name, maps = dataset
    predictions = [half_planes(300, 401, 200 + SHIFT), half_planes(200, 200, 100)]  # 25%, 100%
    evaluator = KeyedSemSegEvaluator(name, image_border_is_contour=False)
    metrics = evaluate(evaluator, predictions)["sem_seg"]
    # (4 + 6 columns) / (16 + 6 columns), of 300 and 200 rows
    expected = 100.0 * (4 * 300 + 6 * 200) / (16 * 300 + 6 * 200)
    assert expected == pytest.approx(40.0)
    assert metrics["BoundaryIoU-c2"] == pytest.approx(expected)
    assert metrics["BoundaryIoU-c5"] == pytest.approx(expected)
    assert metrics["mBoundaryIoU"] == pytest.approx(expected)  # not (25 + 100) / 2


def test_evaluator_default_is_the_reference_definition(dataset):
    """By default the image border bounds every class, as Cheng et al.'s implementation."""
    name, maps = dataset
    predictions = [half_planes(300, 401, 200 + SHIFT), half_planes(200, 200, 100 + SHIFT)]
    metrics = evaluate(KeyedSemSegEvaluator(name), predictions)["sem_seg"]
    first = half_plane_expectation(300, 401, 200, 10, border_is_contour=True)
    second = half_plane_expectation(200, 200, 100, 6, border_is_contour=True)
    for c in (LEFT, RIGHT):
        (i1, u1), (i2, u2) = first[c], second[c]
        assert metrics[f"BoundaryIoU-c{c}"] == pytest.approx(100.0 * (i1 + i2) / (u1 + u2))


def test_output_key_and_result_key(dataset):
    name, maps = dataset
    evaluator = KeyedSemSegEvaluator(name, output_key="coarse_sem_seg", result_key="coarse")
    results = evaluate(evaluator, maps, key="coarse_sem_seg")
    assert list(results) == ["coarse"]
    assert results["coarse"]["mIoU"] == results["coarse"]["mBoundaryIoU"] == 100.0


def test_boundary_counts_are_summed_over_ranks(dataset, monkeypatch):
    """Two ranks, one image each (comm.all_gather replayed): the boundary IoU of both images."""
    name, maps = dataset
    predictions = [half_planes(300, 401, 200 + SHIFT), half_planes(200, 200, 100)]
    both = evaluate(KeyedSemSegEvaluator(name), predictions)["sem_seg"]

    sent = []
    monkeypatch.setattr(sem_seg.comm, "all_gather", lambda data: sent.append(data) or [data])
    evaluate(KeyedSemSegEvaluator(name), predictions[1:], indices=[1])  # rank 1
    from_rank_1 = iter(sent)
    monkeypatch.setattr(sem_seg.comm, "all_gather", lambda data: [data, next(from_rank_1)])
    rank_0 = evaluate(KeyedSemSegEvaluator(name), predictions[:1])["sem_seg"]
    for key in ("BoundaryIoU-c2", "BoundaryIoU-c5", "mBoundaryIoU"):
        assert rank_0[key] == pytest.approx(both[key]), key


def test_the_module_is_exported():
    from pointrend_sem import evaluation

    assert evaluation.boundary_intersection_union is boundary_iou.boundary_intersection_union
